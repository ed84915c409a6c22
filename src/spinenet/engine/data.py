"""Data loaders for training and evaluation: resumable, sharded over ranks, labelled in the workers.

Training order is a pure function of (seed, epoch): each epoch is a seeded permutation of the dataset, split
over ranks, cut into micro-batches (last partial one dropped, as the reference's ``drop_remainder``). Every
item's augmentation draws from its own generator seeded by (seed, epoch, index), so a resumed run — which
skips the micro-batches already consumed — sees exactly the data an uninterrupted run would, whatever the
number of workers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Sampler

from spinenet.data.coco import CocoDetection, collate_detection
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
        skipped = sum(item is None for item in batch)  # unreadable images: counted here, logged by the dataset
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
        self.skipped_images = 0  # in this process's run (worker processes keep their own dataset copies)

    def __iter__(self):
        for batch, skipped in self.loader:
            self.consumed += 1
            self.skipped_images += skipped
            if batch is not None:
                yield batch

    def position(self) -> DataPosition:
        return DataPosition(batches_consumed=self.consumed)


def build_train_loader(cfg, data: tuple[str, str], micro_batch: int, anchors: torch.Tensor, dist_info: DistInfo,
                       seed: int, num_workers: int, position: DataPosition, pin_memory: bool) -> TrainLoader:
    dataset = CocoDetection.from_config(cfg, data[0], data[1], is_training=True)
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
                      pin_memory: bool = False) -> DataLoader:
    """Each rank takes every world_size-th image (no padding, so no image is scored twice)."""
    dataset = CocoDetection.from_config(cfg, data[0], data[1], is_training=False)
    shard = list(range(dist_info.rank, len(dataset), dist_info.world_size))
    subset = torch.utils.data.Subset(dataset, shard)
    subset.report, subset.stats = dataset.report, dataset.stats  # type: ignore[attr-defined]
    return DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      collate_fn=_drop_empty(collate_detection), pin_memory=pin_memory)


def _drop_empty(collate):
    def wrapped(batch):
        out = collate(batch)
        return out if out is not None else (torch.zeros(0), [], torch.zeros(0, 4, 2))
    return wrapped
