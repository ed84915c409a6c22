"""The training input path that scales with cores: workers read and decode, the training device does the rest.

``--input_pipeline device``: each loader worker decodes its images and draws the augmentation (flip, scale,
crop offset, from the item's own generator seeded by (seed, epoch, index), exactly as the CPU path), moves the
boxes, and ships **uint8** pixels with a (B, 7) geometry and padded boxes/classes
(:class:`RawBatch`, ~1.2 MB per 640x480 image instead of 6.8 MB of float32 + int64). On the training device,
:class:`DeviceAugment` makes the network input of the whole batch (:func:`~spinenet.data.device_augment.
resize_crop_batch`: only the crop window's pixels, normalised and padded) and labels every anchor of every image
at once (:func:`~spinenet.modeling.labeler.label_padded_batch`), giving the same tensors as the CPU path
(``--input_pipeline cpu``), tested bit for bit on the CPU.

On CUDA the next batch is copied (from pinned memory) and prepared on a side stream while the current one
trains; on the CPU it is prepared when it is taken. Either way the data position (micro-batches consumed, which
a checkpoint records for an exact resume) counts only the batches handed to the training loop, never one
prepared ahead, and a batch's skipped images are filed when it is handed over.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from spinenet.data.coco import CocoDetection, SkippedImage, skipped_in
from spinenet.data.device_augment import plan_train_item, resize_crop_batch
from spinenet.data.transforms import TrainTransform
from spinenet.engine.data import DataPosition, ResumableBatchSampler, TrainLoader, build_train_loader, check_dataset
from spinenet.engine.distributed import DistInfo
from spinenet.modeling.labeler import LabelerParams, label_padded_batch

INPUT_PIPELINES = ("auto", "device", "cpu")


def default_num_workers() -> int:
    """Loader workers per rank when not given: min(8, CPU cores) (decoding is the workers' only job)."""
    return min(8, os.cpu_count() or 1)


def resolve_pipeline(pipeline: str, device: torch.device) -> str:
    """``auto`` -> ``device`` on CUDA; on the CPU, ``cpu`` (the workers' path: there the device *is* the
    workers' CPU, and augmenting in the workers overlaps with the step instead of running inside it)."""
    if pipeline not in INPUT_PIPELINES:
        raise ValueError(f"input pipeline {pipeline!r} is unknown; valid: {', '.join(INPUT_PIPELINES)}")
    if pipeline == "auto":
        return "device" if device.type == "cuda" else "cpu"
    return pipeline


class RawBatch(NamedTuple):
    images: Tensor  # (B, Hmax, Wmax, 3) uint8, each image at the top-left
    geometry: Tensor  # (B, 7) int64, spinenet.data.device_augment.GEOMETRY_FIELDS
    boxes: Tensor  # (B, Gmax, 4) float32 network-input pixels; padding rows zero
    classes: Tensor  # (B, Gmax) int64; padding rows -1

    def to(self, device: torch.device, non_blocking: bool = False) -> RawBatch:
        return RawBatch(*(t.to(device, non_blocking=non_blocking) for t in self))


class RawItems(torch.utils.data.Dataset):
    """Index with ``(index, seed)``: the decoded image and its augmentation plan drawn from ``seed``."""

    def __init__(self, dataset: CocoDetection):
        if not isinstance(dataset.transform, TrainTransform):
            raise ValueError("the device input path needs a training dataset (TrainTransform)")
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        item = self.dataset.read_image(index)
        if isinstance(item, SkippedImage):
            return item
        pixels, boxes, classes = item
        h, w = pixels.shape[:2]
        plan = plan_train_item(self.dataset.transform, h, w, torch.from_numpy(boxes), torch.from_numpy(classes),
                               generator=torch.Generator().manual_seed(seed))
        return torch.from_numpy(pixels), plan


def collate_raw(batch: Sequence) -> tuple[RawBatch | None, list[SkippedImage]]:
    """Pad a batch of ``(pixels, plan)`` into one :class:`RawBatch` (runs in the workers)."""
    skipped = skipped_in(batch)
    items = [b for b in batch if not isinstance(b, SkippedImage) and b is not None]
    if not items:
        return None, skipped
    h = max(p.shape[0] for p, _ in items)
    w = max(p.shape[1] for p, _ in items)
    g = max(plan.boxes.shape[0] for _, plan in items)
    images = torch.zeros(len(items), h, w, 3, dtype=torch.uint8)
    boxes = torch.zeros(len(items), g, 4, dtype=torch.float32)
    classes = torch.full((len(items), g), -1, dtype=torch.long)
    for i, (pixels, plan) in enumerate(items):
        images[i, :pixels.shape[0], :pixels.shape[1]] = pixels
        boxes[i, :plan.boxes.shape[0]] = plan.boxes
        classes[i, :plan.classes.shape[0]] = plan.classes
    geometry = torch.stack([plan.geometry for _, plan in items])
    return RawBatch(images, geometry, boxes, classes), skipped


class DeviceAugment:
    """RawBatch (on the device) -> ``(images, cls_targets, box_targets, num_positives)``, as TrainCollate's."""

    def __init__(self, transform: TrainTransform, anchors: Tensor, params: LabelerParams, channels_last: bool = False):
        self.desired, self.padded = transform.output_size, transform.padded_size
        self.anchors, self.params, self.channels_last = anchors, params, channels_last

    def __call__(self, raw: RawBatch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        anchors = self.anchors.to(raw.images.device)
        images = resize_crop_batch(raw.images, raw.geometry, self.desired, self.padded, self.channels_last)
        cls_t, box_t, npos = label_padded_batch(raw.boxes, raw.classes, anchors, self.params)
        return images, cls_t, box_t, npos


class DeviceTrainLoader(TrainLoader):
    """:class:`TrainLoader` whose batches are finished on ``device`` (one prepared ahead on a CUDA side stream)."""

    def __init__(self, dataset: CocoDetection, loader: DataLoader, start_batch: int, augment: DeviceAugment,
                 device: torch.device):
        super().__init__(dataset, loader, start_batch)
        self.augment, self.device = augment, device
        augment.anchors = augment.anchors.to(device)
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.ahead = 1 if self.stream is not None else 0  # batches prepared before the current one is handed over

    def _stage(self, raw: RawBatch):
        if self.stream is None:
            return self.augment(raw.to(self.device))
        self.stream.wait_stream(torch.cuda.current_stream(self.device))  # the anchors and constants are ready
        with torch.cuda.stream(self.stream):
            out = self.augment(raw.to(self.device, non_blocking=True))
            done = torch.cuda.Event()
            done.record(self.stream)
        return out, done

    def _finish(self, staged):
        if self.stream is None:
            return staged
        out, done = staged
        current = torch.cuda.current_stream(self.device)
        current.wait_event(done)
        for t in out:  # made on the side stream, used (and freed) on the training stream
            t.record_stream(current)
        return out

    def __iter__(self):
        pulled, skipped_since = self.consumed, []
        pending = None  # (pull count, skip records up to it, staged batch): prepared ahead on CUDA only
        for raw, skipped in self.loader:
            pulled += 1
            skipped_since.extend(skipped)
            if raw is None:
                continue
            staged = (pulled, skipped_since, self._stage(raw))
            skipped_since = []
            if not self.ahead:
                yield self._hand_over(*staged)
                continue
            if pending is not None:
                yield self._hand_over(*pending)
            pending = staged
        if pending is not None:  # the loader never ends (endless sampler); kept for completeness
            yield self._hand_over(*pending)

    def _hand_over(self, pulled: int, skipped: list[SkippedImage], staged):
        self.consumed = pulled
        self.skipped_loads += len(skipped)
        self.dataset.record_skipped(skipped)
        return self._finish(staged)


def build_train_input(cfg, data: tuple[str, str], micro_batch: int, anchors: Tensor, dist_info: DistInfo, seed: int,
                      num_workers: int | None, position: DataPosition, device: torch.device,
                      pipeline: str = "auto", channels_last: bool = False) -> TrainLoader:
    """The training loader for ``pipeline`` (:data:`INPUT_PIPELINES`): batches of ``(images, cls_targets,
    box_targets, num_positives)``, on ``device`` for the device path, on the host (pinned on CUDA) for the CPU
    path; identical values either way."""
    num_workers = default_num_workers() if num_workers is None else num_workers
    if resolve_pipeline(pipeline, device) == "cpu":
        return build_train_loader(cfg, data, micro_batch, anchors, dist_info, seed, num_workers, position,
                                  pin_memory=device.type == "cuda")
    dataset = CocoDetection.from_config(cfg, data[0], data[1], is_training=True)
    check_dataset(dataset, dist_info)  # with no image at all, every batch would be skipped, forever
    sampler = ResumableBatchSampler(len(dataset), micro_batch, seed, dist_info.rank, dist_info.world_size,
                                    position.batches_consumed)
    p = cfg.retinanet_parser
    # Its own generator: creating the loader's iterator must not draw from the global RNG (stochastic depth).
    loader = DataLoader(RawItems(dataset), batch_sampler=sampler, collate_fn=collate_raw, num_workers=num_workers,
                        pin_memory=device.type == "cuda", persistent_workers=num_workers > 0,
                        generator=torch.Generator().manual_seed(seed))
    augment = DeviceAugment(dataset.transform, anchors.detach(), LabelerParams(p.match_threshold,
                                                                               p.unmatched_threshold), channels_last)
    return DeviceTrainLoader(dataset, loader, position.batches_consumed, augment, device)
