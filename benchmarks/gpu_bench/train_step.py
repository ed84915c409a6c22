"""Training rows: ``spinenet train``'s own step and loader (through :mod:`.engine_api`) against torchvision's
training step, on the same batch of the same synthetic COCO set (:func:`prepare`).

* **train, spinenet** (done-when): the batch as the loader ships it (host memory, pinned on CUDA), then inside
  the timed call: anchor labelling on the device, and train.py's step (copy to the device, forward, loss, L2,
  the finite check, backward, clip, SGD).
* **train, torchvision** (done-when): its reference step; the copy to the device and anchor matching (inside
  its forward) are timed, as ours.
* **loader, spinenet** (done-when's diagnosis): ``build_train_loader`` itself with ``--num_workers`` workers
  (decode, the reference augmentation, labelling in the workers), after its prefetch queue is drained:
  images/s, and per worker. Below the step's images/s, ``spinenet train`` is input-bound.
* **train, spinenet, labels made outside the step** (optional): what today's trainer's device sees when its
  loader keeps up (labels made by the workers).
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path

import torch

from . import engine_api
from .peers import TorchvisionTraining


@dataclass
class TrainingSetup:
    override: dict
    cfg: object
    data: tuple[str, str]
    images: torch.Tensor  # (B, 3, S, S) as the loader ships them
    gts: list  # per image (boxes yxyx, classes)


def prepare(args, device, data_root: Path) -> TrainingSetup:
    """The synthetic set (written once), the config ``spinenet train`` resolves, and one batch of it."""
    override = engine_api.training_override(args.image_size, args.train_batch)
    cfg = engine_api.training_config(override)
    data = engine_api.synthetic_data(data_root, args.num_images, args.image_size, args.seed)
    images, gts = engine_api.dataset_batch(cfg, data, args.train_batch, args.seed)
    if device.type == "cuda":
        images = images.pin_memory()
        gts = [(b.pin_memory(), c.pin_memory()) for b, c in gts]
    return TrainingSetup(override, cfg, data, images, gts)


def _loss(out) -> dict:
    return {"loss": float(out)}


def _free(device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def spinenet_step_row(bench, setup: TrainingSetup, *, labels_in_step: bool = True) -> None:
    args, dev = bench.args, bench.device
    label = "labels made inside the step (device)" if labels_in_step else "labels made outside the step"
    if not bench.fits(f"spinenet train step, {label}", 20.0):
        return
    eng = engine_api.EngineTraining(setup.cfg, dev, args.train_precision, args.train_channels_last, args.seed)
    try:
        if labels_in_step:
            def run():
                return eng.step(setup.images, *eng.label(setup.gts))
        else:
            with torch.no_grad():
                targets = eng.label(setup.gts)

            def run():
                return eng.step(setup.images, *targets)

        layout = "channels-last" if args.train_channels_last else "contiguous"
        bench.measure(run, model="spinenet", what="train",
                      variant=f"spinenet train's step ({label}; {layout}; train.py's host syncs)",
                      batch=args.train_batch, precision=args.train_precision, own_bytes=eng.own_bytes(),
                      warmup=args.train_warmup, iters=args.train_steps, check=_loss, min_left_s=20.0,
                      max_s=max(args.max_row_s, 8.0), labels_in_step=labels_in_step)
    finally:
        eng = None  # the closures above hold the name, not the object
        _free(dev)


def torchvision_inputs(setup: TrainingSetup):
    """The same batch for torchvision: images in [0, 1] (its transform normalises), boxes xyxy, labels int64."""
    from spinenet.data.transforms import IMAGE_MEAN, IMAGE_STD

    mean = torch.tensor(IMAGE_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(3, 1, 1)
    images = [(im.float() * std + mean).clamp_(0.0, 1.0) for im in setup.images]
    targets = [{"boxes": b[:, [1, 0, 3, 2]].float(), "labels": c.long()} for b, c in setup.gts]
    if setup.images.is_pinned():
        images = [im.pin_memory() for im in images]
        targets = [{k: v.pin_memory() for k, v in t.items()} for t in targets]
    return images, targets


def torchvision_step_row(bench, setup: TrainingSetup) -> None:
    args, dev = bench.args, bench.device
    if not bench.fits("torchvision train step", 20.0):
        return
    tv = TorchvisionTraining(args.image_size, dev, args.train_precision, args.train_channels_last, args.seed)
    images, targets = torchvision_inputs(setup)
    try:
        bench.measure(lambda: tv.step(images, targets), model="torchvision", what="train",
                      variant=f"reference step, anchor matching inside its forward; SGD momentum 0.9, wd 1e-4; "
                              f"{tv.description}", batch=args.train_batch, precision=args.train_precision,
                      own_bytes=tv.own_bytes(), warmup=args.train_warmup, iters=args.train_steps, check=_loss,
                      min_left_s=20.0, max_s=max(args.max_row_s, 8.0), labels_in_step=True)
    finally:
        tv = None
        _free(dev)


def loader_row(bench, setup: TrainingSetup) -> None:
    args, dev = bench.args, bench.device
    workers = args.num_workers
    if not bench.fits(f"spinenet train loader, {workers} workers", 15.0):
        return
    loader = engine_api.build_loader(setup.cfg, setup.data, args.train_batch, workers, args.seed, dev)
    batches = iter(loader)
    try:
        # Drain what the workers prefetched while idle (2 batches each), so that the timed calls see production.
        row = bench.measure(lambda: next(batches), model="spinenet", what="loader",
                            variant=f"build_train_loader, {workers} workers (decode, augment, label in them)",
                            batch=args.train_batch, precision="-", own_bytes=0, warmup=2 * workers + 1,
                            iters=args.loader_batches, min_left_s=15.0, max_s=max(args.max_row_s, 10.0),
                            memory="host",
                            check=_shipped, num_workers=workers)
        if row and "images_per_s" in row:
            row["images_per_s_per_worker"] = round(row["images_per_s"] / max(workers, 1), 2)
            bench.write()
    finally:
        batches = loader = None
        _free(dev)


def _shipped(out) -> dict:
    """What the loader ships per image (the issue measured 6.8 MB: float32 images, int64 class targets)."""
    images = out[0]
    return {"image_dtype": str(images.dtype).replace("torch.", ""),
            "mb_per_image": round(sum(t.numel() * t.element_size() for t in out) / len(images) / 1e6, 2)}
