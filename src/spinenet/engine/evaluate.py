"""COCO box evaluation (reference ``evaluation/coco_evaluator.py``): detections -> COCO results -> pycocotools.

An evaluator follows the reset / process / evaluate protocol, so training-time evaluation, ``spinenet evaluate``
and the deployment report all read one stream of predictions and print the same numbers.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def detections_to_coco(detections: dict[str, torch.Tensor], image_info: torch.Tensor,
                       image_ids: Iterable[int]) -> list[dict]:
    """Padded detections (boxes yxyx in resized-input pixels) -> COCO result dicts in original-image pixels.

    As the reference: boxes are divided by ``image_info[:, 2]`` (the resize scale, *not* row 1), converted to
    ``[x, y, w, h]`` with no +1, and ``category_id`` is the detection class itself.
    """
    boxes = detections["detection_boxes"].detach().float().cpu()
    scores = detections["detection_scores"].detach().float().cpu()
    classes = detections["detection_classes"].detach().cpu()
    scale = image_info[:, 2, :].detach().float().cpu()  # (B, 2) y_scale, x_scale
    out = []
    for b, image_id in enumerate(image_ids):
        valid = scores[b] > 0
        yxyx = boxes[b][valid] / scale[b].repeat(2)  # (n, 4) original pixels
        for (y0, x0, y1, x1), s, c in zip(yxyx.tolist(), scores[b][valid].tolist(), classes[b][valid].tolist(),
                                           strict=True):
            out.append({"image_id": int(image_id), "category_id": int(c), "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "score": float(s)})
    return out


class CocoEvaluator:
    """Accumulates COCO results for one ground-truth file and scores them with pycocotools."""

    def __init__(self, annotation_file: str | os.PathLike):
        from pycocotools.coco import COCO

        from spinenet.data.coco import load_coco_json

        self.annotation_file = Path(annotation_file)
        # Checked first (missing keys, a truncated file: one line naming the file), then indexed as pycocotools
        # would have read it.
        doc = load_coco_json(self.annotation_file)
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints "creating index..."
            self.coco_gt = COCO()
            self.coco_gt.dataset = doc
            self.coco_gt.createIndex()
        self.reset()

    def label_map(self) -> dict[int, str]:
        """Category id -> name of the ground truth."""
        return {int(c["id"]): str(c["name"]) for c in self.coco_gt.dataset["categories"]}

    def reset(self) -> None:
        self.results: list[dict] = []
        self.image_ids: set[int] = set()

    def process(self, detections: dict[str, torch.Tensor], image_info: torch.Tensor, image_ids: list[int]) -> None:
        self.results.extend(detections_to_coco(detections, image_info, image_ids))
        self.image_ids.update(int(i) for i in image_ids)

    def gather(self) -> None:
        """Merge the results of all ranks on rank 0, the only one that runs COCOeval (no-op without
        torch.distributed); the other ranks are left with none."""
        if not _distributed():
            return
        main = torch.distributed.get_rank() == 0
        parts: list | None = [None] * torch.distributed.get_world_size() if main else None
        torch.distributed.gather_object((self.results, sorted(self.image_ids)), parts, dst=0)
        if main:
            self.results = [r for res, _ in parts for r in res]
            self.image_ids = {i for _, ids in parts for i in ids}
        else:
            self.reset()

    def write_results(self, path: str | os.PathLike) -> Path:
        from spinenet.io_checks import write_text_atomic

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_text_atomic(path, json.dumps(self.results))

    def evaluate(self, verbose: bool = True) -> dict:
        """The 12-number summary (AP, AP50, …, ARl) and per-class AP, over the images processed."""
        from pycocotools.cocoeval import COCOeval

        image_ids = sorted(self.image_ids)
        if not self.results:
            stats = dict.fromkeys(STAT_NAMES, 0.0)
            return {**stats, "per_class_ap": {}, "num_images": len(image_ids), "num_detections": 0}
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            coco_dt = self.coco_gt.loadRes(self.results)
            ev = COCOeval(self.coco_gt, coco_dt, iouType="bbox")
            ev.params.imgIds = image_ids
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        if verbose:
            print(buf.getvalue().split("DONE", 1)[-1].split("\n", 1)[-1].rstrip())
        stats = {name: float(v) for name, v in zip(STAT_NAMES, ev.stats, strict=True)}
        # precision: [T=10 IoUs, R=101 recalls, K classes, A=4 areas, M=3 max dets]; area all, 100 dets.
        precision = ev.eval["precision"][:, :, :, 0, -1]
        per_class = {}
        for k, cat_id in enumerate(ev.params.catIds):
            p = precision[:, :, k]
            valid = p[p > -1]
            per_class[self.coco_gt.cats[cat_id]["name"]] = float(np.mean(valid)) if valid.size else float("nan")
        return {**stats, "per_class_ap": per_class, "num_images": len(image_ids),
                "num_detections": len(self.results)}


@torch.no_grad()
def run_evaluation(model: torch.nn.Module, loader, evaluator: CocoEvaluator, device: torch.device | str = "cpu",
                   progress: bool = True) -> dict:
    """Detect over ``loader`` (batches of images, targets, image_info) and score with ``evaluator``."""
    from tqdm import tqdm

    was_training = model.training
    model.eval()
    evaluator.reset()
    detector = model.module if hasattr(model, "module") else model
    for images, targets, image_info in tqdm(loader, desc="evaluate", disable=not progress, leave=False):
        if not targets:  # every image of the batch was unreadable (counted by the dataset)
            continue
        images, image_info = images.to(device), image_info.to(device)
        dets = detector.detect(images, image_info)
        evaluator.process(dets, image_info, [t["image_id"] for t in targets])
    evaluator.gather()
    model.train(was_training)
    if not _distributed():
        return evaluator.evaluate(verbose=progress)
    # COCOeval (seconds to minutes of single-threaded Python on COCO) on rank 0 only; the others wait in the
    # broadcast and return the same metrics, so every rank's summary agrees.
    box = [evaluator.evaluate(verbose=progress) if torch.distributed.get_rank() == 0 else None]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def evaluate_checkpoint(checkpoint: str | os.PathLike, val_data: tuple[str, str], *, output: str | None = None,
                        batch_size: int = 8, device: str | None = "auto", num_workers: int = 2,
                        progress: bool = True) -> dict:
    """``spinenet evaluate``: COCO metrics of a checkpoint; writes ``results.json`` and ``metrics.json``.

    Checked before the work: the output folder is writable, the annotations are well-formed and some of their
    images exist (none: an error; some: a warning with the count), and the checkpoint's label map matches the
    annotations' categories (a warning showing both when not). Images skipped while reading (in any worker) are
    named in the printed report and listed under ``skipped_images`` in ``metrics.json``.
    """
    from spinenet.data.checks import label_map_difference, warn
    from spinenet.engine.checkpoint import checkpoint_config, load_model
    from spinenet.engine.data import build_eval_loader, gather_skipped
    from spinenet.engine.distributed import init_distributed
    from spinenet.io_checks import ensure_writable_dir, strict_json, write_text_atomic

    dist_info = init_distributed(device)
    out = Path(output) if output else Path(checkpoint).with_suffix("").parent / f"eval_{Path(checkpoint).stem}"
    if dist_info.is_main:
        ensure_writable_dir(out, "evaluation output folder")
    model, ckpt = load_model(checkpoint, map_location=dist_info.device)
    cfg = checkpoint_config(ckpt, str(checkpoint))
    evaluator = CocoEvaluator(val_data[0])
    loader = build_eval_loader(cfg, val_data, batch_size, dist_info, num_workers)
    difference = label_map_difference({int(k): v for k, v in ckpt.get("label_map", {}).items()},
                                      evaluator.label_map(), f"checkpoint {checkpoint}", f"{val_data[0]}")
    if difference and dist_info.is_main:
        warn(difference)
    metrics = run_evaluation(model, loader, evaluator, dist_info.device, progress=progress)
    skipped = gather_skipped(loader.dataset)
    if dist_info.is_main:
        evaluator.write_results(out / "results.json")
        write_text_atomic(out / "metrics.json", json.dumps(strict_json({**metrics, "skipped_images": skipped}),
                                                                indent=1, allow_nan=False))
        print(format_per_class(metrics["per_class_ap"]))
        if any(loader.dataset.stats()["skipped"].values()):
            print(loader.dataset.report())
        print(f"COCO results: {out / 'results.json'}; metrics: {out / 'metrics.json'}")
    return metrics


def format_per_class(per_class: dict[str, float]) -> str:
    width = max((len(n) for n in per_class), default=5)
    lines = [f"{'class'.ljust(width)}  AP"]
    lines += [f"{name.ljust(width)}  {ap:.4f}" for name, ap in per_class.items()]
    return "\n".join(lines)
