"""Data loaders for training and evaluation: resumable, sharded over ranks, labelled in the workers.

Training order is a pure function of (seed, epoch): each epoch is a seeded permutation of the dataset, split
over ranks, cut into micro-batches (last partial one dropped, as the reference's ``drop_remainder``). Every
item's augmentation draws from its own generator seeded by (seed, epoch, index), so a resumed run — which
skips the micro-batches already consumed — sees exactly the data an uninterrupted run would, whatever the
number of workers.

Every consumer of randomness here has its own generator (the training sampler, each item's augmentation, the
loaders' worker seeds), and an evaluation during training runs with the global RNG saved and restored around
it, so evaluating — or not — never changes what training draws (stochastic depth uses the global RNG).

Images skipped in the workers come back as :class:`~spinenet.data.coco.SkippedImage` records beside each batch
and are filed into the main process's dataset, so the end-of-run report names each file and its reason.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Sampler

from spinenet.data.checks import check_images_found, warn
from spinenet.data.coco import CocoDetection, collate_detection, skipped_in
from spinenet.engine.distributed import DistInfo
from spinenet.modeling.labeler import LabelerParams, label_batch


@dataclass
class DataPosition:
    batches_consumed: int = 0  # micro-batches taken by the training loop on each rank


class ResumableBatchSampler(Sampler[list[tuple[int, int]]]):
    """Endless micro-batches of ``(index, item_seed)`` for one rank, starting at ``start_batch``."""

    def __init__(self, num_items: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 start_batch: int = 0):
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.rank, self.world_size, self.start_batch = rank, world_size, start_batch
        self.batches_per_epoch = (num_items // world_size) // batch_size
        if self.batches_per_epoch == 0:
            raise ValueError(f"{num_items} training images are fewer than one batch of {batch_size} per rank "
                             f"x {world_size} ranks; lower train.train_batch_size or add images")

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, offset = divmod(self.start_batch, self.batches_per_epoch)
        while True:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(self.num_items, generator=g)[self.rank::self.world_size].tolist()
            for b in range(offset, self.batches_per_epoch):
                idx = order[b * self.batch_size:(b + 1) * self.batch_size]
                yield [(i, (self.seed * 1_000_003 + epoch) * 1_000_033 + i) for i in idx]
            epoch, offset = epoch + 1, 0

    def __len__(self) -> int:  # per epoch; the sampler itself never ends
        return self.batches_per_epoch


class SeededItems(torch.utils.data.Dataset):
    """Index with ``(index, seed)``: the wrapped dataset's item with its augmentation drawn from ``seed``."""

    def __init__(self, dataset: CocoDetection):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        return self.dataset.get(index, generator=torch.Generator().manual_seed(seed))


class TrainCollate:
    """Stack images and label anchors for each image (runs in the loader workers)."""

    def __init__(self, anchors: torch.Tensor, params: LabelerParams):
        self.anchors, self.params = anchors.cpu(), params

    def __call__(self, batch: Sequence):
        skipped = skipped_in(batch)  # unreadable images: sent back by name, filed by TrainLoader
        out = collate_detection(batch)
        if out is None:
            return None, skipped
        images, targets, _ = out
        cls_t, box_t, npos = label_batch([(t["boxes"], t["classes"]) for t in targets], self.anchors, self.params)
        return (images, cls_t, box_t, npos), skipped


class TrainLoader:
    """Iterates ``(images, cls_targets, box_targets, num_positives)``, skipping batches with no usable image."""

    def __init__(self, dataset: CocoDetection, loader: DataLoader, start_batch: int):
        self.dataset, self.loader = dataset, loader
        self.consumed = start_batch  # micro-batches taken so far, counting those of the run being resumed
        self.skipped_loads = 0  # image loads that failed in this process's run (a file counts once per epoch)

    def __iter__(self):
        for batch, skipped in self.loader:
            self.consumed += 1
            self.skipped_loads += len(skipped)
            self.dataset.record_skipped(skipped)
            if batch is not None:
                yield batch

    def position(self) -> DataPosition:
        return DataPosition(batches_consumed=self.consumed)


class EvalLoader:
    """Iterates ``(images, targets, image_info)`` of a DataLoader whose batches carry skip records, filing them."""

    def __init__(self, dataset: CocoDetection, loader: DataLoader):
        self.dataset, self.loader = dataset, loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch, skipped in self.loader:
            self.dataset.record_skipped(skipped)
            yield batch


def check_dataset(dataset: CocoDetection, dist_info: DistInfo) -> None:
    """Refuse a dataset with no image file found; warn (with the count, once: rank 0) when some are missing."""
    message = check_images_found(dataset.ann_file, len(dataset), dataset.count_present(),
                                 f"image folder {dataset.image_dir}")
    if message and dist_info.is_main:
        warn(message)


def build_train_loader(cfg, data: tuple[str, str], micro_batch: int, anchors: torch.Tensor, dist_info: DistInfo,
                       seed: int, num_workers: int, position: DataPosition, pin_memory: bool) -> TrainLoader:
    dataset = CocoDetection.from_config(cfg, data[0], data[1], is_training=True)
    check_dataset(dataset, dist_info)  # with no image at all, every batch would be skipped, forever
    sampler = ResumableBatchSampler(len(dataset), micro_batch, seed, dist_info.rank, dist_info.world_size,
                                    position.batches_consumed)
    p = cfg.retinanet_parser
    collate = TrainCollate(anchors, LabelerParams(p.match_threshold, p.unmatched_threshold))
    # Its own generator: creating the loader's iterator must not draw from the global RNG (stochastic depth).
    loader = DataLoader(SeededItems(dataset), batch_sampler=sampler, collate_fn=collate, num_workers=num_workers,
                        pin_memory=pin_memory, persistent_workers=num_workers > 0,
                        generator=torch.Generator().manual_seed(seed))
    return TrainLoader(dataset, loader, position.batches_consumed)


def build_eval_loader(cfg, data: tuple[str, str], batch_size: int, dist_info: DistInfo, num_workers: int,
                      pin_memory: bool = False) -> EvalLoader:
    """Each rank takes every world_size-th image (no padding, so no image is scored twice)."""
    dataset = CocoDetection.from_config(cfg, data[0], data[1], is_training=False)
    check_dataset(dataset, dist_info)
    shard = list(range(dist_info.rank, len(dataset), dist_info.world_size))
    subset = torch.utils.data.Subset(dataset, shard)
    # Its own generator: iterating a DataLoader draws its workers' base seed, which must not come from (and
    # advance) the global RNG that training's stochastic depth draws from.
    loader = DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=_eval_collate, pin_memory=pin_memory, generator=torch.Generator().manual_seed(0))
    return EvalLoader(dataset, loader)


def _eval_collate(batch):
    out = collate_detection(batch)
    return (out if out is not None else (torch.zeros(0), [], torch.zeros(0, 4, 2))), skipped_in(batch)


@contextlib.contextmanager
def rng_isolated():
    """Run a block (an evaluation during training) without changing any global RNG state training draws from."""
    from spinenet.engine.distributed import rng_state, set_rng_state

    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


def write_skipped_images(dataset: CocoDetection, path: str | os.PathLike) -> Path | None:
    """Write the images a run skipped (file, reason, detail) as JSON, atomically; None (no file) if none were."""
    skipped = dataset.skipped_images()
    if not skipped:
        return None
    from spinenet.io_checks import write_text_atomic

    return write_text_atomic(Path(path), json.dumps({"annotations": str(dataset.ann_file),
                                                     "image_dir": str(dataset.image_dir),
                                                     "skipped_images": skipped}, indent=1))


def skipped_report(train_loader: TrainLoader, eval_loader: EvalLoader | None, model_dir: Path | None) -> str:
    """The end-of-training data report: the training set's (and evaluation set's) skips, each file named with its
    reason wherever it was read; with ``model_dir``, also written to ``skipped_images[_eval].json`` there."""
    gather_skipped(train_loader.dataset)
    if eval_loader is not None:
        gather_skipped(eval_loader.dataset)
    parts = [train_loader.dataset.report()]
    if train_loader.skipped_loads:
        parts.append(f"  ({train_loader.skipped_loads} failed image loads on this rank, counting each epoch)")
    if eval_loader is not None and eval_loader.dataset.skipped_images():
        parts.append(eval_loader.dataset.report())
    if model_dir is not None:
        for name, loader in (("skipped_images.json", train_loader), ("skipped_images_eval.json", eval_loader)):
            path = write_skipped_images(loader.dataset, model_dir / name) if loader is not None else None
            if path is not None:
                parts.append(f"  skipped images listed in {path}")
    return "\n".join(parts)


def gather_skipped(dataset: CocoDetection) -> list[dict[str, str]]:
    """File the skipped images of every rank (each reads its own shard) into this rank's dataset; returns them
    all. Every rank must call it (a collective under torch.distributed); without it, a no-op."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        from spinenet.data.coco import SkippedImage

        parts: list = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(parts, dataset.skipped_images())
        dataset.record_skipped([SkippedImage(s["file_name"], s["reason"], s["detail"]) for p in parts for s in p])
    return dataset.skipped_images()
