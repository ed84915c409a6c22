"""The report's inline SVG plots: well-formed, findable by their markers, one mark per class/bin/cell, class names
escaped, and fast with COCO's 80 classes."""

import time
import xml.etree.ElementTree as ET

import numpy as np
from test_report_metrics import coco, synthetic

from spinenet.deploy.report import Detection
from spinenet.deploy.report_analysis import analyze
from spinenet.deploy.report_plots import (
    confusion_matrix_svg,
    nice_axis_top,
    per_class_ap_svg,
    pr_curve_svg,
    score_histogram_svg,
)

SVG = "{http://www.w3.org/2000/svg}"
EVIL = "<script>alert(1)</script>"


def parse(svg):
    root = ET.fromstring(svg)  # well-formed XML: nothing unescaped broke it
    assert root.tag == f"{SVG}svg"
    return root


def find(root, cls):
    return [e for e in root.iter() if cls in (e.get("class") or "").split()]


def small_analysis():
    doc, dets = synthetic()
    doc["categories"][0]["name"] = EVIL  # class 1, with boxes, detections and curves
    return analyze(dets, coco(doc), {1: EVIL, 2: "dog"}), doc


def test_plots_carry_markers_and_one_mark_per_item():
    a, doc = small_analysis()
    names = a.class_names
    for iou in (0.5, 0.75):
        root = parse(pr_curve_svg(a.coco, iou, names))
        assert root.get("class") == "plot pr-curve" and root.get("data-iou") == f"{iou:g}"
        assert sorted(int(p.get("data-class-id")) for p in find(root, "pr-class")) == [1, 2]  # class 5 has no GT
        (overall,) = find(root, "pr-all")
        points = [tuple(map(float, p.split(","))) for p in overall.get("points").split()]
        assert len(points) == 101 and points[0][0] < points[-1][0]
    root = parse(per_class_ap_svg(a.coco.per_class, drop_empty=False))
    assert root.get("class") == "plot per-class-ap"
    assert [int(g.get("data-class-id")) for g in find(root, "ap-bar")][-1] == 5 and len(find(root, "ap-bar")) == 3
    root = parse(per_class_ap_svg(a.coco.per_class))  # class 5: no box, no detection -> left out, and said so
    assert len(find(root, "ap-bar")) == 2 and "1 without boxes or detections not shown" in root.get("aria-label")
    root = parse(score_histogram_svg(a.histogram, 0.3))
    assert root.get("data-series") == "tp,fp"
    tp_bars = find(root, "bar-tp")
    assert len(tp_bars) == sum(n > 0 for n in a.histogram.tp)
    # heights are proportional to the counts
    heights = [float(b.get("height")) for b in tp_bars]
    counts = [n for n in a.histogram.tp if n]
    np.testing.assert_allclose(np.array(heights) / heights[0], np.array(counts) / counts[0], rtol=0.05)
    assert find(root, "threshold")[0].get("data-threshold") == "0.3"
    root = parse(confusion_matrix_svg(a.confusion))
    cells = find(root, "cell")
    assert sum(int(c.get("data-count")) for c in cells) == sum(map(sum, a.confusion.matrix))
    assert root.get("data-classes") == "2"  # class 5: no box, no detection -> left out


def test_class_names_are_escaped():
    a, _ = small_analysis()
    svgs = [pr_curve_svg(a.coco, 0.5, a.class_names), per_class_ap_svg(a.coco.per_class),
            confusion_matrix_svg(a.confusion), score_histogram_svg(a.histogram)]
    for svg in svgs:
        assert "<script" not in svg
    assert "&lt;script&gt;" in svgs[0] and "&lt;script&gt;" in svgs[1] and "&lt;script&gt;" in svgs[2]
    texts = ["".join(t.itertext()) for t in parse(svgs[1]).iter(f"{SVG}text")]
    assert any(EVIL in t for t in texts)  # shown to the reader as written


def test_histogram_without_annotations_and_axis_top():
    a = analyze([("a.jpg", [Detection(1, "", s, (0, 0, 5, 5)) for s in (0.1, 0.12, 0.9)])])
    root = parse(score_histogram_svg(a.histogram))
    assert root.get("data-series") == "all" and len(find(root, "bar-all")) == 2 and not find(root, "threshold")
    assert [nice_axis_top(v) for v in (0, 1, 4, 5, 8, 9, 21, 40, 41, 199, 201)] == [4, 4, 4, 8, 8, 20, 40, 40, 80, 200,
                                                                                  400]


def test_eighty_classes_render_fast():
    rng = np.random.default_rng(0)
    cats = [{"id": i, "name": f"class number {i}"} for i in range(1, 81)]
    images, anns, dets = [], [], []
    for i in range(100):
        images.append({"id": i, "file_name": f"{i}.jpg", "width": 100, "height": 100})
        mine = []
        for _ in range(8):
            x, y = rng.uniform(0, 60, 2)
            c = int(rng.integers(1, 81))
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": c, "bbox": [x, y, 40, 40], "area": 1600,
                         "iscrowd": 0})
            mine.append(Detection(c if rng.random() < 0.7 else int(rng.integers(1, 81)), "", float(rng.random()),
                                  (y + 2, x + 1, y + 40, x + 42)))
        dets.append((f"{i}.jpg", mine))
    a = analyze(dets, coco({"images": images, "annotations": anns, "categories": cats}), score_threshold=0.0)
    start = time.perf_counter()
    svgs = [pr_curve_svg(a.coco, 0.5, a.class_names), pr_curve_svg(a.coco, 0.75, a.class_names),
            per_class_ap_svg(a.coco.per_class), score_histogram_svg(a.histogram, 0.3),
            confusion_matrix_svg(a.confusion)]
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, elapsed  # ~0.06 s here; generous for a loaded CI machine
    assert len(find(parse(svgs[0]), "pr-class")) == 80 and len(find(parse(svgs[2]), "ap-bar")) == 80  # all have GT
    assert sum(len(s) for s in svgs) < 600_000
