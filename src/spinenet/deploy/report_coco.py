"""The report's COCO numbers from one pycocotools run: the 12-number summary, per-class AP and PR curves.

Everything is read from ``COCOeval`` itself (pycocotools 2.0.11 ``cocoeval.py``): ``stats`` for the summary,
where ``summarize`` writes -1 for "no ground truth of that size" (shown as "n/a", kept as ``None`` here), and
``eval['precision']`` — shape (T=10 IoUs, R=101 recall thresholds, K classes, A=4 areas, M=3 maxDets), -1 for a
class without ground truth — for per-class AP (mean over the valid entries, as ``summarize`` averages) and for
the precision–recall curves at area "all", maxDets 100 (COCO's interpolated precision: the running maximum
from the right, sampled at recall 0, 0.01, ..., 1).
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import numpy as np

# What each number of COCOeval.summarize() is (its own print format, shortened), in the order of
# spinenet.engine.evaluate.STAT_NAMES (not imported here: that module loads torch, which plotting does not need).
STAT_LABELS = {"AP": "AP @[IoU=.50:.95]", "AP50": "AP @[IoU=.50]", "AP75": "AP @[IoU=.75]",
               "APs": "AP small", "APm": "AP medium", "APl": "AP large",
               "AR1": "AR maxDets=1", "AR10": "AR maxDets=10", "AR100": "AR maxDets=100",
               "ARs": "AR small", "ARm": "AR medium", "ARl": "AR large"}
PR_IOUS = (0.5, 0.75)  # the curves drawn; both are entries of COCO's iouThrs


@dataclass
class ClassAP:
    class_id: int
    name: str
    ap: float | None  # AP@[.5:.95]; None: no ground truth of the class in the scored images
    ap50: float | None
    ap75: float | None
    num_gt: int  # non-crowd ground-truth boxes in the scored images
    num_det: int  # detections of the class in the scored images (every score)

    def to_json(self) -> dict:
        return {"class_id": self.class_id, "name": self.name, "AP": self.ap, "AP50": self.ap50, "AP75": self.ap75,
                "num_gt": self.num_gt, "num_det": self.num_det}


@dataclass
class CocoSummary:
    stats: dict[str, float | None]  # STAT_NAMES -> value, None where COCO says -1
    per_class: list[ClassAP]
    recall: list[float]  # COCO's 101 recall thresholds
    pr: dict[float, dict[int, list[float]]]  # IoU -> class id -> precision at each recall (classes with GT)
    pr_all: dict[float, list[float] | None]  # IoU -> mean over those classes at each recall (None: no GT)

    def to_json(self) -> dict:
        return {"stats": self.stats, "per_class": [c.to_json() for c in self.per_class], "recall": self.recall,
                "pr": {str(t): {"all": self.pr_all[t], "per_class": {str(k): v for k, v in curves.items()}}
                       for t, curves in self.pr.items()}}


def _mean_valid(values: np.ndarray) -> float | None:
    valid = values[values > -1]
    return float(np.mean(valid)) if valid.size else None


def coco_evaluate(coco_gt, results: list[dict], image_ids: list[int], verbose: bool = False) -> CocoSummary:
    """Score ``results`` (COCO result dicts, bbox xywh) on ``image_ids`` of ``coco_gt`` (a pycocotools COCO).

    No results at all is scored too (AP 0 where there is ground truth), not refused as ``loadRes([])`` would.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        if results:
            coco_dt = coco_gt.loadRes([dict(r) for r in results])  # loadRes adds keys: keep the caller's intact
        else:
            coco_dt = COCO()
            coco_dt.dataset = {"images": list(coco_gt.dataset["images"]), "annotations": [],
                               "categories": list(coco_gt.dataset["categories"])}
            coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.params.imgIds = sorted(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    if verbose:
        print(buf.getvalue().split("DONE", 1)[-1].split("\n", 1)[-1].rstrip())
    stats = {name: (None if v == -1 else float(v)) for name, v in zip(STAT_LABELS, ev.stats, strict=True)}
    p = ev.params
    precision = ev.eval["precision"][:, :, :, p.areaRngLbl.index("all"), p.maxDets.index(100)]  # (T, R, K)
    t_index = {t: int(np.where(p.iouThrs == t)[0][0]) for t in PR_IOUS}  # as summarize() finds .5 and .75
    ids = set(image_ids)
    num_gt = dict.fromkeys(p.catIds, 0)
    for a in coco_gt.dataset["annotations"]:
        if a["image_id"] in ids and not a.get("iscrowd", 0) and a["category_id"] in num_gt:
            num_gt[a["category_id"]] += 1
    num_det = dict.fromkeys(p.catIds, 0)
    for r in results:
        if r["category_id"] in num_det:
            num_det[r["category_id"]] += 1
    per_class, pr = [], {t: {} for t in PR_IOUS}
    for k, cat_id in enumerate(p.catIds):
        block = precision[:, :, k]
        per_class.append(ClassAP(int(cat_id), str(coco_gt.cats[cat_id]["name"]), _mean_valid(block),
                                 _mean_valid(block[t_index[0.5]]), _mean_valid(block[t_index[0.75]]),
                                 num_gt[cat_id], num_det[cat_id]))
        for t in PR_IOUS:
            curve = block[t_index[t]]
            if np.all(curve > -1):
                pr[t][int(cat_id)] = curve.tolist()
    pr_all = {}
    for t in PR_IOUS:
        curves = precision[t_index[t]]  # (R, K)
        valid = curves > -1
        pr_all[t] = (np.where(valid, curves, 0).sum(1) / valid.sum(1)).tolist() if valid.any() else None
    return CocoSummary(stats, per_class, [float(r) for r in p.recThrs], pr, pr_all)
