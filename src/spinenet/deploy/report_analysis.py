"""The report's analysis: per-image matching of detections to ground truth, and the aggregates the page shows.

:class:`ReportAnalyzer` (or :func:`analyze`) takes the images one by one, as every report source yields them,
returns each image's ground truth and matches for drawing, and at the end the COCO numbers, per-class AP and
PR curves (:mod:`report_coco`, always over every detection whatever the display threshold), a TP/FP score
histogram and a class confusion matrix, as one :class:`ReportAnalysis` (``to_json`` for report_metrics.json).

Matching (:func:`match_image`) is COCO's at one IoU threshold.

The report marks each detection true positive / false positive and each ground-truth box found / missed. The
rule is pycocotools' ``COCOeval.evaluateImg`` (pycocotools 2.0.11, ``cocoeval.py``; IoU from
``maskApi.c bbIou``), restricted to one IoU threshold, area range "all" and no ``maxDets`` cut:

* per class, detections in descending score order (a stable sort: equal scores keep their input order) each
  take the unmatched ground-truth box of their class with the highest IoU >= the threshold; on equal IoU the
  later box (in the order below) wins, as ``ious[d, g] < iou: continue`` lets it;
* ground truth is visited non-crowd first, then crowd (COCO's ``_ignore``: ``iscrowd`` with area "all"); once
  a detection holds a non-crowd match it does not look at crowd boxes; a crowd box can absorb any number of
  detections and its IoU is intersection / *detection* area;
* a detection matched to a crowd box is *ignored* (neither true nor false positive); crowd boxes are never
  "missed";
* an unmatched detection whose area (w * h, as ``loadRes`` computes it) is outside area range "all"
  [0, 1e10] is ignored too: a box inverted on one axis (the reference decoder's sub-pixel heights) has a
  negative area, so COCO neither counts it as a false positive.

Not modelled (the caller can fold it into ``iscrowd`` if it matters): a non-crowd ground-truth box whose
annotated ``area`` lies outside [0, 1e10], which COCO ignores without letting it absorb several detections.

The IoU threshold is capped at ``1 - 1e-10`` as in pycocotools, so a perfect box still matches at 1.0.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from spinenet.deploy.report_coco import STAT_LABELS, CocoSummary, coco_evaluate

AREA_ALL = 1e10  # COCOeval's area range "all" is [0, 1e5 ** 2]
Box = Sequence[float]  # x0, y0, x1, y1 in original-image pixels


@dataclass
class ImageMatch:
    """The result of :func:`match_image`; lists indexed like the ``dets`` and ``gts`` given to it."""

    det_tp: list[bool]  # matched to a non-crowd ground-truth box of its class
    det_gt: list[int]  # index of the matched ground-truth box (crowd included), -1 when none
    det_iou: list[float]  # IoU with that box (intersection / detection area for a crowd box), 0.0 when none
    det_ignored: list[bool]  # matched to a crowd box: neither true nor false positive, as in COCO
    gt_matched_by: list[int]  # index of the detection that matched a non-crowd box, -1 when missed
    gt_crowd: list[bool]
    det_scores: list[float]
    iou_threshold: float = 0.5

    def counts(self, score_threshold: float = 0.0) -> tuple[int, int, int]:
        """(TP, FP, FN) counting only the detections with score >= ``score_threshold``.

        Valid without re-matching: detections are matched greedily in descending score order, so whether a
        detection matches (and to which box) depends only on the detections scored above it. The matches among
        the detections >= t are therefore exactly those of matching only them (equal scores are all in or all
        out), and a ground-truth box is missed at t when its matcher scores below t.
        """
        tp = fp = 0
        for score, hit, ignored in zip(self.det_scores, self.det_tp, self.det_ignored, strict=True):
            if score >= score_threshold and not ignored:
                tp, fp = tp + hit, fp + (not hit)
        fn = sum(1 for d, crowd in zip(self.gt_matched_by, self.gt_crowd, strict=True)
                 if not crowd and (d < 0 or self.det_scores[d] < score_threshold))
        return tp, fp, fn

    def to_json(self) -> dict:
        """Plain lists for the page (IoUs rounded to 4 digits: they are only shown)."""
        return {"iou_threshold": self.iou_threshold, "det_tp": list(self.det_tp), "det_gt": list(self.det_gt),
                "det_iou": [round(v, 4) for v in self.det_iou], "det_ignored": list(self.det_ignored),
                "gt_matched_by": list(self.gt_matched_by), "gt_crowd": list(self.gt_crowd)}


def box_iou(dets: np.ndarray, gts: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """(D, G) IoU of xyxy boxes by pycocotools' ``bbIou`` arithmetic (on x, y, w, h; crowd: over the det area).

    Inverted boxes (x1 < x0, kept by the reference decoder for sub-pixel heights) get the same value as there.
    """
    d = np.asarray(dets, np.float64).reshape(-1, 4)
    g = np.asarray(gts, np.float64).reshape(-1, 4)
    dw, dh = d[:, 2] - d[:, 0], d[:, 3] - d[:, 1]
    gw, gh = g[:, 2] - g[:, 0], g[:, 3] - g[:, 1]
    w = np.minimum((d[:, 0] + dw)[:, None], (g[:, 0] + gw)[None]) - np.maximum(d[:, None, 0], g[None, :, 0])
    h = np.minimum((d[:, 1] + dh)[:, None], (g[:, 1] + gh)[None]) - np.maximum(d[:, None, 1], g[None, :, 1])
    inter = np.where((w > 0) & (h > 0), w * h, 0.0)
    da, ga = (dw * dh)[:, None], (gw * gh)[None]
    union = np.where(np.asarray(crowd, bool)[None], da, da + ga - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(inter > 0, inter / union, 0.0)


def match_image(dets: Sequence[tuple[Box, int, float]], gts: Sequence[tuple[Box, int] | tuple[Box, int, bool]],
                iou_threshold: float = 0.5) -> ImageMatch:
    """Match one image's detections ``(box_xyxy, class_id, score)`` to its ground truth ``(box_xyxy, class_id[,
    iscrowd])`` by COCO's rule at one IoU threshold (see the module docstring)."""
    det_boxes = np.array([d[0] for d in dets], np.float64).reshape(-1, 4)
    gt_boxes = np.array([g[0] for g in gts], np.float64).reshape(-1, 4)
    det_cls = [int(d[1]) for d in dets]
    gt_cls = [int(g[1]) for g in gts]
    crowd = [bool(g[2]) if len(g) > 2 else False for g in gts]
    scores = [float(d[2]) for d in dets]
    ious = box_iou(det_boxes, gt_boxes, np.array(crowd, bool))  # (D, G)
    det_gt, det_iou = [-1] * len(dets), [0.0] * len(dets)
    gt_taken = [-1] * len(gts)
    # Ground truth in COCO's visiting order: non-crowd first, then crowd, each in input order (stable sort).
    gt_order = sorted(range(len(gts)), key=lambda g: crowd[g])
    cap = min(iou_threshold, 1 - 1e-10)
    # A detection with no same-class box at IoU >= cap can match nothing: only the others walk the boxes.
    same = np.array(det_cls)[:, None] == np.array(gt_cls)[None] if dets and gts else np.zeros(ious.shape, bool)
    hopeful = ((ious >= cap) & same).any(1).tolist()
    for d in sorted(range(len(dets)), key=lambda i: -scores[i]):  # stable, as np.argsort(kind="mergesort")
        if not hopeful[d]:
            continue
        best, m = cap, -1
        for g in gt_order:
            if gt_cls[g] != det_cls[d]:
                continue
            if gt_taken[g] >= 0 and not crowd[g]:
                continue
            if m > -1 and not crowd[m] and crowd[g]:  # holds a regular match: crowd boxes come after, stop
                break
            if ious[d, g] < best:
                continue
            best, m = ious[d, g], g
        if m >= 0:
            det_gt[d], det_iou[d] = m, float(ious[d, m])
            gt_taken[m] = d
    areas = (det_boxes[:, 2] - det_boxes[:, 0]) * (det_boxes[:, 3] - det_boxes[:, 1])
    det_ignored = [crowd[g] if g >= 0 else not 0 <= a <= AREA_ALL
                   for g, a in zip(det_gt, areas.tolist(), strict=True)]
    det_tp = [g >= 0 and not crowd[g] for g in det_gt]
    gt_matched_by = [-1 if c else t for t, c in zip(gt_taken, crowd, strict=True)]
    return ImageMatch(det_tp, det_gt, det_iou, det_ignored, gt_matched_by, crowd, scores, float(iou_threshold))


# ----------------------------------------------------------------------------------------------------------
# The whole report: per-image matches while the images stream through, aggregates at the end


def format_value(value: float | None, digits: int = 3) -> str:
    """A metric for display: 3 decimals as COCO prints them; ``None`` (COCO's -1: no ground truth) is "n/a"."""
    return "n/a" if value is None else f"{value:.{digits}f}"


@dataclass
class ImageAnalysis:
    """One image as analysed: its ground truth (xyxy, class id, crowd) and the match of its detections."""

    name: str
    image_id: int | None  # None: not in the annotations (not scored)
    gts: list[tuple[tuple[float, float, float, float], int, bool]]
    match: ImageMatch | None

    def counts(self, score_threshold: float) -> tuple[int, int, int] | None:
        return self.match.counts(score_threshold) if self.match is not None else None

    def to_json(self) -> dict:
        return {"name": self.name, "image_id": self.image_id,
                "gt": [{"box_xyxy": list(b), "class_id": c, "crowd": crowd} for b, c, crowd in self.gts],
                "match": self.match.to_json() if self.match is not None else None}


@dataclass
class ScoreHistogram:
    """Detection scores in equal bins over [0, 1]; ``tp``/``fp`` (at the matching IoU) only with annotations."""

    edges: list[float]
    all: list[int]  # every detection of every image
    tp: list[int] | None = None  # detections of scored images (matched to ground truth, crowd-ignored left out)
    fp: list[int] | None = None

    def to_json(self) -> dict:
        return {"edges": self.edges, "all": self.all, "tp": self.tp, "fp": self.fp}


@dataclass
class Confusion:
    """Counts of (ground-truth class, detected class) over the detections with score >= ``score_threshold``.

    Rows are ground-truth classes then "background" (detections of nothing); columns are detected classes then
    "missed" (ground truth no detection took). A detection that is a true positive at ``iou_threshold`` is on
    the diagonal; a false positive then takes, in descending score order, the remaining non-crowd box of *any*
    class with the highest IoU >= ``iou_threshold`` (off the diagonal) or counts as background. Each box and
    each detection is counted once, so row sums are the ground-truth counts and column sums the detections.
    """

    class_ids: list[int]
    names: list[str]
    matrix: list[list[int]]  # (K + 1, K + 1)
    score_threshold: float
    iou_threshold: float

    def to_json(self) -> dict:
        return {"class_ids": self.class_ids, "row_labels": [*self.names, "background"],
                "col_labels": [*self.names, "missed"], "rows": "ground truth", "cols": "detection",
                "matrix": self.matrix, "score_threshold": self.score_threshold, "iou_threshold": self.iou_threshold}


def _xyxy(det) -> tuple[float, float, float, float]:
    y0, x0, y1, x1 = det.box
    return x0, y0, x1, y1


def confusion_cells(match: ImageMatch, dets: list, gts: list, score_threshold: float) -> list[tuple[object, object]]:
    """One image's (row, column) cells of :class:`Confusion` (class ids, "background", "missed")."""
    keep = [d for d in range(len(dets)) if match.det_scores[d] >= score_threshold and not match.det_ignored[d]]
    taken = {match.det_gt[d] for d in keep if match.det_tp[d]}
    cells: list[tuple[object, object]] = [(gts[match.det_gt[d]][1], dets[d].class_id) for d in keep
                                          if match.det_tp[d]]
    left_gt = [g for g in range(len(gts)) if g not in taken and not gts[g][2]]
    false_pos = sorted((d for d in keep if not match.det_tp[d]), key=lambda d: -match.det_scores[d])
    if false_pos and left_gt:
        ious = box_iou(np.array([_xyxy(dets[d]) for d in false_pos]), np.array([gts[g][0] for g in left_gt]),
                       np.zeros(len(left_gt), bool))
    for i, d in enumerate(false_pos):
        best, m = min(match.iou_threshold, 1 - 1e-10), -1
        for j, g in enumerate(left_gt):
            if g not in taken and ious[i, j] >= best:
                best, m = ious[i, j], g
        if m >= 0:
            taken.add(m)
        cells.append((gts[m][1] if m >= 0 else "background", dets[d].class_id))
    cells += [(gts[g][1], "missed") for g in left_gt if g not in taken]
    return cells


@dataclass
class ReportAnalysis:
    """Everything the page shows besides the pictures; :meth:`to_json` is ``report_metrics.json``'s content."""

    num_images: int
    num_detections: int  # every valid detection (score > 0) of every image: the mAP uses all of them
    score_threshold: float  # the display threshold: confusion matrix and per-image counts
    iou_threshold: float
    class_names: dict[int, str]
    histogram: ScoreHistogram
    images: list[ImageAnalysis]
    coco: CocoSummary | None = None  # None without annotations or without a scored image
    confusion: Confusion | None = None
    unmatched: list[str] = field(default_factory=list)  # images not in the annotations (not scored)
    annotations: str | None = None

    @property
    def metrics(self) -> dict | None:
        """Today's ``ReportResult.metrics`` form: the 12 numbers (-1 where COCO says so), per-class AP, counts."""
        if self.coco is None:
            return None
        stats = {k: (-1.0 if v is None else v) for k, v in self.coco.stats.items()}
        return {**stats, "per_class_ap": {c.name: (float("nan") if c.ap is None else c.ap)
                                          for c in self.coco.per_class},
                "num_images": sum(i.image_id is not None for i in self.images),
                "num_detections": sum(c.num_det for c in self.coco.per_class)}

    def metrics_rows(self) -> list[tuple[str, str, str]]:
        """(key, what it is, value for display) for the 12 COCO numbers; "n/a" where there is no such object."""
        if self.coco is None:
            return []
        return [(k, STAT_LABELS[k], format_value(v)) for k, v in self.coco.stats.items()]

    def per_class_rows(self) -> list[tuple[str, str, str, str, int, int]]:
        """(name, AP, AP50, AP75, GT boxes, detections) for display, best AP first, classes without GT last."""
        if self.coco is None:
            return []
        order = sorted(self.coco.per_class, key=lambda c: (c.ap is None, -(c.ap or 0.0), c.class_id))
        return [(c.name, format_value(c.ap), format_value(c.ap50), format_value(c.ap75), c.num_gt, c.num_det)
                for c in order]

    def to_json(self, per_image: bool = False) -> dict:
        """Full-precision numbers; ``per_image`` adds each image's ground truth and match (large for big sets)."""
        out = {"num_images": self.num_images, "num_detections": self.num_detections,
               "score_threshold": self.score_threshold, "iou_threshold": self.iou_threshold,
               "annotations": self.annotations, "class_names": {str(k): v for k, v in self.class_names.items()},
               "coco": self.coco.to_json() if self.coco else None, "score_histogram": self.histogram.to_json(),
               "confusion": self.confusion.to_json() if self.confusion else None, "unmatched_images": self.unmatched}
        if per_image:
            out["images"] = [i.to_json() for i in self.images]
        return out


class ReportAnalyzer:
    """Streams the report's images: :meth:`process` each (it returns the image's ground truth and matches at
    once, for drawing), then :meth:`finish` for the aggregates. ``annotations``: a COCO instances JSON path, a
    :class:`~spinenet.engine.evaluate.CocoEvaluator` or a pycocotools ``COCO``; images are found in it by
    ``image_id`` when the source knows it, else by base file name (as ``spinenet report`` always has)."""

    def __init__(self, annotations=None, label_map: dict[int, str] | None = None, *, score_threshold: float = 0.3,
                 iou_threshold: float = 0.5, histogram_bins: int = 20):
        self.coco_gt = None
        self.annotations = None
        if annotations is not None:
            from spinenet.engine.evaluate import CocoEvaluator

            if isinstance(annotations, CocoEvaluator):
                self.coco_gt, self.annotations = annotations.coco_gt, str(annotations.annotation_file)
            elif hasattr(annotations, "imgToAnns"):
                self.coco_gt, self.annotations = annotations, "(COCO object)"
            else:  # checked by spinenet.data.coco.load_coco_json: one-line errors naming the file
                self.coco_gt, self.annotations = CocoEvaluator(annotations).coco_gt, str(annotations)
        self.class_names = dict(label_map or {})
        if self.coco_gt is not None:
            self.class_names.update({int(c["id"]): str(c["name"]) for c in self.coco_gt.dataset["categories"]})
            self.ids_by_name = {os.path.basename(str(i["file_name"])): i["id"] for i in self.coco_gt.dataset["images"]}
        self.score_threshold, self.iou_threshold = score_threshold, iou_threshold
        self.bins = histogram_bins
        self.images: list[ImageAnalysis] = []
        self.results: list[dict] = []
        self.num_detections = 0
        self.hist_all = [0] * histogram_bins
        self.hist_tp, self.hist_fp = [0] * histogram_bins, [0] * histogram_bins
        self.cells: dict[tuple[object, object], int] = {}

    def _bin(self, score: float) -> int:
        return min(max(int(score * self.bins), 0), self.bins - 1)

    def process(self, name: str, detections: Sequence, image_id: int | None = None) -> ImageAnalysis:
        """One image: ``detections`` are :class:`spinenet.deploy.report.Detection` (box ymin, xmin, ymax, xmax
        in original pixels, as scored) — every valid one, whatever the display threshold."""
        self.num_detections += len(detections)
        for d in detections:
            self.hist_all[self._bin(d.score)] += 1
        if self.coco_gt is not None and image_id is None:
            image_id = self.ids_by_name.get(name)
        if self.coco_gt is None or image_id is None or image_id not in self.coco_gt.imgs:
            image = ImageAnalysis(name, None, [], None)
            self.images.append(image)
            return image
        gts = [((a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]),
                int(a["category_id"]), bool(a.get("iscrowd", 0))) for a in self.coco_gt.imgToAnns.get(image_id, [])]
        match = match_image([(_xyxy(d), d.class_id, d.score) for d in detections], gts, self.iou_threshold)
        for d, tp, ignored in zip(detections, match.det_tp, match.det_ignored, strict=True):
            if not ignored:
                (self.hist_tp if tp else self.hist_fp)[self._bin(d.score)] += 1
        for cell in confusion_cells(match, list(detections), gts, self.score_threshold):
            self.cells[cell] = self.cells.get(cell, 0) + 1
        for (x0, y0, x1, y1), c, s in ((_xyxy(d), d.class_id, d.score) for d in detections):
            self.results.append({"image_id": image_id, "category_id": c, "bbox": [x0, y0, x1 - x0, y1 - y0],
                                 "score": s})
        image = ImageAnalysis(name, image_id, gts, match)
        self.images.append(image)
        return image

    def finish(self, verbose: bool = False) -> ReportAnalysis:
        """The aggregates: COCO numbers over every detection of the scored images, histogram, confusion matrix."""
        scored = sorted({i.image_id for i in self.images if i.image_id is not None})
        edges = [round(k / self.bins, 10) for k in range(self.bins + 1)]
        annotated = self.coco_gt is not None
        histogram = ScoreHistogram(edges, self.hist_all, self.hist_tp if annotated else None,
                                   self.hist_fp if annotated else None)
        out = ReportAnalysis(len(self.images), self.num_detections, self.score_threshold, self.iou_threshold,
                             self.class_names, histogram, self.images, annotations=self.annotations,
                             unmatched=[i.name for i in self.images if annotated and i.image_id is None])
        if annotated and scored:
            out.coco = coco_evaluate(self.coco_gt, self.results, scored, verbose)
            ids = sorted(self.coco_gt.cats)
            ids += sorted({c for cell in self.cells for c in cell if isinstance(c, int) and c not in self.coco_gt.cats})
            index = {c: k for k, c in enumerate(ids)} | {"background": len(ids), "missed": len(ids)}
            matrix = [[0] * (len(ids) + 1) for _ in range(len(ids) + 1)]
            for (row, col), n in self.cells.items():
                matrix[index[row]][index[col]] += n
            out.confusion = Confusion(ids, [self.class_names.get(c, f"id {c}") for c in ids], matrix,
                                      self.score_threshold, self.iou_threshold)
        return out


def analyze(images: Iterable[tuple], annotations=None, label_map: dict[int, str] | None = None, *,
            score_threshold: float = 0.3, iou_threshold: float = 0.5, verbose: bool = False) -> ReportAnalysis:
    """All of :class:`ReportAnalyzer` at once over ``(name, detections)`` or ``(name, detections, image_id)``."""
    analyzer = ReportAnalyzer(annotations, label_map, score_threshold=score_threshold, iou_threshold=iou_threshold)
    for item in images:
        analyzer.process(*item)
    return analyzer.finish(verbose)


def scored_boxes(boxes: np.ndarray, scale: Sequence[float]) -> np.ndarray:
    """(N, 4) ymin, xmin, ymax, xmax network pixels -> original pixels as ``spinenet evaluate`` scores them.

    ``detections_to_coco`` divides float32 boxes by a float32 scale and does not clip to the image; doing the
    same here (not float64, not clipped) gives the detections it scores to the last bit, so the report's matches
    and mAP are those of ``spinenet evaluate``. Clip only for drawing.
    """
    return (np.asarray(boxes, np.float32) / np.tile(np.asarray(scale, np.float32), 2)).astype(np.float64)
