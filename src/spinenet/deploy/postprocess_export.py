"""Export-friendly detection generator: the detections of
:func:`~spinenet.modeling.postprocess.generate_detections` with static shapes, no ``NonZero`` and no
data-dependent shapes (ONNX opset 11-13, ATC in CANN 5.x/6.x).

Formulation. The reference runs greedy NMS per class, then keeps the top ``max_total_size`` of the union by
score. Greedy NMS per class, listed by score, equals one greedy pass over *all* candidates in descending
global score order in which a candidate is suppressed only by earlier **kept** candidates **of its own
class**: each class's pass sees the same boxes in the same order and the other classes never interact. The
reference's top ``max_total_size`` is then the first ``max_total_size`` kept in that order. So:

1. the top ``pre_nms_topk`` of the scores in the reference's class-major order (ties: lower class, then lower
   anchor first), found level by level on the NCHW maps without a class-major copy (:func:`_top_candidates`);
2. gather and decode only those boxes, clip them to image_info row 1;
3. a (k, k) "would suppress" matrix: same class, earlier in the order, IoU over the threshold;
4. the greedy keep vector, exactly, by a fixed-point iteration that ends when every candidate is decided
   (:func:`_greedy_keep`; at most k rounds, a handful in practice);
5. TopK on a position key picks the first ``max_total_size`` kept; empty slots are padded.

The only approximation is the window: the output equals the reference's whenever at least
``max_total_size`` candidates are kept inside the top ``pre_nms_topk`` (or no candidate outside it scores
above the threshold). The per-class caps of the reference (``pre_nms_num_boxes`` per class, ``max_total_size``
kept per class) never bind inside the window: a candidate's rank in its class is at most its global rank, and
a class's 101st kept box comes after 100 kept boxes overall.
"""

from __future__ import annotations

import functools
import warnings

import torch
from torch import Tensor

from spinenet.deploy.nms_unrolled import greedy_keep_unrolled
from spinenet.modeling.box_coder import clip_boxes, decode_boxes
from spinenet.modeling.postprocess import PostprocessParams, _check_maps, _pairwise_iou

DEFAULT_PRE_NMS_TOPK = 2000


def window_size(num_scores: int, params: PostprocessParams, pre_nms_topk: int) -> int:
    """The candidate window k actually used: ``pre_nms_topk`` capped by the number of (anchor, class) scores and,
    for v1/v2, by the reference's per-class ``pre_nms_num_boxes`` (a wider window could admit a box that the
    reference's per-class top-k drops)."""
    if pre_nms_topk < params.max_total_size:
        raise ValueError(f"pre_nms_topk ({pre_nms_topk}) must be at least max_total_size ({params.max_total_size})")
    k = min(pre_nms_topk, num_scores)
    if params.nms_version != "batched":  # 'batched' (combined NMS) has no per-class pre-NMS top-k
        k = min(k, params.pre_nms_num_boxes)
    return k


def generate_detections_export(cls_outputs: dict[int, Tensor], box_outputs: dict[int, Tensor], anchors: Tensor,
                               image_info: Tensor, params: PostprocessParams | None = None,
                               pre_nms_topk: int = DEFAULT_PRE_NMS_TOPK, *,
                               background_channel: bool = True, nms_rounds: int | None = None,
                               float_sort_keys: bool = False, with_exact: bool = False) -> dict[str, Tensor]:
    """Static-shape twin of :func:`~spinenet.modeling.postprocess.generate_detections` (same arguments and outputs).

    ``cls_outputs[l]``: (B, A*K, H_l, W_l), ``box_outputs[l]``: (B, A*4, H_l, W_l); ``anchors``: (N, 4) yxyx;
    ``image_info``: (B, 4, 2), boxes are clipped to row 1. ``background_channel=False`` for class maps whose
    background channels were dropped (A*(K-1) channels, ``a*(K-1) + c - 1`` for class c; see
    :func:`~spinenet.deploy.optimize.optimize_for_inference`). Returns ``num_detections`` int32 (B,),
    ``detection_boxes`` float32 (B, M, 4), ``detection_classes`` int32 (B, M) (1..K-1),
    ``detection_scores`` float32 (B, M), M = ``params.max_total_size``; empty slots hold zero boxes and
    classes and score -1 ("v1") or 0 ("v2", "batched").

    ``nms_rounds``: None runs greedy NMS to its end (an ONNX ``Loop`` when exported); a number runs that many
    rounds unrolled, without ``Loop`` (:mod:`spinenet.deploy.nms_unrolled`: exact when enough, else a prefix of
    the exact detections). ``float_sort_keys``: sort the candidates' class-major indices as float32 (exact below
    2^24) rather than int64, for runtimes whose TopK takes floats only (ATC in CANN 5.0.4: float16/float32).
    ``with_exact`` (with ``nms_rounds``): also return ``nms_exact`` (B,) bool, True where the rounds were enough for
    the outputs to be the exact greedy NMS's (no candidate undecided, or ``max_total_size`` kept before the first
    undecided one): the one check of a sync-free graph, read by the caller after it ran.
    """
    params = params or PostprocessParams()
    first = min(box_outputs)
    num_anchors = box_outputs[first].shape[1] // 4
    first_cls = cls_outputs[first]  # NCHW, or tile-major with the channels last
    channels = first_cls.shape[-1 if first_cls.dim() == 5 else -3] // num_anchors  # classes per anchor in the maps
    levels = _check_maps({lvl: _as_nchw_shape(c, background_channel) for lvl, c in cls_outputs.items()},
                         box_outputs, channels)
    num_classes = channels - 1 if background_channel else channels  # foreground classes
    batch = cls_outputs[first].shape[0]
    sizes = [int(box_outputs[lvl].shape[2] * box_outputs[lvl].shape[3]) for lvl in levels]
    num_boxes = num_anchors * sum(sizes)
    if anchors.shape[0] != num_boxes:
        raise ValueError(f"{anchors.shape[0]} anchors for {num_boxes} head outputs: the anchors were built for "
                         "another image size or anchor configuration")
    k = window_size(num_classes * num_boxes, params, pre_nms_topk)
    top_scores, top_class, top_anchor = _top_candidates(
        [cls_outputs[lvl] for lvl in levels], [tuple(box_outputs[lvl].shape[2:]) for lvl in levels], num_anchors,
        num_classes, background_channel, params, k, float_sort_keys)

    # Decode only the k candidates: decoding is elementwise, so this is bit-identical to decoding all N.
    deltas = torch.cat([_anchor_major(box_outputs[lvl], 4) for lvl in levels], dim=1).float()  # (B, N, 4)
    deltas = _gather_rows(deltas, top_anchor)  # (B, k, 4)
    boxes = decode_boxes(deltas, anchors.to(deltas)[top_anchor], params.convention)  # (B, k, 4)
    boxes = clip_boxes(boxes, image_info[:, None, 1, :], params.convention)  # image_info row 1: (B, 1, 2)

    # Strictly above, as TF's NMS; a Python float against a float32 tensor compares in float32 (as the reference).
    valid = top_scores > params.score_threshold  # (B, k)
    if params.nms_version == "v2":
        # Model Garden's tiled NMS never selects all-zero boxes (boxes clipped away to the corner).
        valid = valid & (boxes > 0).any(dim=-1)
    suppress = _suppression_matrix(boxes, top_class, params)  # (B, k, k)
    if nms_rounds is None:
        kept = _greedy_keep(valid.unsqueeze(1), suppress).reshape(valid.shape)  # (B, k) bool
    else:
        kept, undecided = greedy_keep_unrolled(valid.unsqueeze(1), suppress, nms_rounds, with_undecided=True)
        kept = kept.reshape(valid.shape)

    # The first max_total_size kept candidates, in order: TopK on a key that falls with the position.
    slots = min(params.max_total_size, k)
    # k..1: exact in float32 for k < 2^24
    position_key = torch.arange(k, 0, -1, dtype=torch.float32, device=kept.device)
    slot_key, slot = torch.topk(torch.where(kept, position_key, torch.zeros_like(position_key)), slots, dim=1)
    filled = slot_key > 0  # (B, slots)
    pad_score = -1.0 if params.nms_version == "v1" else 0.0
    out_scores = torch.where(filled, torch.gather(top_scores, 1, slot), torch.full_like(slot_key, pad_score))
    out_boxes = _gather_rows(boxes, slot)  # (B, slots, 4)
    out_boxes = torch.where(filled.unsqueeze(-1), out_boxes, torch.zeros_like(out_boxes))
    out_classes = torch.where(filled, torch.gather(top_class, 1, slot) + 1, torch.zeros_like(slot))  # COCO ids
    if slots < params.max_total_size:  # fewer scores than output slots (tiny models): pad with empty slots
        extra = params.max_total_size - slots
        out_scores = torch.cat([out_scores, out_scores.new_full((batch, extra), pad_score)], dim=1)
        out_boxes = torch.cat([out_boxes, out_boxes.new_zeros(batch, extra, 4)], dim=1)
        out_classes = torch.cat([out_classes, out_classes.new_zeros(batch, extra)], dim=1)
    out = {
        "num_detections": (out_scores > pad_score).to(torch.int32).sum(dim=1, dtype=torch.int32),
        "detection_boxes": out_boxes,
        "detection_classes": out_classes.to(torch.int32),
        "detection_scores": out_scores,
    }
    if with_exact:
        if nms_rounds is None:
            raise ValueError("with_exact needs nms_rounds: the Loop form is always exact")
        # The kept list is greedy's cut at the first undecided candidate: exact once it fills every slot.
        out["nms_exact"] = ~undecided.reshape(batch) | (kept.sum(dim=1) >= slots)
    return out


def _as_nchw_shape(cls: Tensor, background_channel: bool) -> Tensor:
    """A tile-major class map (B, 16, H/4, W/4, C) as an (uncopied, unordered) (B, C, H, W) view, for the shape
    checks only; NCHW maps as they are."""
    if cls.dim() != 5:
        return cls
    if background_channel:
        raise ValueError("tile-major class maps come from an optimised head, whose background channels are dropped")
    b, _, th, tw, c = cls.shape
    return cls.reshape(b, c, th * 4, tw * 4)


def _top_candidates(logits: list[Tensor], shapes: list[tuple[int, int]], num_anchors: int, num_classes: int,
                    background_channel: bool, params: PostprocessParams, k: int,
                    float_sort_keys: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """The reference's top ``k`` (anchor, class) candidates: (scores, classes 0..K-2, anchor indices), each (B, k).

    The reference ranks sigmoid scores in class-major order (flat index ``c*N + n``, anchors ``n`` in (level, y,
    x, anchor) order) and breaks ties by that index. Read straight off the maps (NCHW, or tile-major from a
    Winograd predictor, see :func:`_as_nchw_shape`) instead of building that
    (B, K-1, N) copy: a top-k per level on the *logits* (the sigmoid is monotone, so each level's share of the
    global top k is among them), the sigmoid of those few only, then one top-k over the union ordered by
    (score descending, reference index ascending). The union is first put in reference-index order, so TopK's
    lower-position-first rule for equal scores is the reference's. (Two logits whose sigmoids round to the same
    float rank as the reference too, unless they straddle a level's k-th place, the window's known limit.)
    """
    batch = logits[0].shape[0]
    total = num_anchors * sum(h * w for h, w in shapes)
    values, keys = [], []
    offset = 0
    for x, (h, w) in zip(logits, shapes, strict=True):
        hw = h * w
        per_level = num_anchors * num_classes * hw
        if x.dim() == 5:  # tile-major (B, 16, H/4, W/4, A*C): flat = ((i*4 + j)*T + t)*A*C + a*C + c
            v, flat = _topk_in_halves(x.reshape(batch, per_level), min(k, per_level))
            tiles, tw, channels = hw // 16, w // 4, num_anchors * num_classes
            position = flat // channels  # (i*4 + j)*T + t
            channel = flat - position * channels
            anchor = channel // num_classes
            cls = channel - anchor * num_classes
            tile_pixel = position // tiles
            t = position - tile_pixel * tiles
            ti, tj = tile_pixel // 4, tile_pixel - (tile_pixel // 4) * 4
            row, col = t // tw, t - (t // tw) * tw
            pixel = (row * 4 + ti) * w + col * 4 + tj
        else:  # NCHW (B, A*K, H, W): flat = (a*C + c)*HW + p
            x = x.reshape(batch, num_anchors, num_classes + int(background_channel), hw)
            if background_channel:
                x = x[:, :, 1:]
            v, flat = _topk_in_halves(x.reshape(batch, per_level), min(k, per_level))
            anchor = flat // (num_classes * hw)
            cls = flat // hw - anchor * num_classes
            pixel = flat - (anchor * num_classes + cls) * hw
        keys.append(cls * total + offset + pixel * num_anchors + anchor)  # the reference's flat index c*N + n
        values.append(v)
        offset += hw * num_anchors
    values, keys = torch.cat(values, dim=1).float(), torch.cat(keys, dim=1)  # TF post-processes in float32
    if params.apply_sigmoid:
        values = torch.sigmoid(values)
    if float_sort_keys:  # keys are integers below num_classes * total: exact in float32 below 2^24
        if num_classes * total >= 2**24:
            raise ValueError(f"{num_classes} classes x {total} anchors is too many to sort as float32 keys "
                             "(2^24); export a smaller input size for this target")
        order = torch.topk(keys.to(torch.float32), keys.shape[1], dim=1, largest=False).indices
    else:
        order = torch.topk(keys, keys.shape[1], dim=1, largest=False).indices  # distinct keys: a plain sort
    values, keys = torch.gather(values, 1, order), torch.gather(keys, 1, order)
    top_scores, position = _topk_lowest_index_first(values, k)
    top_key = torch.gather(keys, 1, position)
    top_class = top_key // total
    return top_scores, top_class, top_key - top_class * total


def _anchor_major(x: Tensor, per_anchor: int) -> Tensor:
    """(B, A*P, H, W) -> (B, H*W*A, P), the anchor order of :class:`~spinenet.modeling.anchors.Anchors`."""
    b, _, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(b, -1, per_anchor)


def _gather_rows(x: Tensor, index: Tensor) -> Tensor:
    """``x[b, index[b, i], :]`` for boxes: (B, N, 4) and (B, k) -> (B, k, 4).

    The index is widened to (B, k, 4) by adding a constant (1, 1, 4) zero tensor, not with ``expand`` or
    ``repeat``: traced, those become an Expand whose target shape is computed in the graph
    (Shape/Where/ConstantOfShape), which ONNX shape inference can't resolve, so every tensor downstream would
    lose its static shape.
    """
    index = index.unsqueeze(-1) + index.new_zeros(1, 1, 4)  # (B, k, 4) by broadcasting
    return torch.gather(x, 1, index)


# Below this many scores one TopK is as fast as two halves (ONNX Runtime, 2 threads: 5.4 -> 3.5 ms for the
# 5.2 M scores of level 3 at 640x640; more pieces are slower again, each sorting its own k winners).
_SPLIT_TOPK_FROM = 1 << 20


def _topk_in_halves(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """:func:`_topk_lowest_index_first` of ``scores`` (B, M) as the top k of each half (two rows of one TopK,
    which ONNX Runtime runs on two threads where a single row runs on one), then the top k of the 2k winners.
    Exact, ties included: the halves' winners hold the overall winners, first half first, each half's in
    value order with equal values by index, so among equal values the lower position is the lower index."""
    b, m = scores.shape
    if m < _SPLIT_TOPK_FROM or m % 2 or k > m // 2:
        return _topk_lowest_index_first(scores, k)
    half = m // 2
    values, index = _topk_lowest_index_first(scores.reshape(b * 2, half), k)
    index = index.reshape(b, 2, k) + torch.tensor([0, half], device=index.device).reshape(1, 2, 1)
    values, position = _topk_lowest_index_first(values.reshape(b, 2 * k), k)
    return values, torch.gather(index.reshape(b, 2 * k), 1, position)


def _topk_lowest_index_first(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top ``k`` of ``scores`` (B, M) along dim 1, sorted descending, equal values in ascending index order.

    ONNX TopK guarantees that tie rule (opset 11+: "the element with the lower index will appear first"), so
    the exported graph is one TopK. ``torch.topk`` promises no order among ties, so eager (and compiled) mode runs
    it on keys that have no ties: the score's float32 bits as an order-preserving int32 in the high half of an
    int64, ``2^32 - 1 - index`` in the low half (:func:`_tie_free_keys`). Static shapes, no ``nonzero``, no host
    read, so ``torch.compile(fullgraph=True)`` and CUDA graphs capture it. Scores that float32 can't hold exactly
    (float64) take a stable descending sort instead, the same rule at a higher cost.
    """
    if torch.onnx.is_in_onnx_export():
        return torch.topk(scores, k, dim=1)
    if scores.dtype in (torch.float32, torch.float16, torch.bfloat16):
        index = torch.topk(_tie_free_keys(scores), k, dim=1).indices
    else:
        index = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    return torch.gather(scores, 1, index), index


def _tie_free_keys(scores: Tensor) -> Tensor:
    """int64 keys (B, M) that order as (score descending, index ascending) and are all distinct.

    A float32's bits read as int32 order like the float for non-negative values and backwards for negative ones;
    flipping the 31 low bits of the negative ones makes the whole map monotone (IEEE total order). -0.0 is made
    +0.0 first (they compare equal, so they must tie), NaN ranks above +inf as in ``torch.topk``. float16/bf16
    widen to float32 exactly. M must be below 2^32.
    """
    x = scores.to(torch.float32)
    x = torch.where(x == 0, torch.zeros_like(x), x)  # -0.0 == 0.0: one key for both
    bits = x.view(torch.int32)
    ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(torch.int64)
    index = torch.arange(scores.shape[1], dtype=torch.int64, device=scores.device)
    return ordered * (1 << 32) + ((1 << 32) - 1 - index)


def _suppression_matrix(boxes: Tensor, classes: Tensor, params: PostprocessParams) -> Tensor:
    """(B, k, k) float 0/1: entry [j, i] = 1 when candidate j, earlier in the order, suppresses i if kept.

    Same class, j < i, and IoU over the threshold: strictly above for v1 and batched (TF's NMS kernel:
    ``similarity > iou_threshold``), at or above with Model Garden's union epsilon for v2 — exactly the
    comparisons of the eager reference's ``_grouped_greedy_nms``. IoU is symmetric bit for bit (only
    commutative float operations), so computing it once for all pairs is exact.
    """
    k = boxes.shape[1]
    model_garden = params.nms_version == "v2"
    # (B, k, k); only compared with the threshold, so without the degenerate-box select (see _pairwise_iou)
    iou = _pairwise_iou(boxes.unsqueeze(2), boxes.unsqueeze(1), 1e-8 if model_garden else 0.0,
                        degenerate_check=False)
    overlap = iou >= params.nms_iou_threshold if model_garden else iou > params.nms_iou_threshold
    same_class = classes.unsqueeze(2) == classes.unsqueeze(1)  # (B, k, k)
    order = torch.arange(k, device=boxes.device)
    earlier = order.unsqueeze(1) < order.unsqueeze(0)  # (k, k) strictly upper triangular; torch.triu needs opset 14
    return (overlap & same_class & earlier).to(torch.float32)


def _greedy_keep(valid: Tensor, suppress: Tensor) -> Tensor:
    """Exact greedy NMS keep vector (B, 1, k) bool for candidates in priority order.

    ``valid`` (B, 1, k) bool: candidates that take part; ``suppress`` (B, k, k) float 0/1, [j, i] = 1 when j < i
    and a kept j suppresses i. Greedy NMS keeps i iff i is valid and no kept j suppresses it. Each round
    decides, in parallel: i is *dropped* once a kept j suppresses it; i is *kept* once no kept j suppresses
    it and no still-undecided j could. Both rules read only decided candidates, which are right by
    induction, so every decision is greedy's; and the first undecided candidate always gets decided (all its
    predecessors are), so the loop ends within k rounds: in practice within the length of the longest chain
    of overlapping same-class boxes. Exact greedy NMS, not "Fast NMS".

    Each round reads the (k, k) matrix once (it is the loop's whole cost: 16 MB at k = 2000): one product answers
    both questions, with kept candidates weighing ``m`` (a power of two above k) and undecided ones 1, so that
    ``s = m * (kept suppressors) + (undecided suppressors)``, every partial sum an integer below 2^24 and so
    exact in float32 in any order; its quotient and remainder by ``m`` (exact: a power of two) are the two counts.
    From k = 4095 on, where m*(k + 1) reaches 2^24, a round takes two products instead.

    While tracing for ONNX the same loop runs as a scripted function (:func:`_scripted_greedy_keep`).
    """
    k = int(suppress.shape[-1])
    weight = float(1 << k.bit_length())  # the smallest power of two above k
    one_product = weight * (k + 1) < 2**24
    if torch.jit.is_tracing():
        return _scripted_greedy_keep(one_product)(valid, suppress, weight)
    return (_greedy_keep_rounds if one_product else _greedy_keep_rounds_two_products)(valid, suppress, weight)


def _greedy_keep_rounds(valid: Tensor, suppress: Tensor, weight: float) -> Tensor:
    kept = torch.zeros_like(valid)
    undecided = valid
    while bool(undecided.any()):
        # (B, 1, k) @ (B, k, k); see _greedy_keep for why this is exact.
        s = torch.matmul(kept.to(suppress.dtype) * weight + undecided.to(suppress.dtype), suppress)
        by_kept = s >= weight
        by_undecided = s - torch.floor(s / weight) * weight > 0.0
        kept = kept | (undecided & ~by_kept & ~by_undecided)
        undecided = undecided & ~by_kept & by_undecided
    return kept


def _greedy_keep_rounds_two_products(valid: Tensor, suppress: Tensor, weight: float) -> Tensor:
    kept = torch.zeros_like(valid)
    undecided = valid
    while bool(undecided.any()):
        # (B, 1, k) @ (B, k, k): sums of 0/1 below 2^24 are exact in float32.
        by_kept = torch.matmul(kept.to(suppress.dtype), suppress) > 0.0
        by_undecided = torch.matmul(undecided.to(suppress.dtype), suppress) > 0.0
        kept = kept | (undecided & ~by_kept & ~by_undecided)
        undecided = undecided & ~by_kept & by_undecided
    return kept


@functools.cache
def _scripted_greedy_keep(one_product: bool = True) -> torch.jit.ScriptFunction:
    """:func:`_greedy_keep_rounds` (or, for ``one_product=False``, :func:`_greedy_keep_rounds_two_products`)
    compiled with ``torch.jit.script``.

    Tracing would unroll the loop for the example's round count; scripted, ``torch.onnx.export`` writes the
    data-dependent round count as one ONNX ``Loop`` with a condition. The state is (B, 1, k), reshaped by the
    traced caller, so the body is MatMul and logic only: a Slice/Gather/Squeeze in a scripted body takes its
    arguments from outside the body (or becomes an If on the rank), which ONNX shape inference can't read.
    Scripted lazily, and with torch's deprecation warning for ``torch.jit.script`` silenced: the TorchScript
    exporter is the one that writes this graph cleanly at opset 13.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(_greedy_keep_rounds if one_product else _greedy_keep_rounds_two_products)
