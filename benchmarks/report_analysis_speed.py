"""The report's analysis and plots, timed: what ``spinenet report --annotations`` adds for N images.

1. :class:`spinenet.deploy.report_analysis.ReportAnalyzer` over N synthetic 128x128 images (5 ground-truth boxes
   of 6 classes each, D detections each): ``process`` (per-image COCO matching, histogram, confusion cells) and
   ``finish`` (one pycocotools COCOeval over every detection: the 12 numbers, per-class AP, PR curves).
2. The four SVG plots of :mod:`spinenet.deploy.report_plots` with COCO's 80 classes (import and render), and with
   ``--matplotlib`` the same PR curves and per-class bars drawn by matplotlib's SVG backend, for comparison.

    PYTHONPATH=src python benchmarks/report_analysis_speed.py [--images 5000] [--detections 100] [--matplotlib]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time

import numpy as np


def synthetic(num_images: int, num_dets: int, num_classes: int, seed: int = 0):
    """A COCO doc and per-image detections (report.Detection) scattered over 128x128 images."""
    from spinenet.deploy.report import Detection

    rng = np.random.default_rng(seed)
    images, anns, dets = [], [], []
    for i in range(num_images):
        images.append({"id": i, "file_name": f"{i:05d}.jpg", "width": 128, "height": 128})
        for _ in range(5):
            x, y = rng.uniform(0, 90, 2)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(rng.integers(1, num_classes + 1)),
                         "bbox": [x, y, 30, 30], "area": 900, "iscrowd": 0})
        xy = rng.uniform(0, 100, (num_dets, 2))
        scores = np.sort(rng.random(num_dets))[::-1]
        dets.append((f"{i:05d}.jpg", [Detection(int(rng.integers(1, num_classes + 1)), "", float(scores[k]),
                                                (xy[k, 0], xy[k, 1], xy[k, 0] + 28, xy[k, 1] + 28))
                                      for k in range(num_dets)]))
    cats = [{"id": c, "name": f"class {c}"} for c in range(1, num_classes + 1)]
    return {"images": images, "annotations": anns, "categories": cats}, dets


def coco(doc):
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        c = COCO()
        c.dataset = doc
        c.createIndex()
    return c


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--detections", type=int, default=100)
    parser.add_argument("--matplotlib", action="store_true", help="also time matplotlib's SVG for the same plots")
    args = parser.parse_args()
    from spinenet.deploy.report_analysis import ReportAnalyzer

    doc, dets = synthetic(args.images, args.detections, 6)
    analyzer = ReportAnalyzer(coco(doc))
    t0 = time.perf_counter()
    for name, d in dets:
        analyzer.process(name, d)
    t1 = time.perf_counter()
    analysis = analyzer.finish()
    t2 = time.perf_counter()
    size = len(json.dumps(analysis.to_json()))
    print(f"analysis of {args.images} images x {args.detections} detections: process {t1 - t0:.1f} s, "
          f"finish (COCOeval) {t2 - t1:.1f} s; report_metrics.json {size} bytes")

    t0 = time.perf_counter()
    from spinenet.deploy import report_plots

    t1 = time.perf_counter()
    doc, dets = synthetic(100, 8, 80, seed=1)
    a = ReportAnalyzer(coco(doc), score_threshold=0.3)
    for name, d in dets:
        a.process(name, d)
    a = a.finish()
    t2 = time.perf_counter()
    svgs = [report_plots.pr_curve_svg(a.coco, 0.5, a.class_names), report_plots.pr_curve_svg(a.coco, 0.75),
            report_plots.per_class_ap_svg(a.coco.per_class), report_plots.score_histogram_svg(a.histogram, 0.3),
            report_plots.confusion_matrix_svg(a.confusion)]
    t3 = time.perf_counter()
    print(f"report_plots, 80 classes: import {t1 - t0:.2f} s, 4 plots (2 PR curves) {t3 - t2:.3f} s, "
          f"{sum(map(len, svgs))} bytes of SVG")
    if args.matplotlib:
        t0 = time.perf_counter()
        import matplotlib

        matplotlib.use("svg")
        import matplotlib.pyplot as plt

        t1 = time.perf_counter()
        sizes = []
        for iou in (0.5, 0.75):
            fig, ax = plt.subplots(figsize=(4.2, 3.4))
            for curve in a.coco.pr[iou].values():
                ax.plot(a.coco.recall, curve, lw=0.8, alpha=0.6)
            ax.plot(a.coco.recall, a.coco.pr_all[iou], "k", lw=2.5)
            buf = io.StringIO()
            fig.savefig(buf, format="svg")
            sizes.append(len(buf.getvalue()))
            plt.close(fig)
        fig, ax = plt.subplots(figsize=(5.2, 13))
        order = sorted(a.coco.per_class, key=lambda c: -(c.ap or 0))
        ax.barh([c.name for c in order], [c.ap50 or 0 for c in order], color="#ccc")
        ax.barh([c.name for c in order], [c.ap or 0 for c in order], color="#4363d8")
        buf = io.StringIO()
        fig.savefig(buf, format="svg")
        sizes.append(len(buf.getvalue()))
        plt.close(fig)
        t2 = time.perf_counter()
        print(f"matplotlib {matplotlib.__version__}, the 2 PR curves + per-class bars: import {t1 - t0:.2f} s, "
              f"render {t2 - t1:.3f} s, {sum(sizes)} bytes of SVG")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
