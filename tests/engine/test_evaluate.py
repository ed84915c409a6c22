"""COCO evaluation: conversion of padded detections to COCO results, and scores from pycocotools."""

import json

import pytest
import torch

from spinenet.engine.evaluate import CocoEvaluator, detections_to_coco


def dets(boxes, scores, classes):
    return {"detection_boxes": torch.tensor([boxes], dtype=torch.float32),
            "detection_scores": torch.tensor([scores], dtype=torch.float32),
            "detection_classes": torch.tensor([classes], dtype=torch.int32)}


def test_boxes_go_back_to_original_pixels_through_row_2():
    # an image 320 high x 640 wide resized by 2 into 640x1280... here scale (2, 2): yxyx (20, 40, 60, 100) in
    # the network input is (10, 20, 30, 50) in the original -> xywh [20, 10, 30, 20].
    info = torch.tensor([[[320, 640], [640, 640], [2.0, 2.0], [0, 0]]])
    out = detections_to_coco(dets([[20, 40, 60, 100], [0, 0, 0, 0]], [0.9, -1.0], [3, 0]), info, [7])
    assert out == [{"image_id": 7, "category_id": 3, "bbox": [20.0, 10.0, 30.0, 20.0], "score": pytest.approx(0.9)}]


@pytest.fixture
def gt_file(tmp_path):
    gt = {"images": [{"id": 1, "width": 100, "height": 100, "file_name": "a.jpg"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 2, "bbox": [10, 10, 40, 40], "area": 1600,
                           "iscrowd": 0}],
          "categories": [{"id": 2, "name": "square"}, {"id": 5, "name": "circle"}]}
    p = tmp_path / "gt.json"
    p.write_text(json.dumps(gt))
    return p


def test_perfect_detection_scores_ap_1(gt_file):
    ev = CocoEvaluator(gt_file)
    ev.process(dets([[10, 10, 50, 50]], [0.8], [2]), torch.tensor([[[100, 100], [100, 100], [1, 1], [0, 0]]]), [1])
    m = ev.evaluate(verbose=False)
    assert m["AP"] == pytest.approx(1.0) and m["AP50"] == pytest.approx(1.0)
    assert m["per_class_ap"]["square"] == pytest.approx(1.0)


def test_a_box_at_iou_0p63_counts_for_ap50_but_not_ap75(gt_file):
    # GT [10,10,50,50] (xyxy); detection shifted by 9 px in x: [19,10,59,50]: inter 31*40=1240,
    # union 1600+1600-1240=1960 -> IoU 0.633: a hit at thresholds 0.50, 0.55, 0.60 (COCO: IoU >= t).
    ev = CocoEvaluator(gt_file)
    ev.process(dets([[10, 19, 50, 59]], [0.8], [2]), torch.tensor([[[100, 100], [100, 100], [1, 1], [0, 0]]]), [1])
    m = ev.evaluate(verbose=False)
    assert m["AP50"] == pytest.approx(1.0) and m["AP75"] == pytest.approx(0.0)
    assert m["AP"] == pytest.approx(0.3)  # hits at 3 of the 10 IoU thresholds


def test_no_detections_gives_zeros(gt_file, tmp_path):
    ev = CocoEvaluator(gt_file)
    m = ev.evaluate(verbose=False)
    assert m["AP"] == 0.0 and m["num_detections"] == 0
    path = ev.write_results(tmp_path / "res" / "results.json")
    assert json.loads(path.read_text()) == []
