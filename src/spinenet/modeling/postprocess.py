"""Detections from raw RetinaNet head maps: sigmoid, decode, clip, per-class NMS, top-k (spec §6).

The selection is TF1's ``_generate_detections_v1`` (``nms_version="v1"``): per image and per class, the top
``pre_nms_num_boxes`` scores, greedy NMS that keeps scores strictly above ``score_threshold`` and suppresses
IoU strictly above ``nms_iou_threshold`` (IoU without +1), at most ``max_total_size`` per class; then the top
``max_total_size`` over all classes, sorted by score. It runs as one batched pass over all (image, class)
groups, with no Python loop over classes. The candidate counts are data-dependent, so this stage is not part
of an exported tensor-in/tensor-out graph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torchvision
from torch import Tensor

from spinenet.modeling.box_coder import CONVENTIONS, clip_boxes, decode_boxes

# "v1": TF1 default. "v2": Model Garden's class-aware NMS (ops/nms.py tiled NMS). "batched": TF1's
# tf.image.combined_non_max_suppression path (dynamic-batch exports).
NMS_VERSIONS = ("v1", "v2", "batched")


@dataclass(frozen=True)
class PostprocessParams:
    max_total_size: int = 100
    nms_iou_threshold: float = 0.5
    score_threshold: float = 0.05
    pre_nms_num_boxes: int = 5000
    nms_version: str = "v1"
    apply_sigmoid: bool = True
    convention: str = "tpu"

    def __post_init__(self):
        if self.nms_version not in NMS_VERSIONS:
            raise ValueError(f"nms_version {self.nms_version!r} is unknown; valid: {', '.join(NMS_VERSIONS)}")
        if self.convention not in CONVENTIONS:
            raise ValueError(f"convention {self.convention!r} is unknown; valid: {', '.join(CONVENTIONS)}")
        if self.max_total_size < 1 or self.pre_nms_num_boxes < 1:
            raise ValueError(f"max_total_size ({self.max_total_size}) and pre_nms_num_boxes "
                             f"({self.pre_nms_num_boxes}) must be >= 1")
        if not 0.0 <= self.nms_iou_threshold <= 1.0:
            raise ValueError(f"nms_iou_threshold must be in [0, 1], got {self.nms_iou_threshold}")


def flatten_outputs(cls_outputs: dict[int, Tensor], box_outputs: dict[int, Tensor],
                    num_classes: int) -> tuple[Tensor, Tensor]:
    """Concatenate per-level NCHW head maps in anchor order (level, y, x, anchor).

    ``cls_outputs[l]``: (B, A*K, H_l, W_l) with channel ``a*K + c``; ``box_outputs[l]``: (B, A*4, H_l, W_l)
    with channel ``a*4 + k``, k over ``[ty, tx, th, tw]``. Returns logits (B, N, K) and deltas (B, N, 4),
    N = sum_l H_l*W_l*A, matching :class:`~spinenet.modeling.anchors.Anchors` ``.boxes``.
    """
    if sorted(cls_outputs) != sorted(box_outputs):
        raise ValueError(f"cls_outputs levels {sorted(cls_outputs)} differ from box_outputs levels "
                         f"{sorted(box_outputs)}")
    logits, deltas = [], []
    for level in sorted(cls_outputs):
        cls, box = cls_outputs[level], box_outputs[level]
        b, ak, h, w = cls.shape
        a = box.shape[1] // 4
        if box.shape[1] != 4 * a or ak != a * num_classes or box.shape[0] != b or box.shape[2:] != (h, w):
            raise ValueError(f"level {level}: cls {tuple(cls.shape)} and box {tuple(box.shape)} are not "
                             f"(B, A*{num_classes}, H, W) and (B, A*4, H, W)")
        # (B, A*K, H, W) -> (B, H, W, A*K) -> (B, H*W*A, K): the channel a*K + c splits as (a, c).
        logits.append(cls.permute(0, 2, 3, 1).reshape(b, -1, num_classes))
        # (B, A*4, H, W) -> (B, H, W, A*4) -> (B, H*W*A, 4)
        deltas.append(box.permute(0, 2, 3, 1).reshape(b, -1, 4))
    return torch.cat(logits, dim=1), torch.cat(deltas, dim=1)


def generate_detections(cls_outputs: dict[int, Tensor], box_outputs: dict[int, Tensor], anchors: Tensor,
                        image_info: Tensor, params: PostprocessParams | None = None) -> dict[str, Tensor]:
    """Final detections from raw head maps (layouts as in :func:`flatten_outputs`).

    ``anchors``: (N, 4) yxyx; ``image_info``: (B, 4, 2) (spec §5.3), boxes are clipped to row 1. Returns
    ``num_detections`` int32 (B,), ``detection_boxes`` float32 (B, M, 4) yxyx in resized-input pixels,
    ``detection_classes`` int32 (B, M) = head channel 1..K-1 (COCO ids), ``detection_scores`` float32 (B, M),
    M = ``max_total_size``. Empty slots hold zero boxes and classes and score -1 ("v1") or 0 ("v2",
    "batched").
    """
    params = params or PostprocessParams()
    first = min(box_outputs)
    num_anchors = box_outputs[first].shape[1] // 4
    num_classes = cls_outputs[first].shape[1] // max(num_anchors, 1)
    logits, deltas = flatten_outputs(cls_outputs, box_outputs, num_classes)  # (B, N, K), (B, N, 4)
    if anchors.shape[0] != logits.shape[1]:
        raise ValueError(f"{anchors.shape[0]} anchors for {logits.shape[1]} head outputs: the anchors were "
                         "built for another image size or anchor configuration")
    # TF runs the whole post-processing in float32 whatever the model's dtype.
    logits, deltas = logits.float(), deltas.float()
    scores = torch.sigmoid(logits) if params.apply_sigmoid else logits
    scores = scores[..., 1:]  # (B, N, K-1): channel 0 is the background slot, never a detection
    boxes = decode_boxes(deltas, anchors.to(deltas), params.convention)  # (B, N, 4)
    boxes = clip_boxes(boxes, image_info[:, None, 1, :], params.convention)  # image_info row 1: (B, 1, 2)
    return multiclass_nms(boxes, scores, params)


def multiclass_nms(boxes: Tensor, scores: Tensor, params: PostprocessParams) -> dict[str, Tensor]:
    """Per-class NMS and top-k for decoded, clipped yxyx ``boxes`` (B, N, 4) shared by all classes and
    ``scores`` (B, N, C) of classes 1..C (background already dropped). Output as :func:`generate_detections`.
    """
    batch, _, num_classes = scores.shape
    max_size = params.max_total_size
    pad_score = -1.0 if params.nms_version == "v1" else 0.0

    # Candidates. Thresholding before the per-class top-k equals TF's top-k first, since every score above
    # the threshold outranks every score at or below it. The comparison is in float32, as TF's.
    threshold = torch.tensor(params.score_threshold, dtype=scores.dtype, device=scores.device)
    img, anchor, cls = torch.nonzero(scores > threshold, as_tuple=True)  # (M,) each, (img, anchor, cls) order
    cand = {"img": img, "cls": cls, "score": scores[img, anchor, cls], "box": boxes[img, anchor],
            "group": img * num_classes + cls}  # one NMS group per (image, class)

    # Order by (group, score desc, anchor asc): TF's top_k and NMS both break score ties toward the lower
    # anchor index. Two stable sorts, the last one on the primary key.
    cand = _take(cand, _sort_by_key_then_score(cand["group"], cand["score"]))
    keep = torch.ones_like(cand["group"], dtype=torch.bool)
    if params.nms_version != "batched":  # combined_non_max_suppression has no pre-NMS top-k
        keep &= _rank_in_groups(cand["group"], batch * num_classes) < params.pre_nms_num_boxes
    if params.nms_version == "v2":
        # Model Garden's tiled NMS marks a box as selected by ``reduce_any(box > 0)``, so all-zero boxes
        # (clipped away to the corner) are never detections there.
        keep &= (cand["box"] > 0).any(dim=-1)
    cand = _take(cand, keep)

    # Model Garden suppresses at IoU >= threshold (ops/nms.py), TF's NMS kernel at IoU > threshold.
    # TODO(v2): its tile self-suppression also compares IoUs with a hard-coded 0.5; only exact-0.5 ties could
    # differ from greedy NMS, not replicated. Its IoU adds 1e-8 to the union, also not replicated.
    iou_threshold = params.nms_iou_threshold
    if params.nms_version == "v2":
        iou_threshold = math.nextafter(iou_threshold, -math.inf)
    cand = _take(cand, _grouped_nms(cand["box"], cand["group"], iou_threshold))
    cand = _take(cand, _rank_in_groups(cand["group"], batch * num_classes) < max_size)  # per-class cap

    # Top max_total_size per image by score. Ties keep the (class, NMS) order, as TF's top_k over the
    # class-major concatenation keeps the lower index.
    cand = _take(cand, _sort_by_key_then_score(cand["img"], cand["score"]))
    slot = _rank_in_groups(cand["img"], batch)
    keep = slot < max_size
    cand, slot = _take(cand, keep), slot[keep]

    out_boxes = boxes.new_zeros(batch, max_size, 4)
    out_scores = scores.new_full((batch, max_size), pad_score)
    out_classes = torch.zeros(batch, max_size, dtype=torch.int32, device=scores.device)
    out_boxes[cand["img"], slot] = cand["box"]
    out_scores[cand["img"], slot] = cand["score"]
    out_classes[cand["img"], slot] = (cand["cls"] + 1).to(torch.int32)  # head channel = COCO id
    return {
        "num_detections": (out_scores > pad_score).sum(dim=1, dtype=torch.int32),
        "detection_boxes": out_boxes,
        "detection_classes": out_classes,
        "detection_scores": out_scores,
    }


def _take(cand: dict[str, Tensor], index: Tensor) -> dict[str, Tensor]:
    return {name: value[index] for name, value in cand.items()}


def _sort_by_key_then_score(key: Tensor, score: Tensor) -> Tensor:
    """Permutation sorting by ``key`` ascending, then ``score`` descending, then original position."""
    order = torch.sort(score, descending=True, stable=True).indices
    return order[torch.sort(key[order], stable=True).indices]


def _rank_in_groups(groups: Tensor, num_groups: int) -> Tensor:
    """Position of each element within its run, for ``groups`` (M,) sorted ascending."""
    counts = torch.bincount(groups, minlength=num_groups)
    starts = torch.cumsum(counts, dim=0) - counts
    return torch.arange(groups.shape[0], device=groups.device) - starts[groups]


def _grouped_nms(boxes: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS within each group for yxyx ``boxes`` (M, 4) already in priority order.

    Returns the kept indices, ascending (so priority order is preserved).
    """
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    # Separate the groups by offsetting each one's boxes, as torchvision's batched_nms does, but in float64:
    # in float32 the offsets (up to ~1e6 px for 8 images x 90 classes) would round coordinates by ~0.06 px
    # and move IoUs near the threshold. MPS has no float64, so such tensors go through the CPU.
    device = boxes.device if boxes.device.type != "mps" else torch.device("cpu")
    xyxy = boxes[:, [1, 0, 3, 2]].to(device, torch.float64)
    span = xyxy.max() - xyxy.min() + 1.0
    xyxy = xyxy + (groups.to(device, torch.float64) * span)[:, None]
    # Candidates arrive in priority order; a strictly decreasing score keeps that order for equal real scores.
    priority = -torch.arange(boxes.shape[0], device=device, dtype=torch.float64)
    keep = torchvision.ops.nms(xyxy, priority, iou_threshold)
    return torch.sort(keep).values.to(boxes.device)
