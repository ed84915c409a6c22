"""Post-processing (spec §6): hand-checked NMS cases and a naive per-class reference."""

import pytest
import torch
from torchvision.ops import box_iou

from spinenet.modeling.anchors import Anchors
from spinenet.modeling.box_coder import clip_boxes, decode_boxes
from spinenet.modeling.postprocess import (
    PostprocessParams,
    flatten_outputs,
    generate_detections,
    multiclass_nms,
)

RAW = PostprocessParams(apply_sigmoid=False)  # multiclass_nms takes probabilities directly


def _nms(boxes, scores, params=RAW):
    """One image: boxes (N, 4), scores (N, C) -> detections of that image."""
    out = multiclass_nms(torch.tensor([boxes], dtype=torch.float32), torch.tensor([scores], dtype=torch.float32),
                         params)
    return {k: v[0] for k, v in out.items()}


def test_overlapping_same_class_keeps_the_better_one():
    # [0,0,10,10] vs [0,1,10,11]: intersection 10·9 = 90, union 100 + 100 - 90 = 110, IoU 0.818 > 0.5.
    out = _nms([[0, 0, 10, 10], [0, 1, 10, 11]], [[0.8], [0.9]])
    assert out["num_detections"] == 1
    assert out["detection_scores"][0].item() == pytest.approx(0.9)
    assert out["detection_boxes"][0].tolist() == [0, 1, 10, 11]
    assert out["detection_classes"][0].item() == 1  # class index 0 after the background drop -> id 1


def test_same_boxes_different_classes_are_both_kept():
    out = _nms([[0, 0, 10, 10], [0, 1, 10, 11]], [[0.9, 0.0], [0.0, 0.8]])
    assert out["num_detections"] == 2
    assert out["detection_classes"][:2].tolist() == [1, 2]


@pytest.mark.parametrize("x2, iou, kept_v1, kept_v2", [
    (5.0, 0.5, 2, 1),       # [0,0,10,5] inside [0,0,10,10]: 50 / 100 = 0.5 exactly: v1 keeps (>), v2 drops (>=)
    (5.25, 0.525, 1, 1),    # 52.5 / 100
    (4.75, 0.475, 2, 2),    # 47.5 / 100
    (12.0, 100 / 120, 1, 1),  # [0,0,10,12] around [0,0,10,10]: 100 / 120
])
def test_iou_threshold_boundary(x2, iou, kept_v1, kept_v2):
    boxes, scores = [[0, 0, 10, 10], [0, 0, 10, x2]], [[0.9], [0.8]]
    assert box_iou(torch.tensor([[0, 0, 10, 10.0]]), torch.tensor([[0, 0, x2, 10.0]])).item() == pytest.approx(iou)
    assert _nms(boxes, scores)["num_detections"] == kept_v1
    v2 = PostprocessParams(apply_sigmoid=False, nms_version="v2")
    assert _nms(boxes, scores, v2)["num_detections"] == kept_v2


def test_score_threshold_is_strict():
    # float32(0.05) == threshold -> dropped; anything above it survives.
    out = _nms([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], [[0.05], [0.0500001], [0.04]])
    assert out["num_detections"] == 1
    assert out["detection_scores"][0].item() == pytest.approx(0.0500001)


def test_padding_v1_and_v2():
    boxes, scores = [[0, 0, 10, 10], [20, 20, 30, 30]], [[0.9, 0.0], [0.0, 0.7]]
    out = _nms(boxes, scores, PostprocessParams(max_total_size=5, apply_sigmoid=False))
    assert out["num_detections"].dtype == torch.int32 and out["num_detections"].item() == 2
    assert out["detection_scores"].tolist() == pytest.approx([0.9, 0.7, -1, -1, -1])
    assert out["detection_classes"].dtype == torch.int32
    assert out["detection_classes"].tolist() == [1, 2, 0, 0, 0]
    assert out["detection_boxes"][2:].abs().sum() == 0
    v2 = _nms(boxes, scores, PostprocessParams(max_total_size=5, apply_sigmoid=False, nms_version="v2"))
    assert v2["num_detections"].item() == 2
    assert v2["detection_scores"].tolist() == pytest.approx([0.9, 0.7, 0, 0, 0])


def test_v2_never_selects_all_zero_boxes():
    # A box clipped to [0,0,0,0]: v1 keeps it (IoU 0 with everything), Model Garden's tiled NMS does not.
    boxes, scores = [[0, 0, 0, 0], [20, 20, 30, 30]], [[0.9], [0.7]]
    assert _nms(boxes, scores)["num_detections"] == 2
    assert _nms(boxes, scores, PostprocessParams(apply_sigmoid=False, nms_version="v2"))["num_detections"] == 1


def test_top_k_truncation_and_sort_order():
    # 150 disjoint boxes, scores all distinct, spread over 3 classes: the top 100 come back sorted.
    n = 150
    boxes = [[0, 20 * i, 10, 20 * i + 10] for i in range(n)]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    values = 0.1 + 0.8 * perm.float() / n
    scores = torch.zeros(n, 3)
    scores[torch.arange(n), torch.arange(n) % 3] = values
    out = _nms(boxes, scores.tolist())
    assert out["num_detections"] == 100
    expected = torch.sort(values, descending=True).values[:100]
    torch.testing.assert_close(out["detection_scores"], expected)
    top = torch.argsort(values, descending=True)[:100]
    assert out["detection_classes"].tolist() == (top % 3 + 1).tolist()
    torch.testing.assert_close(out["detection_boxes"], torch.tensor(boxes, dtype=torch.float32)[top])


def test_pre_nms_num_boxes_bites():
    boxes = [[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]]  # disjoint, one class
    scores = [[0.6], [0.9], [0.7]]
    out = _nms(boxes, scores, PostprocessParams(pre_nms_num_boxes=2, apply_sigmoid=False))
    assert out["num_detections"] == 2
    assert out["detection_scores"][:2].tolist() == pytest.approx([0.9, 0.7])
    # The top-k is per class: another class is not starved by this one.
    out = _nms(boxes, [[0.6, 0.3], [0.9, 0.0], [0.7, 0.0]], PostprocessParams(pre_nms_num_boxes=2,
                                                                            apply_sigmoid=False))
    assert out["num_detections"] == 3
    # "batched" (combined_non_max_suppression) has no pre-NMS top-k.
    out = _nms(boxes, scores, PostprocessParams(pre_nms_num_boxes=2, apply_sigmoid=False, nms_version="batched"))
    assert out["num_detections"] == 3


def test_pre_nms_top_k_happens_before_nms():
    # Top-2 of the class are the two overlapping boxes; NMS then removes one, and the third box (outside the
    # top-2) never comes back: 1 detection, as in TF (top_k, then NMS).
    boxes, scores = [[0, 0, 10, 10], [0, 1, 10, 11], [40, 40, 50, 50]], [[0.9], [0.8], [0.7]]
    assert _nms(boxes, scores, PostprocessParams(pre_nms_num_boxes=2, apply_sigmoid=False))["num_detections"] == 1


def test_empty_and_batch():
    out = multiclass_nms(torch.zeros(2, 5, 4), torch.zeros(2, 5, 3), RAW)
    assert out["num_detections"].tolist() == [0, 0]
    assert out["detection_boxes"].shape == (2, 100, 4) and out["detection_scores"].shape == (2, 100)
    assert (out["detection_scores"] == -1).all()


def test_flatten_outputs_order():
    # Encode (level, y, x, a, c) in the map values and check each lands at n = offset + (y·W + x)·A + a.
    a_, k_ = 2, 3
    shapes = {3: (2, 3), 4: (1, 2)}
    cls = {}
    box = {}
    for level, (h, w) in shapes.items():
        ch = torch.arange(a_ * k_).view(1, a_ * k_, 1, 1)
        yx = (torch.arange(h).view(1, 1, h, 1) * 10 + torch.arange(w).view(1, 1, 1, w))
        cls[level] = (level * 1000 + yx * 100 + ch).float().expand(2, -1, -1, -1)
        box[level] = (level * 1000 + yx * 100 + torch.arange(a_ * 4).view(1, -1, 1, 1)).float().expand(2, -1, -1, -1)
    logits, deltas = flatten_outputs(cls, box, k_)
    assert logits.shape == (2, (6 + 2) * a_, k_) and deltas.shape == (2, (6 + 2) * a_, 4)
    offset = 0
    for level, (h, w) in shapes.items():
        for y in range(h):
            for x in range(w):
                for a in range(a_):
                    n = offset + (y * w + x) * a_ + a
                    base = level * 1000 + (y * 10 + x) * 100
                    assert logits[1, n].tolist() == [base + a * k_ + c for c in range(k_)]
                    assert deltas[0, n].tolist() == [base + a * 4 + j for j in range(4)]
        offset += h * w * a_


def _random_maps(image_size, num_classes, batch, seed):
    anchors = Anchors(image_size, 3, 4, num_scales=2, aspect_ratios=(1.0, 2.0))  # A = 4, overlapping
    g = torch.Generator().manual_seed(seed)
    sizes = anchors.feature_sizes
    # Distinct logits, uniform in [-4, 2): one permutation spaced 6/total apart, so sigmoid never ties.
    total = sum(batch * 4 * num_classes * h * w for h, w in sizes.values())
    values = (torch.randperm(total, generator=g) * (6.0 / total) - 4.0).split(
        [batch * 4 * num_classes * h * w for h, w in sizes.values()])
    cls = {level: v.view(batch, 4 * num_classes, *sizes[level]) for level, v in zip(sizes, values, strict=True)}
    box = {level: torch.randn(batch, 4 * 4, h, w, generator=g) * 0.3 for level, (h, w) in sizes.items()}
    return anchors, cls, box


def test_generate_detections_classes_boxes_and_clipping():
    anchors, cls, box = _random_maps((128, 128), 4, 1, 0)
    for level in cls:
        cls[level].fill_(-10.0)
        box[level].zero_()
    # Anchor n = (y·W + x)·A + a at P3 (16 x 16, A = 4): y = 0, x = 0, a = 1 (scale 0, aspect ratio 2):
    # background and class 3 fire; class 3 is channel a·K + 3 = 7.
    cls[3][0, 1 * 4 + 0, 0, 0] = 10.0
    cls[3][0, 1 * 4 + 3, 0, 0] = 2.0
    info = torch.tensor([[[128.0, 128.0], [128.0, 128.0], [1.0, 1.0], [0.0, 0.0]]])
    out = generate_detections(cls, box, anchors.boxes, info)
    assert out["num_detections"].tolist() == [1]
    assert out["detection_classes"][0, 0].item() == 3
    assert out["detection_scores"][0, 0].item() == pytest.approx(torch.sigmoid(torch.tensor(2.0)).item())
    # Zero deltas decode to the anchor (+1 convention), then clipping to [0, 127]:
    # anchor 1 at (4, 4): half_h = 24/√2/2 = 8.485, half_w = 16.971 -> [-4.485, -12.971, 12.485, 20.971].
    torch.testing.assert_close(out["detection_boxes"][0, 0], torch.tensor([0.0, 0.0, 12.485281, 20.970562]))


def _naive_detections(boxes, scores, params, v2=False):
    """Plain-Python TF v1 (or Model Garden v2) for one image: boxes (N, 4) yxyx, scores (N, C)."""
    dets = []
    for c in range(scores.shape[1]):
        order = sorted(range(len(boxes)), key=lambda i: -scores[i, c].item())[:params.pre_nms_num_boxes]
        selected = []
        for i in order:
            if scores[i, c].item() <= params.score_threshold:
                continue
            if v2 and not (boxes[i] > 0).any():
                continue
            xyxy = boxes[[i]][:, [1, 0, 3, 2]]
            ious = [box_iou(xyxy, boxes[[j]][:, [1, 0, 3, 2]]).item() for j in selected]
            if any(iou >= params.nms_iou_threshold if v2 else iou > params.nms_iou_threshold for iou in ious):
                continue
            selected.append(i)
            if len(selected) == params.max_total_size:
                break
        dets += [(scores[i, c].item(), c + 1, boxes[i].tolist()) for i in selected]
    dets.sort(key=lambda d: -d[0])
    return dets[:params.max_total_size]


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_random_against_naive_reference(version):
    num_classes, batch = 5, 2
    anchors, cls, box = _random_maps((128, 256), num_classes, batch, seed=1)
    info = torch.tensor([[[100.0, 256.0], [128.0, 200.0], [1.0, 1.0], [0.0, 0.0]]]).repeat(batch, 1, 1)
    # ~56% of scores pass 0.2, so the per-class top-40 bites; 4 overlapping anchors per location make NMS
    # suppress; at most 25 per class and 25 in all.
    params = PostprocessParams(max_total_size=25, pre_nms_num_boxes=40, score_threshold=0.2, nms_version=version)
    out = generate_detections(cls, box, anchors.boxes, info, params)

    logits, deltas = flatten_outputs(cls, box, num_classes)
    scores = torch.sigmoid(logits)[..., 1:]
    for b in range(batch):  # no ties within an (image, class): the top-k and NMS order is well defined
        for c in range(num_classes - 1):
            candidates = scores[b, :, c][scores[b, :, c] > params.score_threshold]
            assert len(torch.unique(candidates)) == candidates.numel()
    boxes = clip_boxes(decode_boxes(deltas, anchors.boxes), info[:, None, 1, :])
    pad = -1.0 if version == "v1" else 0.0
    for b in range(batch):
        dets = _naive_detections(boxes[b], scores[b], params, v2=version == "v2")
        assert len(dets) == params.max_total_size
        n = len(dets)
        assert out["num_detections"][b].item() == n
        torch.testing.assert_close(out["detection_scores"][b, :n], torch.tensor([d[0] for d in dets]))
        assert out["detection_classes"][b, :n].tolist() == [d[1] for d in dets]
        torch.testing.assert_close(out["detection_boxes"][b, :n], torch.tensor([d[2] for d in dets]))
        assert (out["detection_scores"][b, n:] == pad).all()
    # The dense entry point agrees with the map-based one.
    dense = multiclass_nms(boxes, scores, params)
    for key in out:
        torch.testing.assert_close(dense[key], out[key])


def test_errors():
    anchors, cls, box = _random_maps((128, 128), 3, 1, 0)
    info = torch.tensor([[[128.0, 128.0], [128.0, 128.0], [1.0, 1.0], [0.0, 0.0]]])
    with pytest.raises(ValueError, match="another image size"):
        generate_detections(cls, box, anchors.boxes[:-1], info)
    with pytest.raises(ValueError, match="not"):
        flatten_outputs(cls, box, 4)
    with pytest.raises(ValueError, match="valid: v1, v2, batched"):
        PostprocessParams(nms_version="v3")
    with pytest.raises(ValueError, match="valid: tpu, model_garden"):
        PostprocessParams(convention="tf2")
    with pytest.raises(ValueError, match="max_total_size"):
        PostprocessParams(max_total_size=0)
