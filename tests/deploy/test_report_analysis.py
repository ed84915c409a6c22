"""Per-image TP/FP/FN matching (spinenet.deploy.report_analysis.match_image) against pycocotools' own matching
(COCOeval.evaluateImg's dtMatches / gtMatches / dtIgnore at one IoU threshold), plus hand-worked cases."""

import contextlib
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from spinenet.deploy.report_analysis import box_iou, match_image


def random_case(rng, num_classes=3):
    """One image: GT boxes (some crowd) and detections that jitter around them (so IoUs straddle 0.5) plus noise."""
    gts = []
    for _ in range(rng.integers(0, 7)):
        x, y = rng.uniform(0, 80, 2)
        w, h = rng.uniform(4, 40, 2)
        gts.append(((x, y, x + w, y + h), int(rng.integers(1, num_classes + 1)), bool(rng.random() < 0.15)))
    dets = []
    for box, cls, _ in gts:
        for _ in range(rng.integers(0, 4)):
            jitter = rng.normal(0, 0.15, 4) * (box[2] - box[0] + box[3] - box[1]) / 2
            c = cls if rng.random() < 0.8 else int(rng.integers(1, num_classes + 1))
            dets.append((tuple(np.array(box) + jitter), c, float(rng.choice([0.9, 0.5, rng.random()]))))
    for _ in range(rng.integers(0, 4)):
        x, y = rng.uniform(0, 80, 2)
        dets.append(((x, y, x + rng.uniform(2, 30), y + rng.uniform(2, 30)), int(rng.integers(1, num_classes + 1)),
                     float(rng.random())))
    for _ in range(rng.integers(0, 2)):  # a box inverted on one axis (negative area): COCO ignores it unmatched
        box = gts[0][0] if gts and rng.random() < 0.5 else (10, 10, 20, 20)
        dets.append(((box[0], box[3], box[2], box[3] - 0.5), gts[0][1] if gts else 1, float(rng.random())))
    return dets, gts


def coco_matching(dets, gts, iou_threshold, num_classes=3):
    """pycocotools' own per-(image, class) matching, mapped back to input indices."""
    xywh = lambda b: [b[0], b[1], b[2] - b[0], b[3] - b[1]]  # noqa: E731
    gt_doc = {"images": [{"id": 1, "width": 200, "height": 200}],
              "categories": [{"id": c, "name": f"c{c}"} for c in range(1, num_classes + 1)],
              "annotations": [{"id": i + 1, "image_id": 1, "category_id": c, "bbox": xywh(b),
                               "area": (b[2] - b[0]) * (b[3] - b[1]), "iscrowd": int(crowd)}
                              for i, (b, c, crowd) in enumerate(gts)]}
    results = [{"image_id": 1, "category_id": c, "bbox": xywh(b), "score": s} for b, c, s in dets]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt_doc
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(results) if results else COCO(), "bbox")
        ev.params.iouThrs = np.array([iou_threshold])
        ev.params.areaRng, ev.params.areaRngLbl, ev.params.maxDets = [[0, 1e10]], ["all"], [10000]
        ev.evaluate()
    det_gt, det_ignored, gt_by = [-1] * len(dets), [False] * len(dets), [-1] * len(gts)
    for e in ev.evalImgs:
        if e is None:
            continue
        for k, dt_id in enumerate(e["dtIds"]):
            det_gt[dt_id - 1] = int(e["dtMatches"][0, k]) - 1  # ann ids are index + 1; 0 = unmatched
            det_ignored[dt_id - 1] = bool(e["dtIgnore"][0, k])
        for k, gt_id in enumerate(e["gtIds"]):
            if not e["gtIgnore"][k]:
                gt_by[gt_id - 1] = int(e["gtMatches"][0, k]) - 1
    return det_gt, det_ignored, gt_by


@pytest.mark.parametrize("iou_threshold", [0.5, 0.75])
def test_matching_agrees_with_pycocotools_on_random_images(iou_threshold):
    rng = np.random.default_rng(0)
    checked = crowd_seen = inverted = 0
    for _ in range(150):
        dets, gts = random_case(rng)
        if not dets and not gts:
            continue
        m = match_image(dets, gts, iou_threshold)
        det_gt, det_ignored, gt_by = coco_matching(dets, gts, iou_threshold)
        assert m.det_gt == det_gt and m.det_ignored == det_ignored and m.gt_matched_by == gt_by
        assert m.det_tp == [g >= 0 and not i for g, i in zip(det_gt, det_ignored, strict=True)]
        checked += 1
        crowd_seen += any(det_ignored)
        inverted += any(d[0][3] < d[0][1] for d in dets)
    assert checked > 100 and crowd_seen > 15  # crowd and area rules were exercised
    assert inverted > 30


def test_iou_is_pycocotools_iou():
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(1)
    d = rng.uniform(0, 50, (20, 2))
    d = np.hstack([d, d + rng.uniform(1, 30, (20, 2))])
    g = np.hstack([d[:7, :2] + 3, d[:7, 2:] - 2])
    crowd = np.array([0, 1, 0, 0, 1, 0, 0])
    xywh = lambda b: np.hstack([b[:, :2], b[:, 2:] - b[:, :2]])  # noqa: E731
    np.testing.assert_allclose(box_iou(d, g, crowd), mask_utils.iou(xywh(d), xywh(g), list(crowd)), rtol=1e-12)


def test_hand_worked_image():
    gts = [((0, 0, 10, 10), 1), ((20, 0, 30, 10), 1), ((0, 20, 10, 30), 2), ((40, 40, 60, 60), 1, True)]
    dets = [((0, 0, 10, 10), 1, 0.9),  # exact: TP on gt 0
            ((0, 0, 10, 9), 1, 0.95),  # IoU 0.9 with gt 0, higher score: takes gt 0 first
            ((20, 0, 30, 4), 1, 0.8),  # IoU 0.4 with gt 1: FP
            ((0, 20, 10, 30), 1, 0.7),  # right place, wrong class: FP, gt 2 missed
            ((45, 45, 50, 50), 1, 0.6)]  # inside the crowd box: ignored
    m = match_image(dets, gts)
    assert m.det_gt == [-1, 0, -1, -1, 3]
    assert m.det_tp == [False, True, False, False, False] and m.det_ignored == [False] * 4 + [True]
    assert m.gt_matched_by == [1, -1, -1, -1] and m.det_iou[1] == pytest.approx(0.9) and m.det_iou[4] == 1.0
    assert m.counts(0.0) == (1, 3, 2)  # FPs: dets 0, 2, 3; missed: gts 1, 2 (the crowd box is never missed)
    assert m.counts(0.92) == (1, 0, 2)
    assert m.counts(0.96) == (0, 0, 3)
    assert match_image([], gts).counts() == (0, 0, 3)
    assert match_image(dets, []).counts() == (0, 5, 0)
    assert m.to_json()["det_gt"] == [-1, 0, -1, -1, 3]


def test_counts_at_a_threshold_equal_matching_only_the_detections_above_it():
    rng = np.random.default_rng(2)
    for _ in range(100):
        dets, gts = random_case(rng)
        m = match_image(dets, gts)
        for t in (0.0, 0.3, 0.5, 0.9, 0.95):
            kept = [d for d in dets if d[2] >= t]
            assert m.counts(t) == match_image(kept, gts).counts(), (dets, gts, t)


@pytest.mark.parametrize("dets, gts, det_gt", [
    # One detection exactly between two boxes (IoU 0.6 with each): pycocotools keeps the later box.
    ([((2.5, 0, 12.5, 10), 1, 0.9)], [((0, 0, 10, 10), 1), ((5, 0, 15, 10), 1)], [1]),
    # Two detections of equal score on one box: the first given takes it (stable sort), the second is an FP.
    ([((0, 0, 10, 9), 1, 0.5), ((0, 0, 10, 10), 1, 0.5)], [((0, 0, 10, 10), 1)], [0, -1]),
    # A crowd box with a higher IoU is not taken over a regular match; a second detection falls into the crowd.
    ([((0, 0, 10, 10), 1, 0.9), ((0, 0, 10, 10), 1, 0.8)], [((0, 0, 10, 10), 1, True), ((1, 0, 10, 10), 1)],
     [1, 0]),
])
def test_ties_and_crowd_order_as_pycocotools(dets, gts, det_gt):
    gts3 = [(g[0], g[1], len(g) > 2 and g[2]) for g in gts]
    assert coco_matching(dets, gts3, 0.5)[0] == det_gt  # the expectation is pycocotools' own behaviour
    assert match_image(dets, gts).det_gt == det_gt
