"""Per-image matching of detections to ground truth, as COCO's evaluator matches them at one IoU threshold.

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

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

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
    for d in sorted(range(len(dets)), key=lambda i: -scores[i]):  # stable, as np.argsort(kind="mergesort")
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
