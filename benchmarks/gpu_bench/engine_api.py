"""Everything this benchmark takes from ``spinenet train``, in one file, so that a change of the trainer's API is
a change here only.

**The step.** ``spinenet.engine.train._train`` runs its step inline, from the pieces of
``spinenet.engine.step``: :class:`EngineTraining` rebuilds it from the very pieces ``_train`` uses, in its order,
and nothing else: ``build_retinanet(cfg)`` moved to the device (channels-last as ``--channels_last``), SGD with
the config's momentum, ``build_schedule(cfg)``'s learning rate set per step, ``_autocast`` (train.py's), the
forward, ``retinanet_loss`` with ``LossParams`` from the config plus ``l2_regularization``, the loss parts and
non-finite flag kept on the device by ``StepMeter`` (read every 10 steps, train.py's default ``--log_every``),
backward, ``clip_grad_norm_`` at ``train.gradient_clip_norm``, ``optimizer.step()`` and ``zero_grad``.

**Labelling.** Today ``spinenet train`` labels anchors in its loader's workers (``TrainCollate`` ->
``label_batch`` on the CPU). torchvision matches anchors inside its forward, so for a fair comparison the timed
step here labels inside the step, on the training device: :meth:`EngineTraining.label` calls the same
``label_batch`` with the loader's ``LabelerParams``, on device tensors. It is the place where the batched
device labeller of issue 13, item 1 goes.

**The loader** is ``build_train_loader`` itself (workers decode, augment and label) over a synthetic COCO set
written by ``spinenet.data.synthetic`` (:func:`synthetic_data`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


def training_override(image_size: int, batch: int, num_classes: int = 91) -> dict:
    """The ``--params_override`` of every training row: the 49S config at ``image_size`` and ``batch``, with
    COCO's 91 classes (the synthetic set uses ids 1..5 of them)."""
    return {"architecture": {"num_classes": num_classes},
            "retinanet_parser": {"output_size": [image_size, image_size]},
            "train": {"train_batch_size": batch}}


def training_config(override: dict):
    """The config ``spinenet train --params_override JSON`` resolves (default config file: the 49S one)."""
    from spinenet.registry import get_config

    return get_config("retinanet_spinenet49s", params_override=json.dumps(override))


def synthetic_data(root: Path, num_images: int, image_size: int, seed: int) -> tuple[str, str]:
    """(annotations, image folder) of a synthetic COCO training set of ``num_images`` JPEGs at
    ``image_size`` (10 % odd sizes, letterboxed by the transform); reused if ``root`` already holds one."""
    ann, images = root / "annotations" / "instances_train.json", root / "train"
    if not ann.is_file():
        from spinenet.data.synthetic import make_synthetic_dataset

        make_synthetic_dataset(root, num_images, 0, image_size=image_size, seed=seed, progress=False)
    return str(ann), str(images)


def dataset_batch(cfg, data: tuple[str, str], batch: int, seed: int):
    """One training batch as the loader's workers make it, before labelling: images (B, 3, S, S) as the loader
    ships them, and per image ``(boxes yxyx in input pixels, classes)``."""
    from spinenet.data.coco import CocoDetection, collate_detection
    from spinenet.engine.data import SeededItems

    items = SeededItems(CocoDetection.from_config(cfg, data[0], data[1], is_training=True))
    if len(items) < batch:
        raise ValueError(f"{data[0]} has {len(items)} images, fewer than one batch of {batch}")
    images, targets, _ = collate_detection([items[(i, seed * 1_000_003 + i)] for i in range(batch)])
    return images, [(t["boxes"], t["classes"]) for t in targets]


def build_loader(cfg, data: tuple[str, str], batch: int, num_workers: int, seed: int, device):
    """``spinenet train``'s loader (one rank): iterates ``(images, cls_targets, box_targets, num_positives)``."""
    from spinenet.engine.data import DataPosition, build_train_loader
    from spinenet.engine.distributed import DistInfo
    from spinenet.modeling.factory import build_retinanet

    anchors = build_retinanet(cfg).anchors(tuple(cfg.retinanet_parser.output_size))  # as _train: CPU anchors
    return build_train_loader(cfg, data, batch, anchors, DistInfo(device=device), seed, num_workers,
                              DataPosition(), device.type == "cuda")


class EngineTraining:
    """The model, optimiser, schedule, loss and step of ``spinenet train`` (single process, no accumulation)."""

    def __init__(self, cfg, device, precision: str, channels_last: bool, seed: int):
        from spinenet.engine.distributed import DistInfo
        from spinenet.engine.schedule import build_schedule
        from spinenet.modeling.factory import build_retinanet
        from spinenet.modeling.labeler import LabelerParams
        from spinenet.modeling.losses import LossParams

        torch.manual_seed(seed)
        self.cfg, self.device, self.precision, self.channels_last = cfg, device, precision, channels_last
        self.log_every, self.meter = 10, None  # train.py's default --log_every: when the loss parts are read
        model = build_retinanet(cfg)
        model.to(device)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=cfg.train.optimizer.momentum)
        self.schedule = build_schedule(cfg)
        r = cfg.retinanet_loss
        self.loss_params = LossParams(r.focal_loss_alpha, r.focal_loss_gamma, r.huber_loss_delta, r.box_loss_weight)
        p = cfg.retinanet_parser
        self.labeler_params = LabelerParams(p.match_threshold, p.unmatched_threshold)
        self.anchors = model.anchors(tuple(p.output_size), device)
        self.dist_info = DistInfo(device=device)
        self.step_count = 0
        model.train()

    def label(self, gts: list[tuple[torch.Tensor, torch.Tensor]]):
        """Anchor targets on the training device (the switch point for a batched device labeller)."""
        from spinenet.modeling.labeler import label_batch

        dev = self.device
        gts = [(b.to(dev, non_blocking=True), c.to(dev, non_blocking=True)) for b, c in gts]
        return label_batch(gts, self.anchors, self.labeler_params)

    def step(self, images, cls_t, box_t, npos) -> torch.Tensor:
        """train.py's loop body for one micro-batch with ``accum_steps`` 1; returns the total loss (detached).

        As train.py: the loss parts and the non-finite flag stay on the device (:class:`StepMeter`), read only
        every ``log_every`` steps, so the step itself has no host sync."""
        from spinenet.engine.step import StepMeter
        from spinenet.engine.train import _autocast
        from spinenet.modeling.losses import l2_regularization, retinanet_loss

        cfg, dev, model = self.cfg, self.device, self.model
        if self.meter is None:
            self.meter = StepMeter(dev)
        lr = self.schedule(self.step_count)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        images = images.to(dev, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with _autocast(dev, self.precision):
            cls_out, box_out = model(images)
        losses = retinanet_loss(cls_out, box_out, cls_t.to(dev), box_t.to(dev), npos.to(dev), self.loss_params,
                                model.num_classes)
        l2 = l2_regularization(model, cfg.train.l2_weight_decay)
        total = losses["total_loss"] + l2
        self.meter.add(total, losses["cls_loss"], losses["box_loss"], l2, 1)
        total.backward()
        if cfg.train.gradient_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.gradient_clip_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.meter.end_step(self.step_count)
        self.step_count += 1
        if self.step_count % self.log_every == 0:  # train.py's read: raises NonFiniteLossError for a bad step
            self.last_parts = list(self.meter.read().values())
        return total.detach()

    def own_bytes(self) -> int:
        """Weights and buffers, plus SGD's momentum buffers (one per parameter)."""
        from .timing import module_bytes

        return module_bytes(self.model) + sum(p.numel() * p.element_size() for p in self.model.parameters())
