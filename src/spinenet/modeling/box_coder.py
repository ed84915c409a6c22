"""Box coding between ``[ymin, xmin, ymax, xmax]`` pixel boxes and ``[ty, tx, th, tw]`` regression codes.

The TF1 reference encodes training targets without the "+1" pixel convention but decodes predictions with
it (spec §4.3, §4.4); the two are intentionally not exact inverses. Model Garden drops the "+1" in both.
Everything is elementwise over ``(..., 4)`` tensors with broadcasting leading dims: no Python loops over
data, no in-place ops on inputs, no data-dependent shapes (ONNX/torch.export friendly).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

CONVENTIONS = ("tpu", "model_garden")
# faster_rcnn_box_coder.EPSILON: keeps division and log finite for zero-size boxes.
EPSILON = 1e-8
# box_utils.BBOX_XFORM_CLIP: caps exp(dh), exp(dw) at 1000/16, i.e. a box at most 62.5x its anchor.
BBOX_XFORM_CLIP = math.log(1000.0 / 16.0)


def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"convention {convention!r} is unknown; valid: {', '.join(CONVENTIONS)}")


def _centre_size(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    # box_list.get_center_coordinates_and_sizes: no +1.
    ymin, xmin, ymax, xmax = boxes.unbind(-1)
    h = ymax - ymin
    w = xmax - xmin
    return ymin + h / 2.0, xmin + w / 2.0, h, w


def encode_boxes(boxes: Tensor, anchors: Tensor) -> Tensor:
    """Regression targets ``(..., 4)`` ``[ty, tx, th, tw]`` of yxyx ``boxes`` w.r.t. yxyx ``anchors``.

    TF1 ``faster_rcnn_box_coder`` with ``scale_factors=None``: no +1; EPSILON is added to the heights and
    widths of both (after the centres are taken). Shapes broadcast.
    """
    yc, xc, h, w = _centre_size(boxes)
    yca, xca, ha, wa = _centre_size(anchors)
    ha = ha + EPSILON
    wa = wa + EPSILON
    h = h + EPSILON
    w = w + EPSILON
    return torch.stack([(yc - yca) / ha, (xc - xca) / wa, torch.log(h / ha), torch.log(w / wa)], dim=-1)


def decode_boxes(deltas: Tensor, anchors: Tensor, convention: str = "tpu") -> Tensor:
    """yxyx boxes ``(..., 4)`` from codes ``[ty, tx, th, tw]`` and yxyx ``anchors`` (shapes broadcast).

    ``"tpu"``: TF1 ``box_utils.decode_boxes`` with its +1 convention (``ha = ymax - ymin + 1``,
    ``ymax = ymin + h - 1``); zero deltas give the anchor back. ``"model_garden"``: Model Garden
    ``box_ops.decode_boxes``, no +1, the exact inverse of :func:`encode_boxes` up to EPSILON. Both clip
    ``th, tw`` above at ``log(1000/16)``.
    """
    _check_convention(convention)
    dy, dx, dh, dw = deltas.unbind(-1)
    dh = torch.clamp(dh, max=BBOX_XFORM_CLIP)
    dw = torch.clamp(dw, max=BBOX_XFORM_CLIP)
    ymin_a, xmin_a, ymax_a, xmax_a = anchors.unbind(-1)
    one = 1.0 if convention == "tpu" else 0.0
    ha = ymax_a - ymin_a + one
    wa = xmax_a - xmin_a + one
    yca = ymin_a + 0.5 * ha
    xca = xmin_a + 0.5 * wa
    yc = dy * ha + yca
    xc = dx * wa + xca
    h = torch.exp(dh) * ha
    w = torch.exp(dw) * wa
    ymin = yc - 0.5 * h
    xmin = xc - 0.5 * w
    # Both references write the far edge as ymin + h (- 1 in TF1), not yc + h/2: equal up to rounding.
    return torch.stack([ymin, xmin, ymin + h - one, xmin + w - one], dim=-1)


def clip_boxes(boxes: Tensor, image_hw: Tensor, convention: str = "tpu") -> Tensor:
    """Clip yxyx ``boxes`` (..., 4) to an image of ``image_hw`` (..., 2) = [height, width].

    ``image_hw`` must broadcast against ``boxes[..., :2]`` (e.g. ``(B, 1, 2)`` for boxes ``(B, N, 4)``).
    ``"tpu"`` clips to ``[0, size - 1]`` (TF1 ``box_utils.clip_boxes``); ``"model_garden"`` to ``[0, size]``.
    """
    _check_convention(convention)
    image_hw = image_hw.to(boxes.dtype)
    if convention == "tpu":
        image_hw = image_hw - 1.0
    bound = torch.cat([image_hw, image_hw], dim=-1)  # (..., 4) = [h, w, h, w]
    # Same order as both references: min with the far edge first, then max with 0.
    return torch.clamp(torch.minimum(boxes, bound), min=0.0)
