"""A COCO-format detection dataset that feeds the reference's RetinaNet pipeline (spec §5.1-§5.2).

Annotations are filtered once, when the dataset is built, as the reference's TFRecord writer
(``tools/datasets/create_coco_tf_record.py``) does: COCO ``category_id`` is used directly as the class
(no contiguous remapping); boxes with w or h <= 0, or reaching past the image, are dropped; boxes are stored
normalised by the JSON's width/height. Crowd boxes are dropped in training (``skip_crowd_during_training``).
Images that are missing, unreadable or of another size than the JSON says are skipped when first read:
``__getitem__`` returns a :class:`SkippedImage` (file, reason, detail), :func:`collate_detection` drops it, a
warning is logged once per file, and :meth:`CocoDetection.stats` / :meth:`CocoDetection.report` say what was
skipped and where. In DataLoader workers the skips happen in the workers' copies of the dataset, so the record
travels with the batch and the main process files it with :meth:`CocoDetection.record_skipped`: the final
report then names every skipped file, whichever process read it.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import Dataset

from spinenet.data.transforms import EvalTransform, TrainTransform

if TYPE_CHECKING:
    from spinenet.config import ExperimentConfig

__all__ = ["CocoDetection", "SkippedImage", "collate_detection", "load_coco_json", "skipped_in"]

logger = logging.getLogger(__name__)

_REQUIRED = {"images": ("id", "file_name", "width", "height"),
             "annotations": ("image_id", "category_id", "bbox"),
             "categories": ("id", "name")}

# Why an annotation or an image was left out; the keys of stats()["skipped"].
SKIP_REASONS = {
    "degenerate_box": "box with w or h <= 0 (or not finite), or entirely outside the image",
    "out_of_bounds_box": "box reaching past the image border (dropped, as the reference's TFRecord writer)",
    "crowd": "iscrowd=1 annotation in training mode",
    "unknown_category": "category_id not listed in 'categories'",
    "unknown_image": "annotation whose image_id is not in 'images'",
    "missing_image": "image file not found",
    "corrupt_image": "image file could not be decoded",
    "size_mismatch": "decoded image size differs from the JSON's width/height",
}


@dataclass(frozen=True)
class SkippedImage:
    """An item that could not be used: what a worker sends back instead of ``(image, target)``."""

    file_name: str
    reason: str  # a key of SKIP_REASONS
    detail: str


# Not a skip: the image was used, but in its stored orientation, because that is what the JSON describes.
_EXIF_IGNORED = "exif_ignored"


def load_coco_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read and shape-check a COCO instances file; errors name the file and what is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {path} not found")
    try:
        # utf-8-sig: a UTF-8 byte-order mark (some Windows editors write one) is accepted, not an error.
        doc = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a valid JSON file, truncated or damaged ({e}); re-export or re-download "
                         "it") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a valid JSON file: not UTF-8 text ({e.reason} at byte {e.start}); "
                         "JSON must be UTF-8") from e
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a COCO instances object with keys {list(_REQUIRED)}, "
                         f"got a JSON {type(doc).__name__}")
    missing = [k for k in _REQUIRED if k not in doc]
    if missing:
        raise ValueError(f"{path}: not a COCO instances file: missing key(s) {missing} "
                         f"(needs {list(_REQUIRED)})")
    for key, fields in _REQUIRED.items():
        if not isinstance(doc[key], list):
            raise ValueError(f"{path}: '{key}' must be a list, got {type(doc[key]).__name__}")
        for i, entry in enumerate(doc[key]):
            lacking = [f for f in fields if f not in entry] if isinstance(entry, dict) else list(fields)
            if lacking:
                raise ValueError(f"{path}: {key}[{i}] lacks {lacking} (each entry needs {list(fields)})")
    for i, ann in enumerate(doc["annotations"]):
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            raise ValueError(f"{path}: annotations[{i}].bbox must be [x, y, w, h] numbers, got {bbox!r}")
    return doc


@dataclass
class _Record:
    image_id: int
    file_name: str
    width: int
    height: int
    boxes: np.ndarray  # (G, 4) float32 normalised yxyx, as the reference's tf.Example
    classes: np.ndarray  # (G,) int64 category ids
    is_crowd: np.ndarray  # (G,) bool


class CocoDetection(Dataset):
    """COCO instances JSON + image folder -> ``(image, target)`` through a Train/EvalTransform.

    Each item is ``(image (3, Hp, Wp) float32, target)`` with target keys ``boxes`` (G, 4) yxyx pixels in the
    network-input frame, ``classes`` (G,) long, ``is_crowd`` (G,) bool (all False in training), ``image_info``
    (4, 2), ``image_id`` int, ``orig_size`` (H, W) and ``file_name``; or None for an image that could not be
    used (see :meth:`stats`). Class ids are the JSON's category ids; ``num_classes`` defaults to max id + 1.

    Image-level skips are found when an image is read, so in DataLoader worker processes they are counted
    in the workers' copies (each logs a warning); call :meth:`validate` to scan every image up front.
    """

    def __init__(self, ann_file: str | os.PathLike, image_dir: str | os.PathLike,
                 transform: TrainTransform | EvalTransform | None = None, *, is_training: bool = False,
                 skip_crowd: bool = True, num_classes: int | None = None) -> None:
        self.ann_file, self.image_dir = Path(ann_file), Path(image_dir)
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"image folder {self.image_dir} not found (for {self.ann_file})")
        self.is_training = is_training
        self.transform = transform if transform is not None else (TrainTransform() if is_training
                                                                  else EvalTransform())
        doc = load_coco_json(self.ann_file)
        self._categories = {int(c["id"]): str(c["name"]) for c in doc["categories"]}
        max_id = max(self._categories, default=0)
        if num_classes is None:
            num_classes = max_id + 1
        elif max_id >= num_classes:
            raise ValueError(f"{self.ann_file}: category id {max_id} needs num_classes >= {max_id + 1} "
                             f"(ids are used directly as class indices), got num_classes={num_classes}")
        self.num_classes = num_classes
        # reason -> {key: detail}; keys make repeated reads (epochs) count once.
        self._skips: dict[str, dict[Any, str]] = {r: {} for r in [*SKIP_REASONS, _EXIF_IGNORED]}
        self._num_annotations = len(doc["annotations"])
        self.records = self._build_records(doc, is_training and skip_crowd)

    # --- index ------------------------------------------------------------------------------------------------

    def _build_records(self, doc: dict[str, Any], drop_crowd: bool) -> list[_Record]:
        images: dict[int, dict] = {}
        for img in doc["images"]:
            iid = int(img["id"])
            if iid in images:
                raise ValueError(f"{self.ann_file}: image id {iid} appears twice "
                                 f"({images[iid]['file_name']!r} and {img['file_name']!r})")
            images[iid] = img
        per_image: dict[int, list[tuple[list[float], int, bool]]] = {iid: [] for iid in images}
        for ann in doc["annotations"]:
            key = (ann.get("id"), str(ann["image_id"]))
            img = images.get(int(ann["image_id"]))
            if img is None:
                self._skip("unknown_image", key, f"annotation {ann.get('id')}: image_id {ann['image_id']}")
                continue
            reason = _box_problem(ann["bbox"], float(img["width"]), float(img["height"]))
            if not reason and int(ann["category_id"]) not in self._categories:
                reason = "unknown_category"
            if not reason and drop_crowd and ann.get("iscrowd", 0):
                reason = "crowd"
            if reason:
                self._skip(reason, key, f"{img['file_name']} (annotation {ann.get('id')}): bbox {ann['bbox']}, "
                                        f"category_id {ann['category_id']}")
            else:
                per_image[int(img["id"])].append((ann["bbox"], int(ann["category_id"]), bool(ann.get("iscrowd", 0))))
        records = []
        for iid, img in images.items():
            anns = per_image[iid]
            w, h = float(img["width"]), float(img["height"])
            # As create_coco_tf_record: [y / h, x / w, (y + bh) / h, (x + bw) / w], stored as float32.
            boxes = np.array([[y / h, x / w, (y + bh) / h, (x + bw) / w] for (x, y, bw, bh), _, _ in anns],
                             dtype=np.float32).reshape(-1, 4)
            records.append(_Record(iid, str(img["file_name"]), int(img["width"]), int(img["height"]), boxes,
                                   np.array([c for _, c, _ in anns], dtype=np.int64),
                                   np.array([z for _, _, z in anns], dtype=bool)))
        return records

    def _skip(self, reason: str, key: Any, detail: str) -> None:
        self._skips[reason][key] = detail

    # --- items ------------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Any]] | SkippedImage:
        return self.get(index)

    def get(self, index: int, generator: torch.Generator | None = None
            ) -> tuple[Tensor, dict[str, Any]] | SkippedImage:
        """Item ``index`` with the training augmentation drawn from ``generator`` (default: torch's global RNG),
        or a :class:`SkippedImage` saying why the image could not be used."""
        rec = self.records[index]
        pixels = self._read_image(rec)
        if isinstance(pixels, SkippedImage):
            return pixels
        out = self.transform(torch.from_numpy(pixels), torch.from_numpy(rec.boxes), torch.from_numpy(rec.classes),
                             generator=generator)
        target = {"boxes": out.boxes, "classes": out.classes, "is_crowd": torch.from_numpy(rec.is_crowd)[out.keep],
                  "image_info": out.image_info, "image_id": rec.image_id, "orig_size": (rec.height, rec.width),
                  "file_name": rec.file_name}
        return out.image, target

    def read_image(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | SkippedImage:
        """Item ``index`` decoded but not transformed: ``(pixels (H, W, 3) uint8 RGB, boxes (G, 4) normalised
        yxyx, classes (G,))`` — what the device input path's workers ship — or a :class:`SkippedImage`."""
        rec = self.records[index]
        pixels = self._read_image(rec)
        return pixels if isinstance(pixels, SkippedImage) else (pixels, rec.boxes, rec.classes)

    def _read_image(self, rec: _Record) -> np.ndarray | SkippedImage:
        """(H, W, 3) uint8 RGB, EXIF orientation applied; a SkippedImage (recorded and logged) if unusable."""
        path = self.image_dir / rec.file_name
        if not path.is_file():
            return self._image_skipped("missing_image", rec, str(path))
        expected = (rec.width, rec.height)
        try:
            with Image.open(path) as im:
                oriented = ImageOps.exif_transpose(im)
                if oriented.size == expected:
                    chosen = oriented
                elif im.size == expected:
                    # The JSON describes the stored pixels (as the reference, whose decoder ignores EXIF).
                    self._skips[_EXIF_IGNORED][rec.file_name] = f"{path}: EXIF orientation ignored"
                    chosen = im
                else:
                    return self._image_skipped("size_mismatch", rec,
                                               f"{path}: decoded {im.size[0]}x{im.size[1]} (w x h), JSON says "
                                               f"{rec.width}x{rec.height}")
                if chosen.mode == "P":  # palette (+ transparency): via RGBA, as PIL recommends
                    chosen = chosen.convert("RGBA")
                return np.array(chosen.convert("RGB"))  # grayscale / alpha / CMYK -> RGB; a writable copy
        except Exception as e:  # noqa: BLE001 - PIL raises many types for bad files; one bad file must not end a run
            return self._image_skipped("corrupt_image", rec, f"{path}: {type(e).__name__}: {e}")

    def _image_skipped(self, reason: str, rec: _Record, detail: str) -> SkippedImage:
        if rec.file_name not in self._skips[reason]:
            logger.warning("skipping image %s (%s): %s", rec.file_name, SKIP_REASONS[reason], detail)
        self._skips[reason][rec.file_name] = detail
        return SkippedImage(rec.file_name, reason, detail)

    def record_skipped(self, skipped: Sequence[SkippedImage]) -> None:
        """File skips found in another process (a DataLoader worker's copy), so that :meth:`stats` and
        :meth:`report` name them; a file skipped again (another epoch, another worker) counts once."""
        for s in skipped:
            self._skips.setdefault(s.reason, {})[s.file_name] = s.detail

    def skipped_images(self) -> list[dict[str, str]]:
        """Every image left out so far: ``{"file_name", "reason", "detail"}``, in file-name order."""
        image_reasons = ("missing_image", "corrupt_image", "size_mismatch")
        return sorted(({"file_name": f, "reason": r, "detail": d} for r in image_reasons
                       for f, d in self._skips[r].items()), key=lambda s: (s["file_name"], s["reason"]))

    def count_present(self) -> int:
        """How many of the listed images exist as files in the image folder (a stat each, no decoding)."""
        return sum((self.image_dir / rec.file_name).is_file() for rec in self.records)

    def validate(self) -> dict[str, Any]:
        """Decode every image once (slow on a large set) so :meth:`stats` covers them all; returns stats()."""
        for rec in self.records:
            self._read_image(rec)
        return self.stats()

    # --- reporting --------------------------------------------------------------------------------------------

    def label_map(self) -> dict[int, str]:
        """Category id -> name, from the JSON's ``categories``."""
        return dict(sorted(self._categories.items()))

    def stats(self) -> dict[str, Any]:
        """Counts of everything left out, and the files or annotations concerned (detail strings)."""
        skipped = {r: len(v) for r, v in self._skips.items() if r != _EXIF_IGNORED}
        return {"images": len(self.records), "annotations": self._num_annotations,
                "annotations_kept": sum(len(r.classes) for r in self.records),
                "skipped": skipped, "exif_ignored": len(self._skips[_EXIF_IGNORED]),
                "details": {r: list(v.values()) for r, v in self._skips.items() if v}}

    def report(self, max_lines: int = 10) -> str:
        """A human-readable summary of :meth:`stats` (at most ``max_lines`` examples per reason)."""
        s = self.stats()
        lines = [f"{self.ann_file}: {s['images']} images, {s['annotations_kept']} of {s['annotations']} "
                 f"annotations kept"]
        images = self.skipped_images()
        if images:
            shown = ", ".join(f"{i['file_name']} ({i['reason']})" for i in images[:max_lines])
            lines.append(f"  {len(images)} image(s) skipped: {shown}" + (" ..." if len(images) > max_lines else ""))
        for reason, details in s["details"].items():
            what = SKIP_REASONS.get(reason, "image used without EXIF rotation (JSON matches the stored pixels)")
            lines.append(f"  {len(details)} x {reason}: {what}")
            lines += [f"    {d}" for d in details[:max_lines]]
            if len(details) > max_lines:
                lines.append(f"    ... and {len(details) - max_lines} more")
        return "\n".join(lines)

    @classmethod
    def from_config(cls, cfg: ExperimentConfig, ann_file: str | os.PathLike, image_dir: str | os.PathLike,
                    is_training: bool) -> CocoDetection:
        """The reference's parser settings: Train/EvalTransform, crowd skipping and num_classes from ``cfg``."""
        transform = TrainTransform.from_config(cfg) if is_training else EvalTransform.from_config(cfg)
        return cls(ann_file, image_dir, transform, is_training=is_training,
                   skip_crowd=cfg.retinanet_parser.skip_crowd_during_training,
                   num_classes=cfg.architecture.num_classes)


def _box_problem(bbox: Sequence[float], width: float, height: float) -> str | None:
    x, y, w, h = (float(v) for v in bbox)
    if not (w > 0 and h > 0) or not (math.isfinite(x) and math.isfinite(y)):  # `not >` also catches NaN
        return "degenerate_box"
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
        return "degenerate_box"
    if x + w > width or y + h > height:
        return "out_of_bounds_box"
    return None


def skipped_in(batch: Sequence[Any]) -> list[SkippedImage]:
    """The skip records of a batch (to send back from the workers beside the collated batch)."""
    return [b for b in batch if isinstance(b, SkippedImage)]


def collate_detection(batch: Sequence[tuple[Tensor, dict[str, Any]] | SkippedImage | None]
                      ) -> tuple[Tensor, list[dict[str, Any]], Tensor] | None:
    """Stack a batch, dropping skipped items (SkippedImage or None): images (B, 3, Hp, Wp), targets,
    image_info (B, 4, 2).

    Returns None when every item was skipped; the training loop should move on to the next batch.
    """
    items = [b for b in batch if b is not None and not isinstance(b, SkippedImage)]
    if not items:
        return None
    images = torch.stack([im for im, _ in items])
    targets = [t for _, t in items]
    return images, targets, torch.stack([t["image_info"] for t in targets])
