"""A synthetic COCO-format detection dataset of drawn shapes, for smoke tests and tiny training runs.

Five shape classes (ids 1..5; colour is random per object, so only the shape identifies the class) on
textured backgrounds (noise, gradients, stripes, checkers). Each object is drawn with PIL from integer
vertices, so its pixels and its geometry agree exactly: the COCO box is the tight box of the visible pixels.
A placement is rejected (and redrawn elsewhere) if it would hide more than half of an earlier object or one
of its extreme pixels, or if the shape is cut by the image border in a way that leaves its clipped geometric
box loose. Output is a pure function of the arguments: the same seed gives byte-identical files.

The dataset is written into a hidden temporary folder inside the output folder and moved into place when
complete, so an interrupted or failed run leaves no partial dataset (and, with ``overwrite``, the old one intact).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from spinenet.io_checks import ensure_writable_dir

__all__ = ["ODD_SIZES", "SHAPE_CLASSES", "OutputNotEmptyError", "SynthObject", "SyntheticDataset",
           "make_synthetic_dataset", "render_image", "synthesize_image"]

SHAPE_CLASSES: dict[int, str] = {1: "circle", 2: "square", 3: "triangle", 4: "star", 5: "cross"}
# (width, height) at image_size 640, scaled with image_size: portrait, landscape, square, very tall.
ODD_SIZES: tuple[tuple[int, int], ...] = ((480, 640), (640, 427), (500, 500), (333, 777))
_SPLIT_CODE = {"train": 0, "val": 1}
_MIN_OBJECT_PX = 6  # smaller shapes are unreadable blobs, whatever the class
_MIN_VISIBLE = 0.5  # an object must keep at least half of its pixels when later objects cover it
_MIN_COLOUR_DIST = 90.0  # RGB distance between an object and its background's mean colour
_PARTIAL_PREFIX = ".synth-partial-"  # the temporary folder a run writes into before moving its files in place


@dataclass
class SynthObject:
    """One drawn object; ``bbox`` is COCO ``[x, y, w, h]`` over pixel edges (pixel i spans [i, i + 1))."""

    category_id: int
    bbox: list[float]
    area: float  # visible pixel count
    colour: tuple[int, int, int]


@dataclass
class SyntheticDataset:
    """What :func:`make_synthetic_dataset` wrote."""

    root: Path
    label_map_file: Path
    splits: dict[str, dict] = field(default_factory=dict)  # split -> {images, annotations, ann_file, image_dir}

    def summary(self) -> str:
        lines = [f"wrote a synthetic shapes dataset to {self.root}"]
        for name, s in self.splits.items():
            lines.append(f"  {name}: {s['images']} images, {s['annotations']} boxes -> {s['ann_file']}")
        lines.append(f"  label map: {self.label_map_file} ({', '.join(SHAPE_CLASSES.values())})")
        return "\n".join(lines)


# --- shapes: integer geometry, drawn the same way into the mask --------------------------------------------


def _rotated(points: list[tuple[float, float]], angle: float, cx: float, cy: float) -> list[tuple[int, int]]:
    c, s = math.cos(angle), math.sin(angle)
    return [(round(cx + x * c - y * s), round(cy + x * s + y * c)) for x, y in points]


def _shape_geometry(cls: int, size: float, cx: float, cy: float, angle: float):
    """('ellipse', [x0, y0, x1, y1]) or ('polygon', [(x, y), ...]) in integer pixels, inclusive extents."""
    r = size / 2.0
    if cls == 1:  # circle
        d = max(2, round(size))
        x0, y0 = round(cx - d / 2), round(cy - d / 2)
        return "ellipse", [x0, y0, x0 + d - 1, y0 + d - 1]
    if cls == 2:  # square, any rotation
        pts = [(-r, -r), (r, -r), (r, r), (-r, r)]
    elif cls == 3:  # equilateral triangle, circumradius chosen so its width is about `size`
        R = size / math.sqrt(3.0)
        pts = [(R * math.cos(a), R * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    elif cls == 4:  # five-pointed star
        pts = [((r if k % 2 == 0 else 0.45 * r) * math.cos(-math.pi / 2 + k * math.pi / 5),
                (r if k % 2 == 0 else 0.45 * r) * math.sin(-math.pi / 2 + k * math.pi / 5)) for k in range(10)]
    elif cls == 5:  # plus sign, arms a third of the size thick
        t = size / 6.0
        pts = [(-t, -r), (t, -r), (t, -t), (r, -t), (r, t), (t, t), (t, r), (-t, r), (-t, t), (-r, t), (-r, -t),
               (-t, -t)]
    else:
        raise ValueError(f"unknown shape class {cls}; valid: {sorted(SHAPE_CLASSES)}")
    return "polygon", _rotated(pts, angle, cx, cy)


def _geometry_box(kind: str, geom, width: int, height: int) -> tuple[int, int, int, int] | None:
    """Inclusive pixel extents (x0, y0, x1, y1) of the geometry clipped to the image; None if outside."""
    if kind == "ellipse":
        x0, y0, x1, y1 = geom
    else:
        xs, ys = [p[0] for p in geom], [p[1] for p in geom]
        x0, y0, x1, y1 = min(xs), min(ys), max(xs), max(ys)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width - 1), min(y1, height - 1)
    return (x0, y0, x1, y1) if x0 <= x1 and y0 <= y1 else None


def _draw_mask(kind: str, geom, width: int, height: int) -> np.ndarray:
    im = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(im)
    (draw.ellipse if kind == "ellipse" else draw.polygon)(geom, fill=1)
    return np.asarray(im, dtype=bool)


def _extents(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])


# --- backgrounds ---------------------------------------------------------------------------------------------


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """(H, W, 3) float32 texture: smooth noise, a gradient, stripes or a checkerboard, plus pixel noise."""
    kind = int(rng.integers(4))
    c0, c1 = rng.uniform(0, 255, 3).astype(np.float32), rng.uniform(0, 255, 3).astype(np.float32)
    yy, xx = np.arange(height, dtype=np.float32)[:, None], np.arange(width, dtype=np.float32)[None, :]
    if kind == 0:  # blotchy noise: a coarse random field upsampled
        cells = rng.uniform(0, 1, (int(rng.integers(3, 12)), int(rng.integers(3, 12)))).astype(np.float32)
        t = np.asarray(Image.fromarray(cells, mode="F").resize((width, height), Image.BILINEAR))
    elif kind == 1:  # linear gradient at a random angle
        a = rng.uniform(0, 2 * math.pi)
        proj = xx * math.cos(a) + yy * math.sin(a)
        t = (proj - proj.min()) / max(float(np.ptp(proj)), 1.0)
    elif kind == 2:  # soft stripes
        a, period = rng.uniform(0, math.pi), rng.uniform(8, 48) * max(width, height) / 640
        t = 0.5 + 0.5 * np.sin(2 * math.pi * (xx * math.cos(a) + yy * math.sin(a)) / max(period, 3.0))
    else:  # checkerboard
        cell = max(2, round(rng.uniform(10, 60) * max(width, height) / 640))
        t = ((xx // cell + yy // cell) % 2).astype(np.float32)
    t = np.broadcast_to(t, (height, width))[..., None] * np.float32(rng.uniform(0.3, 1.0))  # texture contrast
    noise = rng.standard_normal((height, width, 1), dtype=np.float32) * np.float32(rng.uniform(2, 18))
    return c0 + (c1 - c0) * t + noise


def _object_colour(rng: np.random.Generator, bg_mean: np.ndarray) -> tuple[int, int, int]:
    for _ in range(50):
        c = rng.integers(0, 256, 3)
        if np.linalg.norm(c - bg_mean) >= _MIN_COLOUR_DIST:
            break
    return int(c[0]), int(c[1]), int(c[2])


# --- one image -------------------------------------------------------------------------------------------------


def render_image(rng: np.random.Generator, width: int, height: int, max_objects: int = 8,
                 size_range: tuple[float, float] = (0.04, 0.6),
                 tries: int = 30) -> tuple[np.ndarray, list[SynthObject], np.ndarray]:
    """Draw one image: returns (uint8 (H, W, 3) RGB, objects, (H, W) int16 map of object index + 1, 0 = bg).

    Object sizes are log-uniform in ``size_range`` x the short side; 1..max_objects objects are attempted
    (an object with no valid placement after ``tries`` is dropped, rare).
    """
    canvas = _background(rng, width, height)
    bg_mean = canvas[::4, ::4].reshape(-1, 3).mean(axis=0)
    labels = np.zeros((height, width), dtype=np.int16)
    placed: list[tuple[int, tuple[int, int, int, int], int]] = []  # (class, box, full pixel count)
    objects: list[SynthObject] = []
    short = min(width, height)
    lo, hi = math.log(size_range[0] * short), math.log(size_range[1] * short)
    for _ in range(int(rng.integers(1, max_objects + 1))):
        cls = int(rng.integers(1, len(SHAPE_CLASSES) + 1))
        size = max(float(_MIN_OBJECT_PX), math.exp(rng.uniform(lo, hi)))
        angle = rng.uniform(0, 2 * math.pi)
        colour = _object_colour(rng, bg_mean)
        for attempt in range(tries):
            # Mostly anywhere with the centre inside; the last tries keep the shape well inside the image.
            m = 0.3 * size if attempt < tries - 5 else 0.75 * size + 1
            cx = rng.uniform(min(m, width / 2), max(width - m, width / 2))
            cy = rng.uniform(min(m, height / 2), max(height - m, height / 2))
            kind, geom = _shape_geometry(cls, size, cx, cy, angle)
            box = _geometry_box(kind, geom, width, height)
            mask = _draw_mask(kind, geom, width, height)
            if box is None or _extents(mask) != box:  # cut by the border: its clipped box would be loose
                continue
            trial = labels.copy()
            trial[mask] = len(placed) + 1
            if all(_still_visible(trial, j + 1, b, n) for j, (_, b, n) in enumerate(placed) if _overlap(b, box)):
                break
        else:
            continue
        labels = trial
        placed.append((cls, box, int(mask.sum())))
        canvas[mask] = colour
        objects.append(SynthObject(cls, [], 0.0, colour))
    # Boxes and areas once every object is down (later ones may have hidden parts of earlier ones).
    for i, (obj, (_, (x0, y0, x1, y1), _)) in enumerate(zip(objects, placed, strict=True)):
        obj.bbox = [float(x0), float(y0), float(x1 - x0 + 1), float(y1 - y0 + 1)]
        obj.area = float(np.count_nonzero(labels == i + 1))
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8), objects, labels


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def _still_visible(labels: np.ndarray, idx: int, box: tuple[int, int, int, int], full: int) -> bool:
    x0, y0, x1, y1 = box
    own = labels[y0:y1 + 1, x0:x1 + 1] == idx
    return own.sum() >= _MIN_VISIBLE * full and _extents(own) == (0, 0, x1 - x0, y1 - y0)


# --- the dataset -------------------------------------------------------------------------------------------------


def synthesize_image(seed: int, split: str, index: int, image_size: int = 640, *, max_objects: int = 8,
                     size_range: tuple[float, float] = (0.04, 0.6),
                     odd_size_fraction: float = 0.1) -> tuple[np.ndarray, list[SynthObject], np.ndarray]:
    """Image ``index`` of ``split`` exactly as :func:`make_synthetic_dataset` draws it (see render_image).

    Drawn from ``np.random.default_rng([seed, split code, index])``, so it depends on nothing else.
    """
    rng = np.random.default_rng([seed, _SPLIT_CODE[split], index])
    width = height = image_size
    if rng.uniform() < odd_size_fraction:
        w, h = ODD_SIZES[int(rng.integers(len(ODD_SIZES)))]
        width, height = max(16, round(w * image_size / 640)), max(16, round(h * image_size / 640))
    return render_image(rng, width, height, max_objects=max_objects, size_range=size_range)


class OutputNotEmptyError(FileExistsError, ValueError):
    """The output folder holds files or is a file (a ValueError too, so the CLI reports it as a one-line error)."""


def _prepare_output(root: Path, overwrite: bool) -> bool:
    """Check the output folder (before any work) and create it; returns whether it was created."""
    if root.exists() and not root.is_dir():
        raise OutputNotEmptyError(f"output {root} exists and is not a folder; choose a new or empty folder")
    if root.is_dir() and any(not p.name.startswith(_PARTIAL_PREFIX) for p in root.iterdir()) and not overwrite:
        raise OutputNotEmptyError(f"output folder {root} is not empty; choose an empty or new folder, "
                                  "or pass overwrite=True (--overwrite) to replace the dataset files in it")
    created = not root.exists()
    ensure_writable_dir(root, "synth output folder")
    return created


def _install(staging: Path, root: Path) -> None:
    """Move the finished dataset from ``staging`` into ``root``, replacing only what this module writes there
    (anything else the user keeps in the folder, e.g. in annotations/, stays)."""
    for split in _SPLIT_CODE:
        if (staging / split).is_dir():
            if (root / split).is_dir():
                shutil.rmtree(root / split)
            os.replace(staging / split, root / split)
        (root / "annotations" / f"instances_{split}.json").unlink(missing_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    for ann in (staging / "annotations").iterdir():
        os.replace(ann, root / "annotations" / ann.name)
    os.replace(staging / "labels.csv", root / "labels.csv")


def make_synthetic_dataset(output_dir: str | os.PathLike, num_train: int, num_val: int, image_size: int = 640,
                           seed: int = 0, *, max_objects: int = 8, size_range: tuple[float, float] = (0.04, 0.6),
                           odd_size_fraction: float = 0.1, jpeg_quality: int = 90, overwrite: bool = False,
                           progress: bool = True) -> SyntheticDataset:
    """Write ``train/``, ``val/`` (JPEG), ``annotations/instances_{train,val}.json`` and ``labels.csv``.

    Image ``i`` of a split is :func:`synthesize_image` ``(seed, split, i, ...)``, so it does not depend on
    the other split's size or on the order of writing. ``odd_size_fraction`` of the images take one of
    :data:`ODD_SIZES` (scaled by ``image_size / 640``) so letterboxing gets exercised.
    """
    if num_train < 0 or num_val < 0 or num_train + num_val == 0:
        raise ValueError(f"need num_train, num_val >= 0 and at least one image, got {num_train}, {num_val}")
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    if not 0 < size_range[0] <= size_range[1] <= 1:
        raise ValueError(f"size_range must satisfy 0 < min <= max <= 1, got {size_range}")
    root = Path(output_dir)
    created = _prepare_output(root, overwrite)
    staging = Path(tempfile.mkdtemp(prefix=_PARTIAL_PREFIX, dir=root))
    try:
        result = _write_dataset(staging, root, num_train, num_val, image_size, seed, max_objects=max_objects,
                                size_range=size_range, odd_size_fraction=odd_size_fraction,
                                jpeg_quality=jpeg_quality, progress=progress)
        _install(staging, root)
    finally:  # on success only the empty staging folder is left; on an error or Ctrl-C, the partial dataset
        shutil.rmtree(staging, ignore_errors=True)
        if created and root.is_dir() and not any(root.iterdir()):
            root.rmdir()
    return result


def _write_dataset(staging: Path, root: Path, num_train: int, num_val: int, image_size: int, seed: int, *,
                   max_objects: int, size_range: tuple[float, float], odd_size_fraction: float, jpeg_quality: int,
                   progress: bool) -> SyntheticDataset:
    """Write the dataset's files under ``staging``; the result names them where :func:`_install` puts them."""
    categories = [{"id": cid, "name": name, "supercategory": "shape"} for cid, name in SHAPE_CLASSES.items()]
    result = SyntheticDataset(root=root, label_map_file=root / "labels.csv")
    bar = tqdm(total=num_train + num_val, desc="synth", unit="img", disable=not progress)
    for split, count in (("train", num_train), ("val", num_val)):
        image_dir = staging / split
        image_dir.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            pixels, objects, _ = synthesize_image(seed, split, i, image_size, max_objects=max_objects,
                                                  size_range=size_range, odd_size_fraction=odd_size_fraction)
            h, w = pixels.shape[:2]
            image_id, file_name = i + 1, f"{i + 1:012d}.jpg"
            # 4:4:4 (no chroma subsampling): with 4:2:0 the colour of a shape's edge pixels, and of whole
            # small shapes, bleeds into the background, so the box border would no longer show the object.
            Image.fromarray(pixels).save(image_dir / file_name, format="JPEG", quality=jpeg_quality, subsampling=0)
            images.append({"id": image_id, "file_name": file_name, "width": w, "height": h})
            for obj in objects:
                annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                    "category_id": obj.category_id, "bbox": obj.bbox, "area": obj.area,
                                    "iscrowd": 0})
            bar.update(1)
        ann_file = staging / "annotations" / f"instances_{split}.json"
        ann_file.parent.mkdir(parents=True, exist_ok=True)
        doc = {"info": {"description": "spinenet synthetic shapes", "version": "1", "seed": seed,
                        "image_size": image_size},
               "licenses": [], "images": images, "annotations": annotations, "categories": categories}
        ann_file.write_text(json.dumps(doc, separators=(",", ":")), encoding="utf-8")
        result.splits[split] = {"images": len(images), "annotations": len(annotations),
                                "ann_file": root / ann_file.relative_to(staging), "image_dir": root / split}
    bar.close()
    # The reference's label-map format (spec §8): one `id:name` per line, no header.
    (staging / "labels.csv").write_text("".join(f"{c}:{n}\n" for c, n in SHAPE_CLASSES.items()), encoding="utf-8")
    return result
