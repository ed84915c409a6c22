"""Reading the output folders of Ascend's inference tools: msame and its successor ais_bench.

Both write one file per (input file, model output). What differs, transcribed from the tools' own source:

* **msame** (Ascend/tools ``msame/src/sample_process.cpp``, ``model_process.cpp``; deployment-contract.md
  §2.2-§2.4): run folder ``<output>/<timestamp>`` (``20220606_222003`` or ``202266_22_20_3_123456``), files
  ``<input name without its last extension>_output_<k>.txt|bin``; TXT in C++ ``ostream`` form.
* **ais_bench** (Ascend/tools @9d6da90 ``ais-bench_workload/tool/ais_bench/ais_bench/infer/``):
  ``__main__.py`` makes ``<output>/<time.strftime("%Y_%m_%d-%H_%M_%S")>`` or, with ``--output_dirname D``,
  ``<output>/D``; ``io_oprations.save_tensors_to_file`` names files
  ``"{}_{}.{}".format(os.path.basename(infile).split('.')[0], i, outfmt.lower())`` (the name is cut at the
  *first* dot; ``outfmt`` is one of NPY, BIN, TXT, default BIN); ``utils.save_data_to_files`` writes NPY with
  ``np.save``, BIN with ``ndarray.tofile`` and TXT as one line per last-dimension row of ``%f`` (floats) or
  ``%d`` values each followed by a space; ``summary.Summary.report`` writes ``<output>/<dirname>_summary.json``
  (beside the folder, not in it) with ``filesinfo``, ``args``, ``NPU_compute_time``, ``H2D_latency``,
  ``D2H_latency`` (each ``min max mean median percentile(99%) count``), ``throughput``,
  ``npu_compute_time_list`` and ``pid``.

BIN files carry no dtype. ATC's ``--output_type`` (FP32, FP16, INT32, ...; hiascend ATC parameter page
``atlasatcparam_16_0030``) may set every output, integer ones included, to FP16, so a BIN file's dtype is
told from its size against the element count the model gives: 4 bytes a value is the declared dtype
(float32 or int32), 2 bytes a value is float16. A 2-byte file of a declared integer output is taken as
float16 only when every value decodes to an exact integer (NumDetections, class ids); an int16 file does not
(its small values decode to float16 subnormals) and is refused.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spinenet.deploy.msame_format import is_run_folder_name

MSAME, AIS_BENCH = "msame", "ais_bench"
AIS_BENCH_DIRNAME_RE = re.compile(r"^\d{4}_\d{2}_\d{2}-\d{2}_\d{2}_\d{2}$")  # time.strftime("%Y_%m_%d-%H_%M_%S")
AIS_BENCH_EXTS = (".bin", ".npy", ".txt")  # outfmt.lower() for NPY, BIN, TXT
MSAME_EXTS = (".txt", ".bin")
AIS_BENCH_SUMMARY_TIMES = ("NPU_compute_time", "H2D_latency", "D2H_latency")  # summary.py's timing entries


@dataclass(frozen=True)
class OutputSpec:
    """One model output as the reader expects it: name, declared dtype, shape *including* the batch."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]


@dataclass(frozen=True)
class RunFolder:
    """An output folder of msame or ais_bench (``tool``); ``summary``: ais_bench's ``<dirname>_summary.json``
    or ``spinenet infer``'s ``summary.json``, when present."""

    path: Path
    tool: str
    summary: Path | None = None

    def output_path(self, name: str, index: int) -> Path | None:
        """The file of output ``index`` for input ``name`` (``00000``), or None if absent."""
        if self.tool == MSAME:
            candidates = [self.path / f"{name}_output_{index}{ext}" for ext in MSAME_EXTS]
        else:
            candidates = [self.path / f"{name}_{index}{ext}" for ext in AIS_BENCH_EXTS]
        return next((p for p in candidates if p.is_file()), None)

    def names(self) -> set[str]:
        """Input names that have an output 0 in the folder."""
        if self.tool == MSAME:
            return {p.name.rsplit("_output_0.", 1)[0] for p in self.path.glob("*_output_0.*")
                    if p.suffix in MSAME_EXTS}
        return {p.name[:-len("_0" + p.suffix)] for p in self.path.glob("*_0.*") if p.suffix in AIS_BENCH_EXTS}

    def read(self, name: str, specs: list[OutputSpec]) -> dict[str, np.ndarray] | None:
        """The outputs ``specs`` of input ``name``, in order; None when its output 0 is absent."""
        out = {}
        for k, spec in enumerate(specs):
            path = self.output_path(name, k)
            if path is None:
                if k == 0:
                    return None
                pattern = f"{name}_output_{k}.txt|bin" if self.tool == MSAME else f"{name}_{k}.bin|npy|txt"
                raise FileNotFoundError(f"{self.path}: {pattern} is missing (the model has {len(specs)} outputs)")
            out[spec.name] = read_array(path, spec)
        return out

    def timing(self) -> dict:
        """Scalars of the run's summary JSON for the report's table (one level of nesting flattened)."""
        try:
            data = json.loads(self.summary.read_text()) if self.summary else {}
        except (OSError, ValueError):
            return {}
        out = {}
        for k, v in data.items() if isinstance(data, dict) else ():
            if k in ("filesinfo", "args", "npu_compute_time_list", "inputs", "skipped"):
                continue  # per-file lists: too long for a summary table
            for sub, value in (v.items() if isinstance(v, dict) else [("", v)]):
                if isinstance(value, (str, int, float, bool)) or value is None:
                    out[f"{k}.{sub}" if sub else k] = value
        return out


def _has(folder: Path, tool: str) -> bool:
    if tool == MSAME:
        return any(p.suffix in MSAME_EXTS for p in folder.glob("*_output_0.*"))
    return any(p.suffix in AIS_BENCH_EXTS and not p.name.endswith(("_output_0.txt", "_output_0.bin"))
               for p in folder.glob("*_0.*"))


def _run_folder(path: Path) -> RunFolder | None:
    for tool in (MSAME, AIS_BENCH):  # msame first: its "_output_0.txt" also ends in "_0.txt"
        if _has(path, tool):
            summary = path / "summary.json"  # spinenet infer's, inside the folder
            if tool == AIS_BENCH:
                summary = path.parent / f"{path.name}_summary.json"
            return RunFolder(path, tool, summary if summary.is_file() else None)
    return None


def open_run_folder(path: str | os.PathLike) -> RunFolder:
    """``path`` itself if it holds outputs, else its newest msame- or ais_bench-named subfolder that does.

    ais_bench's ``--output_dirname`` folders have any name: give that folder itself.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"output folder {path} does not exist")
    found = _run_folder(path)
    if found is not None:
        return found
    runs = [r for p in path.iterdir() if p.is_dir() and (is_run_folder_name(p.name) or
                                                          AIS_BENCH_DIRNAME_RE.match(p.name))
            for r in [_run_folder(p)] if r is not None]
    if not runs:
        raise FileNotFoundError(
            f"{path} holds no msame outputs (<name>_output_<k>.txt|bin), no ais_bench outputs "
            "(<name>_<k>.bin|npy|txt) and no run folder (20220606_222003, 202266_22_20_3_123456 or "
            "2022_06_06-22_20_03 style) that does; for ais_bench --output_dirname give that folder itself")
    return max(runs, key=lambda r: r.path.stat().st_mtime)


# ----------------------------------------------------------------------------------------------------------
# One file


def read_array(path: str | os.PathLike, spec: OutputSpec) -> np.ndarray:
    """One output file (BIN, NPY or TXT of msame or ais_bench) as ``spec.dtype`` of ``spec.shape``.

    Errors are one line naming the file, what it holds and what was expected.
    """
    path = Path(path)
    count = int(np.prod(spec.shape))
    dtype = np.dtype(spec.dtype)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            values = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: not a NumPy .npy file ({e})") from e
        if values.size != count:
            raise ValueError(f"{path}: {values.dtype.name} {list(values.shape)} holds {values.size} values, "
                             f"expected {count} for {spec.name} {list(spec.shape)}")
        if np.issubdtype(dtype, np.integer) and np.issubdtype(values.dtype, np.floating):
            _check_integral(path, values, spec)
    elif suffix == ".txt":
        try:  # parsed in place (no list of strings: a 640x640 class map in TXT is ~60 MB)
            values = np.fromstring(path.read_text(), dtype=np.float64, sep=" ")
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not msame/ais_bench TXT output ({e})") from e
        if values.size != count:
            raise ValueError(f"{path}: {values.size} values, expected {count} for {spec.name} {list(spec.shape)} "
                             "(is the model given the one that wrote these outputs?)")
    else:
        values = _read_bin(path, spec, count, dtype)
    return np.asarray(values).reshape(spec.shape).astype(dtype)


def _read_bin(path: Path, spec: OutputSpec, count: int, dtype: np.dtype) -> np.ndarray:
    size = path.stat().st_size
    if size == count * dtype.itemsize:
        return np.fromfile(path, dtype=dtype)
    if size == count * 2 and dtype.itemsize != 2:  # ATC --output_type=FP16
        values = np.fromfile(path, dtype=np.float16)
        if np.issubdtype(dtype, np.integer):
            _check_integral(path, values, spec)
        return values
    raise ValueError(f"{path}: {size} bytes fit neither {dtype.name} nor float16 {spec.name} {list(spec.shape)} "
                     f"({count * dtype.itemsize} or {count * 2} bytes): another batch size or model?")


def _check_integral(path: Path, values: np.ndarray, spec: OutputSpec) -> None:
    finite = np.isfinite(values)
    if not (finite.all() and np.array_equal(values, np.round(values))):
        raise ValueError(f"{path}: the values of integer output {spec.name} are not float16 integers (int16/uint16 "
                         "outputs of ATC --output_type are not read): convert with --output_type=FP32 or FP16")
