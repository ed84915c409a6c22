"""The report's aggregates (spinenet.deploy.report_analysis.analyze): COCO numbers, per-class AP and PR curves read
back against pycocotools run on its own, and hand-worked histogram and confusion-matrix cases."""

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from spinenet.deploy.report import Detection
from spinenet.deploy.report_analysis import analyze

CATS = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 5, "name": "<script>alert(1)</script>"}]


def synthetic(seed=0, num_images=6):
    """A COCO doc (classes 1 and 2 have boxes, 5 has none; all boxes medium/large) and jittered detections."""
    rng = np.random.default_rng(seed)
    images, anns, dets = [], [], []
    for i in range(num_images):
        images.append({"id": 100 + i, "file_name": f"sub/img{i}.jpg", "width": 200, "height": 200})
        mine = []
        for _ in range(rng.integers(1, 5)):
            x, y = rng.uniform(0, 100, 2)
            w, h = rng.uniform(40, 90, 2)
            cls = int(rng.choice([1, 2]))
            anns.append({"id": len(anns) + 1, "image_id": 100 + i, "category_id": cls, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": 0})
            for _ in range(rng.integers(0, 3)):
                j = rng.normal(0, 6, 4)
                c = cls if rng.random() < 0.85 else 3 - cls
                box = (y + j[0], x + j[1], y + h + j[2], x + w + j[3])
                mine.append(Detection(c, "", float(rng.uniform(0.05, 1)), box))
        mine.append(Detection(1, "", float(rng.uniform(0.05, 1)), (150, 150, 190, 195)))  # on nothing
        dets.append((f"img{i}.jpg", mine))
    return {"images": images, "annotations": anns, "categories": CATS}, dets


def coco(doc):
    with contextlib.redirect_stdout(io.StringIO()):
        c = COCO()
        c.dataset = doc
        c.createIndex()
    return c


def pycocotools_stats(doc, dets, cat_ids=None):
    """pycocotools on its own: results built here from the detections (xywh), optionally one category only."""
    ids = {f"img{i}.jpg": 100 + i for i in range(len(doc["images"]))}
    results = [{"image_id": ids[n], "category_id": d.class_id, "score": d.score,
                "bbox": [d.box[1], d.box[0], d.box[3] - d.box[1], d.box[2] - d.box[0]]} for n, ds in dets for d in ds]
    gt = coco(doc)
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        if cat_ids:
            ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def test_coco_numbers_per_class_ap_and_pr_curves_agree_with_pycocotools(tmp_path):
    doc, dets = synthetic()
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(doc))
    a = analyze(dets, path, {1: "cat", 2: "dog"})
    stats = pycocotools_stats(doc, dets)
    assert [a.coco.stats[k] for k in ("AP", "AP50", "AP75")] == pytest.approx(stats[:3], abs=1e-12)
    assert stats[3] == -1 and a.coco.stats["APs"] is None and stats[9] == -1 and a.coco.stats["ARs"] is None
    rows = dict((k, v) for k, _, v in a.metrics_rows())
    assert rows["APs"] == "n/a" and rows["AP"] == f"{stats[0]:.3f}"
    per = {c.class_id: c for c in a.coco.per_class}
    for cat in (1, 2):  # COCOeval restricted to one category gives that category's AP
        one = pycocotools_stats(doc, dets, [cat])
        assert (per[cat].ap, per[cat].ap50, per[cat].ap75) == pytest.approx(one[:3], abs=1e-12)
        assert per[cat].num_gt == sum(x["category_id"] == cat for x in doc["annotations"])
        assert per[cat].num_det == sum(d.class_id == cat for _, ds in dets for d in ds)
    assert per[5].ap is None and per[5].num_gt == 0 and 5 not in a.coco.pr[0.5]
    assert a.per_class_rows()[-1][:2] == ("<script>alert(1)</script>", "n/a")  # no GT: last, n/a
    # The overall curve averages the classes; its mean over COCO's 101 recall points is AP50 / AP75.
    assert np.mean(a.coco.pr_all[0.5]) == pytest.approx(stats[1], abs=1e-12)
    assert np.mean(a.coco.pr_all[0.75]) == pytest.approx(stats[2], abs=1e-12)
    assert np.mean(a.coco.pr[0.75][2]) == pytest.approx(per[2].ap75, abs=1e-12)
    assert len(a.coco.recall) == 101 and all(np.diff(a.coco.pr[0.5][1]) <= 0)  # interpolated: non-increasing
    text = json.dumps(a.to_json(per_image=True), allow_nan=False)  # plain JSON, no NaN
    back = json.loads(text)
    assert back["coco"]["stats"]["APs"] is None and back["coco"]["stats"]["AP"] == a.coco.stats["AP"]
    assert len(back["images"]) == len(dets) and back["unmatched_images"] == []
    assert a.metrics["APs"] == -1.0 and a.metrics["num_images"] == len(dets)  # today's metrics form


def test_stat_labels_follow_the_evaluators_names():
    from spinenet.deploy.report_coco import STAT_LABELS
    from spinenet.engine.evaluate import STAT_NAMES

    assert tuple(STAT_LABELS) == STAT_NAMES


def test_every_detection_is_scored_whatever_the_display_threshold():
    doc, dets = synthetic(1)
    low = analyze(dets, coco(doc), score_threshold=0.05)
    high = analyze(dets, coco(doc), score_threshold=0.9)
    assert low.coco.stats == high.coco.stats and low.num_detections == high.num_detections
    assert sum(high.confusion.matrix[-1]) < sum(low.confusion.matrix[-1])  # fewer background detections shown


def det(cls, score, x0, y0, x1, y1):
    return Detection(cls, "", score, (y0, x0, y1, x1))


def test_confusion_matrix_and_histogram_hand_worked():
    doc = {"images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 100}], "categories": CATS[:2],
           "annotations": [{"id": k + 1, "image_id": 1, "category_id": c, "bbox": b, "area": 100, "iscrowd": cr}
                           for k, (c, b, cr) in enumerate([(1, [0, 0, 10, 10], 0), (1, [20, 0, 10, 10], 0),
                                                           (2, [40, 0, 10, 10], 0), (2, [60, 0, 10, 10], 0),
                                                           (1, [0, 50, 40, 40], 1)])]}
    dets = [det(1, 0.93, 0, 0, 10, 10),  # cat on cat: diagonal, TP
            det(1, 0.91, 0, 0, 10, 10),  # duplicate of a taken box: background, FP
            det(2, 0.85, 20, 0, 30, 10),  # dog on the second cat: (cat, dog), FP
            det(2, 0.62, 40, 0, 50, 10),  # dog on dog: TP
            det(1, 0.55, 80, 80, 90, 90),  # on nothing: background, FP
            det(1, 0.5, 5, 55, 15, 65),  # inside the crowd box: ignored everywhere
            det(2, 0.1, 60, 0, 70, 10)]  # dog on dog, below the threshold: TP in the histogram, missed in the matrix
    a = analyze([("a.jpg", dets)], coco(doc), {1: "cat", 2: "dog"}, score_threshold=0.3)
    assert a.confusion.class_ids == [1, 2]
    #                            det: cat dog missed
    assert a.confusion.matrix == [[1, 1, 0],  # gt cat (the crowd box is not counted)
                                  [0, 1, 1],  # gt dog
                                  [2, 0, 0]]  # background
    h = a.histogram
    assert len(h.edges) == 21 and h.edges[-1] == 1.0
    assert sum(h.all) == 7 and h.all[18] == 2 and h.all[11] == 1 and h.all[10] == 1 and h.all[2] == 1
    assert h.tp[18] == 1 and h.fp[18] == 1 and h.fp[17] == 1 and h.tp[12] == 1 and h.fp[11] == 1 and h.tp[2] == 1
    assert sum(h.tp) == 3 and sum(h.fp) == 3  # the crowd detection is neither
    assert a.images[0].counts(0.3) == (2, 3, 2) and a.images[0].counts(0.0) == (3, 3, 1)


def test_without_annotations_and_unmatched_images():
    a = analyze([("a.jpg", [det(1, 0.7, 0, 0, 5, 5)]), ("b.jpg", [])], None, {1: "cat"})
    assert a.coco is None and a.confusion is None and a.histogram.tp is None and sum(a.histogram.all) == 1
    assert a.metrics is None and a.metrics_rows() == [] and a.images[0].match is None
    doc, dets = synthetic(2, 2)
    a = analyze([*dets, ("elsewhere.jpg", [det(1, 0.7, 0, 0, 5, 5)])], coco(doc))
    assert a.unmatched == ["elsewhere.jpg"] and a.num_images == 3 and a.metrics["num_images"] == 2
    assert a.coco.stats["AP"] == pytest.approx(pycocotools_stats(doc, dets)[0], abs=1e-12)
    empty = analyze([(n, []) for n, _ in dets], coco(doc))  # no detections at all: AP 0, not an error
    assert empty.coco.stats["AP"] == 0.0 and empty.confusion.matrix[0][-1] > 0


def test_analyzer_scores_network_boxes_exactly_as_spinenet_evaluate():
    """Graph outputs (network pixels, float32) through scored_boxes + ReportAnalyzer give CocoEvaluator's numbers."""
    import torch

    from spinenet.deploy.report_analysis import ReportAnalyzer, scored_boxes
    from spinenet.engine.evaluate import CocoEvaluator

    doc, dets = synthetic(3, 5)
    rng = np.random.default_rng(3)
    scale = np.float32([640 / 200, 640 / 200 * 0.75])  # an odd per-axis scale: float32 rounding matters
    boxes = np.zeros((5, 100, 4), np.float32)
    scores = np.full((5, 100), -1.0, np.float32)
    classes = np.zeros((5, 100), np.int64)
    for b, (_, ds) in enumerate(dets):
        for k, d in enumerate(ds):
            boxes[b, k] = np.array(d.box) * np.tile(scale, 2) + rng.normal(0, 0.01, 4)
            scores[b, k], classes[b, k] = d.score, d.class_id
    evaluator = CocoEvaluator.__new__(CocoEvaluator)
    evaluator.coco_gt = coco(doc)
    evaluator.reset()
    info = np.tile(np.float32([[200, 200], [640, 640], scale, [0, 0]]), (5, 1, 1))
    evaluator.process({"detection_boxes": torch.from_numpy(boxes), "detection_scores": torch.from_numpy(scores),
                       "detection_classes": torch.from_numpy(classes)}, torch.from_numpy(info), [100 + b for b in
                                                                                                 range(5)])
    expected = evaluator.evaluate(verbose=False)
    analyzer = ReportAnalyzer(coco(doc))
    for b in range(5):
        valid = scores[b] > 0
        yxyx = scored_boxes(boxes[b][valid], scale)
        analyzer.process(f"img{b}.jpg", [Detection(int(c), "", float(s), tuple(v)) for c, s, v in
                                         zip(classes[b][valid], scores[b][valid], yxyx.tolist(), strict=True)])
    got = analyzer.finish().metrics
    assert {k: got[k] for k in ("AP", "AP50", "AP75", "AR100")} == {k: expected[k] for k in ("AP", "AP50", "AP75",
                                                                                          "AR100")}
    keys = ("image_id", "category_id", "bbox", "score")  # (loadRes adds its own keys to the evaluator's list)
    assert analyzer.results == [{k: r[k] for k in keys} for r in evaluator.results]  # the same results, bit for bit
