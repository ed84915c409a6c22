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
from torch import Tensor

from spinenet.modeling.box_coder import CONVENTIONS, clip_boxes, decode_boxes

# "v1": TF1 default. "v2": Model Garden's class-aware NMS (ops/nms.py tiled NMS). "batched": TF1's
# tf.image.combined_non_max_suppression path (dynamic-batch exports), accepted because the config allows it.
# TODO(batched): taken as v1 without the pre-NMS top-k and with 0-padded scores; not checked against TF's
# combined NMS kernel (its tie order, and TF1 rescaling boxes by their maximum before calling it).
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
    levels = _check_maps(cls_outputs, box_outputs, num_classes)
    logits = torch.cat([_flatten_level(cls_outputs[level], num_classes) for level in levels], dim=1)
    deltas = torch.cat([_flatten_level(box_outputs[level], 4) for level in levels], dim=1)
    return logits, deltas  # (B, N, K), (B, N, 4)


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
    levels = _check_maps(cls_outputs, box_outputs, num_classes)
    deltas = torch.cat([_flatten_level(box_outputs[level], 4) for level in levels], dim=1)
    if anchors.shape[0] != deltas.shape[1]:
        raise ValueError(f"{anchors.shape[0]} anchors for {deltas.shape[1]} head outputs: the anchors were "
                         "built for another image size or anchor configuration")
    # TF runs the whole post-processing in float32 whatever the model's dtype.
    deltas = deltas.float()  # (B, N, 4)
    boxes = decode_boxes(deltas, anchors.to(deltas), params.convention)  # (B, N, 4)
    boxes = clip_boxes(boxes, image_info[:, None, 1, :], params.convention)  # image_info row 1: (B, 1, 2)
    candidates = _candidates_from_maps(cls_outputs, num_anchors, num_classes, params)
    return _select(boxes, candidates, num_classes - 1, params)


def multiclass_nms(boxes: Tensor, scores: Tensor, params: PostprocessParams) -> dict[str, Tensor]:
    """Per-class NMS and top-k for decoded, clipped yxyx ``boxes`` (B, N, 4) shared by all classes and
    ``scores`` (B, N, C) of classes 1..C, background already dropped (``params.apply_sigmoid`` is not used
    here). Output as :func:`generate_detections`, classes 1..C.
    """
    boxes, scores = boxes.float(), scores.float()  # TF's NMS runs in float32
    threshold = torch.tensor(params.score_threshold, dtype=scores.dtype, device=scores.device)
    img, anchor, cls = torch.nonzero(scores > threshold, as_tuple=True)  # (M,) each, (img, anchor, cls) order
    candidates = {"img": img, "anchor": anchor, "cls": cls, "score": scores[img, anchor, cls]}
    return _select(boxes, candidates, scores.shape[2], params)


def _check_maps(cls_outputs: dict[int, Tensor], box_outputs: dict[int, Tensor], num_classes: int) -> list[int]:
    """The sorted levels, after checking that the maps are (B, A*K, H, W) and (B, A*4, H, W) pairs."""
    if not cls_outputs or sorted(cls_outputs) != sorted(box_outputs):
        raise ValueError(f"cls_outputs levels {sorted(cls_outputs)} and box_outputs levels "
                         f"{sorted(box_outputs)} must be the same non-empty set")
    for level in sorted(cls_outputs):
        cls, box = cls_outputs[level], box_outputs[level]
        a = box.shape[1] // 4
        if (cls.dim() != 4 or box.dim() != 4 or box.shape[1] != 4 * a or cls.shape[1] != a * num_classes
                or box.shape[0] != cls.shape[0] or box.shape[2:] != cls.shape[2:]):
            raise ValueError(f"level {level}: cls {tuple(cls.shape)} and box {tuple(box.shape)} are not "
                             f"(B, A*{num_classes}, H, W) and (B, A*4, H, W)")
    return sorted(cls_outputs)


def _flatten_level(x: Tensor, per_anchor: int) -> Tensor:
    # (B, A*P, H, W) -> (B, H, W, A*P) -> (B, H*W*A, P): the channel a*P + p splits as (a, p).
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, per_anchor)


def _candidates_from_maps(cls_outputs: dict[int, Tensor], num_anchors: int, num_classes: int,
                          params: PostprocessParams) -> dict[str, Tensor]:
    """Scores above the threshold, read straight from the NCHW class maps (no (B, N, K) copy).

    A cheap pre-filter in logit space (sigmoid is monotonic; the margin dwarfs float32 rounding) selects
    candidates; the exact test is then TF's: float32 ``sigmoid(logit) > score_threshold``.
    """
    t = params.score_threshold
    if not params.apply_sigmoid:
        bound = t
    elif 0.0 < t < 1.0:
        bound = math.log(t / (1.0 - t)) - 1e-3
    else:
        bound = -math.inf if t <= 0.0 else math.inf
    threshold = torch.tensor(t, dtype=torch.float32)
    parts = {"img": [], "anchor": [], "cls": [], "score": []}
    offset = 0
    for level in sorted(cls_outputs):
        logits = cls_outputs[level]
        b, _, h, w = logits.shape
        logits = logits.view(b, num_anchors, num_classes, h, w)  # channel a*K + c -> (a, c)
        # (B, H, W, A, K-1) view, background channel 0 dropped: nonzero then lists candidates in anchor order.
        mask = (logits > bound).permute(0, 3, 4, 1, 2)[..., 1:]
        img, y, x, a, c = torch.nonzero(mask, as_tuple=True)  # (M_l,) each
        value = logits[img, a, c + 1, y, x].float()
        score = torch.sigmoid(value) if params.apply_sigmoid else value
        keep = score > threshold.to(score.device)
        parts["img"].append(img[keep])
        parts["anchor"].append((offset + (y * w + x) * num_anchors + a)[keep])
        parts["cls"].append(c[keep])
        parts["score"].append(score[keep])
        offset += h * w * num_anchors
    return {name: torch.cat(values) for name, values in parts.items()}


def _select(boxes: Tensor, cand: dict[str, Tensor], num_classes: int,
            params: PostprocessParams) -> dict[str, Tensor]:
    """Top-k, NMS and final top-k for candidates ``img, anchor, cls, score`` (M,) listed in anchor order
    within each (image, class); ``boxes`` (B, N, 4) yxyx; ``cls`` in 0..num_classes-1 (background dropped).
    """
    batch = boxes.shape[0]
    max_size = params.max_total_size
    pad_score = -1.0 if params.nms_version == "v1" else 0.0
    # Thresholding before the per-class top-k (as the callers do) equals TF's top-k first, since every
    # score above the threshold outranks every score at or below it.
    cand = {"img": cand["img"], "cls": cand["cls"], "score": cand["score"],
            "box": boxes[cand["img"], cand["anchor"]],  # (M, 4)
            "group": cand["img"] * num_classes + cand["cls"]}  # one NMS group per (image, class)

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

    # Greedy NMS per group, at most max_total_size kept per class.
    # TODO(v2): Model Garden's tile self-suppression also compares IoUs with a hard-coded 0.5; only exact
    # ties at IoU 0.5 inside one 512-box tile could differ from greedy NMS there. Not replicated.
    kept = _grouped_greedy_nms(cand["box"], cand["group"], params.nms_iou_threshold, max_size,
                               model_garden=params.nms_version == "v2")
    cand = _take(cand, kept)

    # Top max_total_size per image by score. Ties keep the (class, NMS) order, as TF's top_k over the
    # class-major concatenation keeps the lower index.
    cand = _take(cand, _sort_by_key_then_score(cand["img"], cand["score"]))
    slot = _rank_in_groups(cand["img"], batch)
    keep = slot < max_size
    cand, slot = _take(cand, keep), slot[keep]

    out_boxes = boxes.new_zeros(batch, max_size, 4)
    out_scores = boxes.new_full((batch, max_size), pad_score)
    out_classes = torch.zeros(batch, max_size, dtype=torch.int32, device=boxes.device)
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


def _pairwise_iou(a: Tensor, b: Tensor, union_eps: float = 0.0, *, degenerate_check: bool = True) -> Tensor:
    """Elementwise IoU of yxyx boxes ``a`` and ``b`` (..., 4), no +1.

    The float32 arithmetic of TF's NMS kernel (non_max_suppression_op.cc ``IOU``): 0 when either area is
    not positive. Model Garden's ``bbox_overlap`` adds ``union_eps = 1e-8`` to the union instead.

    ``degenerate_check=False`` skips that final "0 unless both areas are positive" select, for callers that only
    compare the IoU with a threshold (``> t``, or ``>= t`` with the epsilon) on decoded boxes (ymax >= ymin,
    xmax >= xmin): a box without positive area then has zero height or width, so its intersection with
    anything is 0 and its IoU 0 (or 0/0 = NaN without the epsilon), which passes ``> t`` for no t and ``>= t``
    exactly when 0 does. Over a (k, k) matrix the select costs as much as the rest.
    """
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    inter_h = torch.clamp(torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0]), min=0.0)
    inter_w = torch.clamp(torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1]), min=0.0)
    inter = inter_h * inter_w
    iou = inter / (area_a + area_b - inter + union_eps)
    if not degenerate_check:
        return iou
    return torch.where((area_a > 0) & (area_b > 0), iou, torch.zeros_like(iou))


def _grouped_greedy_nms(boxes: Tensor, groups: Tensor, iou_threshold: float, max_per_group: int,
                        model_garden: bool = False) -> Tensor:
    """Greedy NMS inside each group for yxyx ``boxes`` (M, 4), ``groups`` (M,) sorted ascending and each
    group in priority order. Returns the kept indices (ascending), at most ``max_per_group`` per group.

    Round r keeps the r-th box of every group at once and drops the rest of that group whose IoU with it is
    above the threshold (``>=`` for Model Garden's tiled NMS). Each round is O(live candidates) and there
    are at most ``max_per_group`` rounds, like TF's kernel, which only compares candidates with selected
    boxes. (torchvision's nms compares every kept box with every later one, groups or not: far slower at
    90 classes x 5000 candidates.)
    """
    live = torch.arange(boxes.shape[0], device=boxes.device)  # ascending: groups stay contiguous, in order
    live_groups, live_boxes = groups, boxes
    union_eps = 1e-8 if model_garden else 0.0
    kept = []
    for _ in range(max_per_group):
        if live.numel() == 0:
            break
        is_head = torch.ones_like(live, dtype=torch.bool)
        is_head[1:] = live_groups[1:] != live_groups[:-1]  # first live box of each group = its best remaining
        kept.append(live[is_head])
        head_of = torch.nonzero(is_head).squeeze(1)[torch.cumsum(is_head, dim=0) - 1]  # (L,) position of head
        iou = _pairwise_iou(live_boxes, live_boxes[head_of], union_eps)
        survive = ~is_head & ~(iou >= iou_threshold if model_garden else iou > iou_threshold)
        live, live_groups, live_boxes = live[survive], live_groups[survive], live_boxes[survive]
    if not kept:
        return live
    return torch.sort(torch.cat(kept)).values
