"""msame's output files and folders, byte for byte (deployment-contract.md §2.2–§2.4), both to write and to read.

* TXT: every element printed like C++ ``ostream <<`` (6 significant digits, ``%g``-style) and followed by a
  space; one ``\\n`` after every last-dimension row (after element i when i is divisible by a product of
  trailing dimensions, excluding dim 0); a 1-element output gets no newline.
* BIN: the raw bytes, host dtype, no header.
* File names: ``<input name without extension>_output_<k>.txt|bin``.
* Folder: ``%Y%m%d_%H%M%S`` (msame 2021-02…08, the seed's README) or, from 2021-09 on, year month day with no
  zero padding then ``_hour_min_sec_usec`` (``202266_22_20_3_123456``). Readers accept both.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from pathlib import Path

import numpy as np

from spinenet.io_checks import atomic_write, write_text_atomic

# The seed's serving outputs in msame order (ATC --out_nodes): name, dtype, shape without the batch dimension.
SEED_OUTPUTS = (
    ("NumDetections", np.int32, ()),
    ("DetectionBoxes", np.float32, (100, 4)),
    ("DetectionClasses", np.int32, (100,)),
    ("DetectionScores", np.float32, (100,)),
    ("ImageInfo", np.float32, (4, 2)),
)
TIMELINE_RE = re.compile(r"^\d{8}_\d{6}$")  # 20220606_222003
CURRENT_TIME_RE = re.compile(r"^\d{5,8}_\d{1,2}_\d{1,2}_\d{1,2}_\d{1,6}$")  # 202266_22_20_3_123456


def _cpp_float(v: float) -> str:
    """``std::ostream << float`` with default flags: ``%g`` with 6 significant digits (``-1``, ``0.05``, ``1e-05``)."""
    s = f"{v:g}"
    if "e" in s:  # C++ prints at least two exponent digits, as Python does; keep the sign style identical
        mant, exp = s.split("e")
        s = f"{mant}e{exp[0]}{exp[1:].zfill(2)}"
    return s


def format_txt(array: np.ndarray) -> str:
    """One output tensor in msame's TXT layout (shape including the batch dimension)."""
    a = np.asarray(array)
    flat = a.reshape(-1)
    dims = a.shape[1:] if a.ndim > 1 else ()
    products, p = [], 1
    for d in reversed(dims):  # GetCurOutputDimsMul: cumulative products of the trailing dims, dim 0 excluded
        p *= d
        products.append(p)
    out = []
    integer = np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_
    for i, v in enumerate(flat.tolist(), 1):
        out.append((str(int(v)) if integer else _cpp_float(float(v))) + " ")
        if any(i % q == 0 for q in products):
            out.append("\n")
    return "".join(out)


def write_output(folder: str | os.PathLike, name: str, index: int, array: np.ndarray, outfmt: str = "TXT") -> Path:
    """Write output ``index`` of input ``name`` as msame does; returns the path."""
    folder = Path(folder)
    if outfmt == "TXT":  # msame: only the exact string "TXT" selects text, anything else is BIN
        # Written beside and renamed: an interrupted run leaves no half file under an output's name.
        return write_text_atomic(folder / f"{name}_output_{index}.txt", format_txt(array))
    data = np.ascontiguousarray(array).tobytes()
    return atomic_write(folder / f"{name}_output_{index}.bin", lambda f: f.write(data), binary=True)


def timeline_dirname(now: _dt.datetime | None = None) -> str:
    """``%Y%m%d_%H%M%S``, the folder name in the seed's README (``20220606_222003``)."""
    return (now or _dt.datetime.now()).strftime("%Y%m%d_%H%M%S")


def current_time_dirname(now: _dt.datetime | None = None) -> str:
    """Newer msame's ``printCurrentTime``: no zero padding, microseconds (``202266_22_20_3_123456``)."""
    t = now or _dt.datetime.now()
    return f"{t.year}{t.month}{t.day}_{t.hour}_{t.minute}_{t.second}_{t.microsecond}"


def is_run_folder_name(name: str) -> bool:
    return bool(TIMELINE_RE.match(name) or CURRENT_TIME_RE.match(name))


def resolve_run_folder(path: str | os.PathLike) -> Path:
    """The folder holding ``*_output_<k>`` files: ``path`` itself, or its newest msame-named subfolder."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"msame output folder {path} does not exist")
    if any(path.glob("*_output_0.*")):
        return path
    runs = [p for p in path.iterdir() if p.is_dir() and is_run_folder_name(p.name) and any(p.glob("*_output_0.*"))]
    if not runs:
        raise FileNotFoundError(f"{path} holds no msame outputs (<name>_output_<k>.txt|bin) and no msame run folder "
                                "(20220606_222003 or 202266_22_20_3_123456 style) that does")
    return max(runs, key=lambda p: p.stat().st_mtime)


def read_output(path: str | os.PathLike, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """One output file (TXT or BIN) as an array of ``shape`` (batch dimension included); errors name the file."""
    path = Path(path)
    count = int(np.prod(shape))
    if path.suffix == ".txt":
        text = path.read_text()
        try:
            values = np.array(text.split(), dtype=np.float64)
        except ValueError as e:
            raise ValueError(f"{path}: not msame TXT output ({e})") from e
    else:
        raw = path.read_bytes()
        if len(raw) != count * np.dtype(dtype).itemsize:
            raise ValueError(f"{path}: {len(raw)} bytes, expected {count * np.dtype(dtype).itemsize} for "
                             f"{np.dtype(dtype).name} {list(shape)}")
        values = np.frombuffer(raw, dtype=dtype)
    if values.size != count:
        raise ValueError(f"{path}: {values.size} values, expected {count} for shape {list(shape)}")
    return values.astype(dtype).reshape(shape)


def read_seed_outputs(folder: str | os.PathLike, name: str) -> dict[str, np.ndarray] | None:
    """The five seed outputs of input ``name`` (batch inferred from NumDetections); None if none are there."""
    folder = Path(folder)
    files = {}
    for k in range(len(SEED_OUTPUTS)):
        found = [folder / f"{name}_output_{k}{ext}" for ext in (".txt", ".bin")]
        found = [p for p in found if p.exists()]
        if not found:
            if k == 0:
                return None
            raise FileNotFoundError(f"{folder}: {name}_output_{k}.txt|bin is missing (outputs 0..4 expected)")
        files[k] = found[0]
    first = files[0]
    n = len(first.read_text().split()) if first.suffix == ".txt" else first.stat().st_size // 4
    return {out_name: read_output(files[k], dtype, (n, *shape))
            for k, (out_name, dtype, shape) in enumerate(SEED_OUTPUTS)}
