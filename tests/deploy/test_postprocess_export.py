"""The static-shape detection generator against the eager reference ``generate_detections`` (spec §6)."""

import dataclasses

import pytest
import torch

from spinenet.deploy.postprocess_export import _greedy_keep, generate_detections_export, window_size
from spinenet.modeling.anchors import Anchors
from spinenet.modeling.postprocess import PostprocessParams, generate_detections
from spinenet.modeling.retinanet import default_image_info

NUM_ANCHORS = 9


def _anchors(size: int) -> torch.Tensor:
    return Anchors((size, size), 3, 7, 3, (1.0, 2.0, 0.5), 3.0).boxes


def _random_maps(batch: int, size: int, num_classes: int, seed: int, objects: int = 0, quantum: float = 0.0):
    """Raw head maps: noise logits (about 10% of scores above 0.05) plus ``objects`` blobs of high scores
    over 3x3 locations x all anchors, each for one class and, weaker, a second class (cross-class overlap).
    ``quantum`` > 0 rounds the logits to make many exact score ties."""
    g = torch.Generator().manual_seed(seed)
    cls, box = {}, {}
    for level in range(3, 8):
        s = size // 2**level
        logits = torch.randn(batch, NUM_ANCHORS, num_classes, s, s, generator=g) * 1.5 - 4.5
        for _ in range(objects if s >= 3 else 0):
            b, y, x = (int(torch.randint(0, n, (1,), generator=g)) for n in (batch, s - 2, s - 2))
            c1, c2 = (int(v) for v in torch.randint(1, num_classes, (2,), generator=g))
            logits[b, :, c1, y:y + 3, x:x + 3] += 4.0 + torch.rand(NUM_ANCHORS, 3, 3, generator=g) * 2
            logits[b, :, c2, y:y + 3, x:x + 3] += 2.0 + torch.rand(NUM_ANCHORS, 3, 3, generator=g)
        if quantum:
            logits = torch.round(logits / quantum) * quantum
        cls[level] = logits.reshape(batch, NUM_ANCHORS * num_classes, s, s)
        box[level] = torch.randn(batch, NUM_ANCHORS * 4, s, s, generator=g) * 0.3
    return cls, box


def _assert_same(cls, box, size, params=None, pre_nms_topk=2000):
    """Bit-identical outputs. The maps are turned into probabilities first (``apply_sigmoid=False``): torch's
    sigmoid may round an element differently in its vectorised body and its scalar tail, so the same logit
    can give scores one ulp apart in the two implementations, which gather candidates differently."""
    params = dataclasses.replace(params or PostprocessParams(), apply_sigmoid=False)
    cls = {lvl: torch.sigmoid(c) for lvl, c in cls.items()}
    info = default_image_info(next(iter(cls.values())).shape[0], size, size)
    ref = generate_detections(cls, box, _anchors(size), info, params)
    out = generate_detections_export(cls, box, _anchors(size), info, params, pre_nms_topk)
    for key in ref:
        assert out[key].dtype == ref[key].dtype and out[key].shape == ref[key].shape, key
        assert torch.equal(out[key], ref[key]), f"{key} differs"
    return out


def test_equals_reference_on_logits():
    # From logits, scores may differ by an ulp (see _assert_same); the selection must still be the same.
    cls, box = _random_maps(2, 128, 6, seed=11, objects=6)
    info = default_image_info(2, 128, 128)
    ref = generate_detections(cls, box, _anchors(128), info)
    out = generate_detections_export(cls, box, _anchors(128), info)
    for key in ("num_detections", "detection_classes", "detection_boxes"):
        assert torch.equal(out[key], ref[key]), key
    torch.testing.assert_close(out["detection_scores"], ref["detection_scores"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("size, num_classes, objects, seed", [
    (128, 6, 6, 0), (128, 6, 6, 1), (128, 11, 10, 4), (256, 11, 12, 5)])
def test_equals_reference_on_random_maps(size, num_classes, objects, seed):
    out = _assert_same(*_random_maps(2, size, num_classes, seed, objects), size)
    assert (out["num_detections"] == 100).all()  # the maps give NMS real work: more than 100 survivors


@pytest.mark.parametrize("seed", range(2))
def test_equals_reference_with_exact_score_ties(seed):
    # Logits on a 0.25 grid: many equal scores, whose order (class, then anchor) decides what NMS keeps.
    _assert_same(*_random_maps(2, 128, 6, seed, objects=6, quantum=0.25), 128)


@pytest.mark.parametrize("version", ["v2", "batched"])
def test_equals_reference_for_other_nms_versions(version):
    _assert_same(*_random_maps(2, 128, 6, seed=7, objects=6), 128, PostprocessParams(nms_version=version))


def test_equals_reference_with_few_candidates():
    # Mostly below the threshold: fewer than 100 detections, so the -1 padding and num_detections matter.
    cls, box = _random_maps(2, 128, 6, seed=3)
    cls = {lvl: c - 2.5 for lvl, c in cls.items()}  # logits: _assert_same applies the sigmoid
    out = _assert_same(cls, box, 128)
    assert 0 < out["num_detections"].min() and out["num_detections"].max() < 100
    assert (out["detection_scores"][0, out["num_detections"][0]:] == -1).all()


def _one_level(boxes, scores, params):
    """Hand-made input: one 'level' of 1 x M locations, one anchor each, classes [background, c1, ...];
    zero deltas decode to the anchors themselves, so ``boxes`` are the boxes NMS sees."""
    scores = torch.tensor(scores, dtype=torch.float32)  # (M, C)
    m, c = scores.shape
    logits = torch.cat([torch.zeros(m, 1), scores], dim=1).T.reshape(1, c + 1, 1, m)
    cls, box = {3: logits}, {3: torch.zeros(1, 4, 1, m)}
    info = default_image_info(1, 100, 100)
    anchors = torch.tensor(boxes, dtype=torch.float32)
    ref = generate_detections(cls, box, anchors, info, params)
    out = generate_detections_export(cls, box, anchors, info, params, pre_nms_topk=params.max_total_size)
    for key in ref:
        assert torch.equal(out[key], ref[key]), key
    return out


RAW = PostprocessParams(apply_sigmoid=False, max_total_size=4)


def test_greedy_not_fast_nms():
    # A suppresses B (IoU 70/130), B would suppress C (70/130), A and C barely overlap (40/160): greedy NMS
    # keeps A and C. "Fast NMS" (suppress by any higher-scored box, kept or not) would drop C.
    out = _one_level([[0, 0, 10, 10], [0, 3, 10, 13], [0, 6, 10, 16]], [[0.9], [0.8], [0.7]], RAW)
    assert out["num_detections"].item() == 2
    assert out["detection_scores"][0].tolist() == pytest.approx([0.9, 0.7, -1, -1])


def test_iou_exactly_half_is_kept_and_threshold_is_strict():
    # [0,0,10,5] inside [0,0,10,10]: IoU exactly 0.5, kept by v1 (suppression needs IoU > 0.5). A score equal
    # to float32(0.05) is dropped; other classes never suppress each other.
    out = _one_level([[0, 0, 10, 10], [0, 0, 10, 5], [0, 0, 10, 10]],
                     [[0.9, 0.0], [0.8, 0.0], [0.05, 0.6]], RAW)
    assert out["num_detections"].item() == 3
    assert out["detection_classes"][0].tolist() == [1, 1, 2, 0]
    assert out["detection_scores"][0].tolist() == pytest.approx([0.9, 0.8, 0.6, -1])


def test_long_chain_takes_many_rounds_and_stays_exact():
    # 30 boxes, each shifted 3 px from the last: neighbours overlap (IoU 0.54), next-but-one don't (0.25).
    # Greedy keeps every other box; the loop has to run the whole chain.
    k = 30
    boxes = torch.tensor([[0.0, 3 * i, 10, 3 * i + 10] for i in range(k)])
    from spinenet.deploy.postprocess_export import _suppression_matrix

    suppress = _suppression_matrix(boxes[None], torch.zeros(1, k, dtype=torch.long), PostprocessParams())
    kept = _greedy_keep(torch.ones(1, 1, k, dtype=torch.bool), suppress)
    assert kept[0, 0].tolist() == [i % 2 == 0 for i in range(k)]


@pytest.mark.parametrize("k", [30, 2000, 4096])
def test_one_product_rounds_equal_two_product_rounds(k):
    # One product per round (kept weigh a power of two above k) up to k = 4094, two from 4095 on; both are
    # greedy NMS. Random sparse suppression among random valid candidates, upper triangular as the real one.
    from spinenet.deploy.postprocess_export import _greedy_keep_rounds, _greedy_keep_rounds_two_products

    g = torch.Generator().manual_seed(k)
    suppress = ((torch.rand(2, k, k, generator=g) < 8 / k) & torch.ones(k, k, dtype=torch.bool).triu(1)).float()
    valid = torch.rand(2, 1, k, generator=g) < 0.7
    kept = _greedy_keep(valid, suppress)
    assert torch.equal(kept, _greedy_keep_rounds_two_products(valid, suppress, 0.0))
    if k < 4095:
        assert torch.equal(kept, _greedy_keep_rounds(valid, suppress, float(1 << k.bit_length())))
    # the reference: greedy NMS one candidate at a time
    for b in range(2):
        ref, alive = [], valid[b, 0].clone()
        for i in range(k):
            if alive[i]:
                ref.append(i)
                alive &= suppress[b, i] == 0
        assert kept[b, 0].nonzero().flatten().tolist() == ref


def test_window_size():
    params = PostprocessParams(pre_nms_num_boxes=1500)
    assert window_size(10**6, params, 2000) == 1500  # never wider than the reference's per-class top-k
    assert window_size(300, params, 2000) == 300
    assert window_size(3, params, 100) == 3  # fewer scores than output slots: the outputs are padded
    assert window_size(10**6, PostprocessParams(nms_version="batched"), 2000) == 2000
    with pytest.raises(ValueError, match="at least max_total_size"):
        window_size(10**6, params, 50)


def test_topk_is_exact_ties_included(monkeypatch):
    from spinenet.deploy import postprocess_export as pe

    monkeypatch.setattr(pe, "_SPLIT_TOPK_FROM", 8)  # split even small inputs
    g = torch.Generator().manual_seed(0)
    scores = torch.round(torch.randn(3, 4000, generator=g) * 4) / 4  # a 0.25 grid: many exact ties
    # The reference: a stable sort over ascending indices, descending values; ties at the k-th place included.
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    for k in (1, 100, 2000, 2001):
        ref = order[:, :k]
        for fn in (pe._topk_lowest_index_first, pe._topk_in_halves):
            values, index = fn(scores, k)
            assert torch.equal(index, ref), (fn.__name__, k)
            assert torch.equal(values, torch.gather(scores, 1, ref)), (fn.__name__, k)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_topk_tie_rule_for_every_dtype_signed_zeros_and_infinities(dtype):
    """The static tie rule (int64 keys from the float bits, or a stable sort for float64) is the stable sort's
    order for negative scores, -0.0 against +0.0 (equal, so ordered by index), and +-inf."""
    from spinenet.deploy import postprocess_export as pe

    g = torch.Generator().manual_seed(1)
    grid = torch.round(torch.randn(2, 3000, generator=g) * 3) / 4
    grid[:, ::7] = 0.0
    grid[:, 3::7] = -0.0
    grid[:, 5::97] = float("inf")
    grid[:, 6::89] = float("-inf")
    scores = grid.to(dtype)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    for k in (1, 500, 1500, 3000):
        values, index = pe._topk_lowest_index_first(scores, k)
        assert torch.equal(index, order[:, :k]), k
        assert values.dtype == dtype and torch.equal(values, torch.gather(scores, 1, order[:, :k]))


def test_tile_major_class_maps_give_the_same_detections():
    # A Winograd class predictor hands its maps over in tile-major order, (B, 16, H/4, W/4, A*C) with element
    # [b, i*4 + j, t, u, ch] = map[b, ch, 4t + i, 4u + j]; levels whose sides are not multiples of 4 stay NCHW.
    cls, box = _random_maps(2, 256, 6, seed=9, objects=8)
    cls = {lvl: torch.sigmoid(c).reshape(2, NUM_ANCHORS, 6, *c.shape[2:])[:, :, 1:].reshape(2, -1, *c.shape[2:])
           for lvl, c in cls.items()}  # background dropped, as an optimised head does
    params = PostprocessParams(apply_sigmoid=False)
    info = default_image_info(2, 256, 256)

    def tiles(x):
        b, ch, h, w = x.shape
        return x.reshape(b, ch, h // 4, 4, w // 4, 4).permute(0, 3, 5, 2, 4, 1).reshape(b, 16, h // 4, w // 4, ch)

    mixed = {lvl: tiles(c) if c.shape[2] % 4 == 0 else c for lvl, c in cls.items()}
    assert any(m.dim() == 5 for m in mixed.values()) and any(m.dim() == 4 for m in mixed.values())
    ref = generate_detections_export(cls, box, _anchors(256), info, params, background_channel=False)
    out = generate_detections_export(mixed, box, _anchors(256), info, params, background_channel=False)
    assert (ref["num_detections"] == 100).all()
    for key in ref:
        assert torch.equal(out[key], ref[key]), key
