"""``spinenet report`` on degenerate boxes (kept, drawn and scored as the reference does) and the modes of the
files it writes."""

import os
import stat

import numpy as np
import pytest
import torch
from test_report import H, W, coco_annotations, make_images, run_folder, write_seed_outputs

from spinenet.deploy.report import write_report
from spinenet.engine.evaluate import CocoEvaluator, detections_to_coco


@pytest.fixture
def label_map(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("1:person\n2:car\n")
    return path


def test_inverted_box_keeps_the_image_and_scores_as_evaluate(tmp_path, label_map):
    """A box with ymax < ymin (a sub-pixel height through the +1 decoder) used to make PIL refuse the drawing,
    and the image was then dropped as "without usable outputs", from the page and from the mAP."""
    pattern = make_images(tmp_path / "images", ["a.jpg", "b.jpg"])
    ann = coco_annotations(tmp_path / "instances.json", ["a.jpg", "b.jpg"])  # GT yxyx (10, 20, 30, 50) each
    inverted = ((40.6, 40, 40.2, 100), 1, 0.95)  # network pixels (scale 2): ymax 0.4 px above ymin
    write_seed_outputs(run_folder(tmp_path), "00000", [inverted, ((20, 40, 60, 100), 1, 0.9)])
    write_seed_outputs(run_folder(tmp_path), "00001", [((20, 40, 60, 100), 1, 0.9)])
    res = write_report(tmp_path / "out", label_map, tmp_path / "r.html", pattern, annotations=ann, verbose=False)
    assert res.missing == [] and res.num_images == 2 and res.metrics["num_images"] == 2
    kept = res.detections[str(tmp_path / "images" / "a.jpg")][0].box
    assert kept == pytest.approx((20.3, 20, 20.1, 50))  # kept as decoded, in original pixels
    # pycocotools (the reference's evaluator) gives the inverted box a negative area, which no area range holds,
    # so unmatched it is ignored rather than counted a false positive: AP stays 1 although it ranks first.
    assert res.metrics["AP"] == pytest.approx(1.0)
    # the same detections through `spinenet evaluate`'s conversion give the same numbers
    boxes = np.zeros((2, 100, 4), np.float32)
    scores = np.full((2, 100), -1.0, np.float32)
    boxes[0, :2], scores[0, :2] = [inverted[0], (20, 40, 60, 100)], [0.95, 0.9]
    boxes[1, 0], scores[1, 0] = (20, 40, 60, 100), 0.9
    info = torch.tensor([[[H, W], [640, 640], [2, 2], [0, 0]]] * 2, dtype=torch.float32)
    dets = {"detection_boxes": torch.from_numpy(boxes), "detection_scores": torch.from_numpy(scores),
            "detection_classes": torch.ones(2, 100, dtype=torch.int32)}
    assert len(detections_to_coco(dets, info, [10, 11])) == 3  # evaluate keeps the inverted box too
    evaluator = CocoEvaluator(ann)
    evaluator.process(dets, info, [10, 11])
    assert evaluator.evaluate(verbose=False)["AP"] == pytest.approx(res.metrics["AP"])


def test_report_files_get_the_usual_mode(tmp_path, label_map):
    pattern = make_images(tmp_path / "images", ["a.jpg"])
    ann = coco_annotations(tmp_path / "instances.json", ["a.jpg"])
    write_seed_outputs(run_folder(tmp_path), "00000", [((20, 40, 60, 100), 1, 0.9)])
    old = os.umask(0o022)
    try:
        write_report(tmp_path / "out", label_map, tmp_path / "r.html", pattern, annotations=ann, verbose=False)
    finally:
        os.umask(old)
    for name in ("r.html", "r_metrics.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name  # as open() would make it
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary left
