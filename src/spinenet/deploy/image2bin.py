"""``spinenet image2bin``: images -> msame input files, letterboxed to the model input (the seed's step 3).

The seed's ``image2bin.py`` wrote raw decoded pixels, so only 640x640 JPEGs matched the OM input. Here each
image is decoded (EXIF orientation applied; grayscale, palette and alpha converted to RGB), resized keeping
its aspect ratio exactly as the reference's eval/serving pre-processing does (``resize_and_crop_image``: scale
= min(H_t/h, W_t/w), size rounded, legacy TF bilinear), padded bottom/right, and written as ``NNNNN.bin``
(uint8 NHWC ``[1, H, W, 3]``, exactly H·W·3 bytes, no header) in sorted glob order, with ``manifest.json``
recording each image's source, original size and scale so ``spinenet report`` maps boxes back exactly.

Padding uses the dataset mean colour (round(255·mean)): the graph normalises its uint8 input, and the reference
pads *after* normalising (with 0 = the mean), so this keeps the padded area what the model was trained on.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from spinenet.data.transforms import resize_bilinear_legacy
from spinenet.deploy.file_patterns import describe, match_files
from spinenet.io_checks import ensure_writable_dir

MEAN_RGB_UINT8 = (124, 116, 104)  # round(255 * (0.485, 0.456, 0.406))
MANIFEST = "manifest.json"


@dataclass
class Image2BinResult:
    output_dir: Path
    written: list[dict] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def summary(self) -> str:
        lines = [f"wrote {len(self.written)} input files to {self.output_dir} (+ {MANIFEST})"]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} file(s):")
            lines += [f"  {path}: {reason}" for path, reason in self.skipped]
        return "\n".join(lines)


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """(H, W, 3) uint8 RGB with EXIF orientation applied; raises ValueError naming the file if unreadable."""
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode == "P":  # palette (+ transparency): via RGBA, as PIL recommends
                im = im.convert("RGBA")
            # Alpha is dropped (not composited) exactly as CocoDetection does, so `spinenet evaluate` and the
            # deployed chain see the same pixels.
            return np.array(im.convert("RGB"))
    except Exception as e:  # noqa: BLE001 - PIL raises many types; the caller counts and names the file
        raise ValueError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e


def letterbox(pixels: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, tuple[float, float], tuple[int, int]]:
    """Resize (H, W, 3) uint8 into ``size`` keeping the aspect ratio, pad bottom/right with the mean colour.

    Returns the padded image, the per-axis scale (resized / original, image_info row 2) and the resized size.
    """
    h, w = pixels.shape[:2]
    th, tw = size
    scale = min(th / h, tw / w)
    rh, rw = int(round(h * scale)), int(round(w * scale))
    x = torch.from_numpy(pixels).permute(2, 0, 1).float()  # (3, h, w)
    resized = resize_bilinear_legacy(x, (rh, rw)) if (rh, rw) != (h, w) else x
    out = np.empty((th, tw, 3), dtype=np.uint8)
    out[:] = MEAN_RGB_UINT8
    out[:rh, :rw] = resized.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    return out, (rh / h, rw / w), (rh, rw)


def parse_size(value: str | int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    if isinstance(value, tuple):
        return value
    parts = [int(p) for p in str(value).replace("x", ",").split(",") if p.strip()]
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) <= 0:
        raise ValueError(f"image size {value!r}: expected N or H,W with positive integers")
    return parts[0], parts[1]


def image2bin(image_file_pattern: str | Sequence[str], output_dir: str | os.PathLike, image_size: str | int = 640,
              *, overwrite: bool = False, progress: bool = True) -> Image2BinResult:
    """Convert the images matching ``image_file_pattern`` (one glob or several, brace lists expanded: see
    :mod:`spinenet.deploy.file_patterns`; sorted together) into ``output_dir``; see the module docstring."""
    from tqdm import tqdm

    size = parse_size(image_size)
    out = Path(output_dir)
    paths = match_files(image_file_pattern)
    if not paths:
        raise FileNotFoundError(f"no files match --image_file_pattern {describe(image_file_pattern)}")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output_dir {out} is a file")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"--output_dir {out} already holds files; choose an empty folder or pass --overwrite "
                         "(which replaces its NNNNN.bin files and manifest.json and leaves other files alone)")
    # Before the work: the set is built in a temporary folder beside --output_dir, then moved into it.
    ensure_writable_dir(out.parent, f"the folder of --output_dir {out},")
    if out.is_dir():
        ensure_writable_dir(out, "--output_dir")
    result = Image2BinResult(out)
    # Everything goes to a temporary folder first, so a failure never leaves a half-written set behind.
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for path in tqdm(paths, desc="image2bin", unit="img", disable=not progress or len(paths) < 20):
            try:
                pixels = load_rgb(path)
            except ValueError as e:
                result.skipped.append((path, str(e).split(": ", 1)[-1]))
                continue
            padded, scale, resized = letterbox(pixels, size)
            index = len(result.written)
            name = f"{index:05d}.bin"
            padded[None].tofile(tmp / name)  # (1, H, W, 3) uint8, NHWC
            result.written.append({"index": index, "bin": name, "source": str(Path(path).resolve()),
                                   "original_size": list(pixels.shape[:2]), "scale": list(scale),
                                   "resized_size": list(resized)})
        if not result.written:
            raise ValueError(f"none of the {len(paths)} files matching {describe(image_file_pattern)} is a "
                             "readable image")
        manifest = {"image_size": list(size), "layout": "NHWC uint8 RGB [1, H, W, 3]",
                    "pad_value": list(MEAN_RGB_UINT8), "images": result.written,
                    "skipped": [{"source": p, "reason": r} for p, r in result.skipped]}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        if out.is_dir():
            for old in list(out.glob("[0-9][0-9][0-9][0-9][0-9].bin")) + [out / MANIFEST]:
                old.unlink(missing_ok=True)
            for f in tmp.iterdir():
                os.replace(f, out / f.name)
            tmp.rmdir()
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return result


def read_manifest(path: str | os.PathLike) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST
    try:
        manifest = json.loads(path.read_text())
        _ = [(m["index"], m["source"], m["original_size"], m["scale"]) for m in manifest["images"]]
    except FileNotFoundError:
        raise
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a spinenet image2bin manifest ({type(e).__name__}: {e})") from e
    return manifest
