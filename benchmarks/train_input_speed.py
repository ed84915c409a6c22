"""Training input speed: images/s per data-worker core, the CPU path against the device path, in one run.

    python benchmarks/train_input_speed.py [--images 64] [--batch 8] [--rounds 3] [--device_threads N]

Data: ``--images`` COCO-like JPEGs written to a temporary folder, 640x480 (one in four 480x640), a smooth random
texture with noise (quality 90, ~100-200 KB each, about COCO's), 1-15 boxes each, and the 49S recipe's parser:
640x640 output, flip, scale jitter 0.5-2.0, match / unmatched 0.5.

Rows (each timed in this one process with one intra-op thread, so CPU seconds are one core's):

- *CPU path, worker*: what one loader worker does per batch on ``--input_pipeline cpu`` — decode (PIL),
  ``TrainTransform`` (normalise, flip, legacy resize of the whole jittered image, crop, pad) and
  ``label_batch`` — and the bytes it ships per image (float32 image + int64 / float32 targets);
- *device path, worker*: decode + draws + box moves + padding into a uint8 batch (``RawItems`` + ``collate_raw``),
  and the bytes it ships;
- *device path, device part*: ``DeviceAugment`` on the batch (crop-window resize, normalisation, padding, padded
  labelling) — here on the CPU with ``--device_threads`` threads; on a GPU this runs on the accelerator.

Images/s per core = images / CPU seconds of the process (``time.process_time``), median over ``--rounds``
passes over the data; wall-clock rates are printed beside them (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from spinenet.config import load_config
from spinenet.data.coco import CocoDetection
from spinenet.data.device_augment import resize_crop_batch
from spinenet.engine.data import SeededItems, TrainCollate
from spinenet.engine.device_input import DeviceAugment, RawItems, collate_raw
from spinenet.modeling.anchors import Anchors
from spinenet.modeling.labeler import LabelerParams, label_padded_batch
from spinenet.registry import config_path


def write_dataset(root: Path, count: int, seed: int = 0) -> tuple[str, str]:
    """``count`` COCO-like JPEGs and their instances JSON under ``root``; returns (annotations, image folder)."""
    rng = np.random.default_rng(seed)
    images_dir = root / "images"
    images_dir.mkdir(parents=True)
    images, annotations = [], []
    for i in range(count):
        h, w = (640, 480) if i % 4 == 3 else (480, 640)
        coarse = rng.uniform(0, 255, (h // 16 + 1, w // 16 + 1, 3)).astype(np.float32)
        smooth = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((w, h), Image.BICUBIC), np.float32)
        pixels = np.clip(smooth + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
        name = f"{i:06d}.jpg"
        Image.fromarray(pixels).save(images_dir / name, quality=90)
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h})
        for _ in range(int(rng.integers(1, 16))):
            bw, bh = rng.uniform(8, w * 0.6), rng.uniform(8, h * 0.6)
            x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(rng.integers(1, 91)),
                                "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": 0})
    categories = [{"id": c, "name": f"c{c}"} for c in range(1, 91)]
    doc = {"images": images, "annotations": annotations, "categories": categories}
    ann = root / "instances.json"
    ann.write_text(json.dumps(doc))
    return str(ann), str(images_dir)


def nbytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (tuple, list)):
        return sum(nbytes(o) for o in obj)
    return 0


def timed(fn, rounds: int) -> tuple[float, float, list]:
    """Median CPU seconds and wall seconds of ``fn()`` over ``rounds`` runs, and the last run's result."""
    cpu, wall, out = [], [], None
    for _ in range(rounds):
        c0, w0 = time.process_time(), time.perf_counter()
        out = fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return statistics.median(cpu), statistics.median(wall), out


def lscpu() -> tuple[str, str]:
    from spinenet.deploy.benchmark import lscpu_fields

    fields = lscpu_fields()
    if not fields:
        return platform.processor() or "unknown", ""
    model = fields.get("Model name", "unknown")
    flags = fields.get("Flags", "").split()
    wanted = [f for f in flags if f.startswith(("avx", "fma", "sse4", "amx"))]
    return model, " ".join(wanted)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device_threads", type=int, default=1, help="intra-op threads for the device part (CPU)")
    args = ap.parse_args()

    model, flags = lscpu()
    print(f"CPU: {model}; flags: {flags}")
    print(f"torch {torch.__version__}; {args.images} images, batch {args.batch}, median of {args.rounds} rounds")
    cfg = load_config(config_path("retinanet_spinenet49s"))  # 640x640, flip, jitter 0.5-2.0
    p = cfg.retinanet_parser
    params = LabelerParams(p.match_threshold, p.unmatched_threshold)
    anchors = Anchors(tuple(p.output_size), cfg.architecture.min_level, cfg.architecture.max_level,
                      cfg.anchor.num_scales, tuple(cfg.anchor.aspect_ratios), cfg.anchor.anchor_size).boxes
    with tempfile.TemporaryDirectory(prefix="train_input_speed_") as tmp:
        ann, folder = write_dataset(Path(tmp), args.images)
        kb = sum(f.stat().st_size for f in Path(folder).iterdir()) / args.images / 1024
        dataset = CocoDetection.from_config(cfg, ann, folder, is_training=True)
        print(f"{p.output_size[0]}x{p.output_size[1]}, scale {p.aug_scale_min}-{p.aug_scale_max}, flip "
              f"{p.aug_rand_hflip}; JPEG {kb:.0f} KB on average, {len(dataset.records[0].boxes)}+ boxes")
        keys = [[(i, 1000 + i) for i in range(s, min(s + args.batch, args.images))]
                for s in range(0, args.images, args.batch)]
        old_items, old_collate = SeededItems(dataset), TrainCollate(anchors, params)
        new_items = RawItems(dataset)
        augment = DeviceAugment(dataset.transform, anchors, params)

        torch.set_num_threads(1)
        old = timed(lambda: [old_collate([old_items[k] for k in b]) for b in keys], args.rounds)
        new = timed(lambda: [collate_raw([new_items[k] for k in b]) for b in keys], args.rounds)
        decode = timed(lambda: [dataset.read_image(i) for i in range(args.images)], args.rounds)
        raws = [r for r, _ in new[2]]
        torch.set_num_threads(args.device_threads)
        dev = timed(lambda: [augment(r) for r in raws], args.rounds)
        size, padded = dataset.transform.output_size, dataset.transform.padded_size
        dev_images = timed(lambda: [resize_crop_batch(r.images, r.geometry, size, padded) for r in raws], args.rounds)
        dev_labels = timed(lambda: [label_padded_batch(r.boxes, r.classes, anchors, params) for r in raws], args.rounds)
        # The device path's batches are the CPU path's (tests/data/test_device_augment.py); checked here too.
        same = all(all(torch.equal(a, b) for a, b in zip(o[0], d, strict=True))
                   for o, d in zip(old[2], dev[2], strict=True))

    n = args.images
    old_bytes, new_bytes = nbytes([o[0] for o in old[2]]) / n, nbytes(raws) / n
    rows = [("decode only (PIL), for scale", decode, None),
            ("CPU path, worker: decode + TrainTransform + label", old, old_bytes),
            ("device path, worker: decode + draws + uint8 batch", new, new_bytes),
            (f"device path, device part on CPU ({args.device_threads} thr)", dev, None),
            ("  of which flip + jitter + crop-window resize + pad", dev_images, None),
            ("  of which padded-batch anchor labelling", dev_labels, None)]
    print(f"\n| {'row':<58} | img/s per core | img/s wall | ms/img (CPU) | shipped/img |")
    print(f"|{'-' * 60}|---------------:|-----------:|-------------:|------------:|")
    for name, (cpu, wall, _), shipped in rows:
        ship = f"{shipped / 1e6:.2f} MB" if shipped is not None else "-"
        print(f"| {name:<58} | {n / cpu:14.1f} | {n / wall:10.1f} | {1000 * cpu / n:12.2f} | {ship:>11} |")
    print(f"\nworker images/s per core: device path / CPU path = {old[0] / new[0]:.2f}x "
          f"({n / new[0]:.1f} vs {n / old[0]:.1f}); target >= 60 per core: {'met' if n / new[0] >= 60 else 'NOT met'}")
    print(f"bytes shipped per image: {old_bytes / new_bytes:.1f}x fewer; device part batches equal the CPU path's: "
          f"{same}")


if __name__ == "__main__":
    main()
