"""Timing and the time budget: :class:`Bench` holds the rows, notes and budget, and times one row at a time.

A row is timed as host wall time per call with a device synchronise after each call (the CUDA-event time is
kept beside it), after a warm-up that stops early once a row is slow, so no single row can eat the budget.
The budget only gates *optional* rows: the done-when rows run whatever is left (each is bounded by
``--max_row_s``), and an optional row that no longer fits is skipped with a printed note.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
import traceback
from pathlib import Path

import torch

from .report import format_row, write_json

SPINENET = "SpineNet-49S (this project)"
TORCHVISION = "torchvision retinanet_resnet50_fpn"
MIB = 1 << 20


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def amp(device, precision: str, cache: bool = True):
    """Autocast for ``bf16``/``fp16``, nothing for ``fp32`` (PyTorch's defaults: cuDNN may use TF32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device.type, dtype=dtype, cache_enabled=cache)


def module_bytes(*modules) -> int:
    """Bytes of the parameters and buffers of ``modules`` (shared tensors counted once)."""
    seen, total = set(), 0
    for m in modules:
        for t in list(m.parameters()) + list(m.buffers()):
            if id(t) not in seen:
                seen.add(id(t))
                total += t.numel() * t.element_size()
    return total


def _cpu_peak_reset() -> None:
    with contextlib.suppress(OSError):  # resets VmHWM to the current RSS (Linux >= 4.0)
        Path("/proc/self/clear_refs").write_text("5")


def _host_peak_mib() -> float:
    from spinenet.deploy.benchmark import peak_rss_mib

    return peak_rss_mib()


def quantile(sorted_values: list[float], q: float) -> float:
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = q * (len(sorted_values) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


class Bench:
    """Rows, notes, skips and the time budget; the JSON is rewritten after every row, so a killed run keeps
    what it measured. ``essential`` is set by the caller around the done-when rows (the budget never skips
    those)."""

    def __init__(self, args, device, argv: list[str]):
        self.args, self.device, self.argv = args, device, argv
        self.t0 = time.perf_counter()
        self.rows: list[dict] = []
        self.notes: list[str] = []
        self.skipped: list[str] = []
        self.env: dict = {}
        self.ratios: list[dict] = []
        self.calibration: dict = {}
        self.essential = True

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.args.time_budget_s - self.elapsed()

    def note(self, text: str) -> None:
        print(f"note: {text}", flush=True)
        self.notes.append(text)

    def skip(self, text: str) -> None:
        print(f"skipped: {text}", flush=True)
        self.skipped.append(text)

    def fits(self, label: str, min_left_s: float) -> bool:
        """True for a done-when row; for an optional one, whether ``min_left_s`` of the budget is left (if not,
        the row is skipped with a note)."""
        if self.essential or self.left() >= min_left_s:
            return True
        self.skip(f"{label}: optional, time budget spent ({self.elapsed():.0f} s of {self.args.time_budget_s:.0f})")
        return False

    def add(self, row: dict) -> None:
        row.setdefault("done_when", self.essential)
        self.rows.append(row)
        print(format_row(row), flush=True)
        self.write()

    def write(self) -> None:
        if self.args._child or not self.args.output:
            return
        write_json(self.args.output, {
            "env": self.env, "args": {k: (sorted(v) if isinstance(v, set) else v) for k, v in vars(self.args).items()},
            "elapsed_s": round(self.elapsed(), 1), "calibration": self.calibration, "rows": self.rows,
            "ratios": self.ratios, "notes": self.notes, "skipped": self.skipped})

    def measure(self, fn, *, model: str, what: str, variant: str, batch: int, precision: str, own_bytes: int,
                warmup: int | None = None, iters: int | None = None, check=None, min_left_s: float = 5.0,
                max_s: float | None = None, memory: str = "device", **extra) -> dict | None:
        """Time ``fn`` (one batch per call) and add the row; an exception becomes a row with ``error``.
        ``memory="host"`` reports the process's peak RSS (a data loader's row) on any device."""
        if not self.fits(f"{model} {what} [{variant}] batch {batch} {precision}", min_left_s):
            return None
        args, device = self.args, self.device
        warmup = args.warmup if warmup is None else warmup
        iters = args.iters if iters is None else iters
        max_s = args.max_row_s if max_s is None else max_s
        row = {"model": model, "backend": SPINENET if model == "spinenet" else TORCHVISION, "what": what,
               "variant": variant, "batch": batch, "precision": precision, **extra}
        on_device = device.type == "cuda" and memory == "device"
        try:
            out = self._time_row(fn, row, warmup, iters, max_s, on_device, own_bytes)
            if check is not None:
                row.update(check(out))
            del out
        except Exception as e:  # noqa: BLE001 - a failed row is reported, the others still run
            traceback.print_exc()
            text = str(e).strip()
            row["error"] = f"{type(e).__name__}: {text.splitlines()[0][:300] if text else ''}"
            if device.type == "cuda":
                torch.cuda.empty_cache()
        self.add(row)
        return row

    def _time_row(self, fn, row: dict, warmup: int, iters: int, max_s: float, on_device: bool, own_bytes: int):
        """Warm up, then up to ``iters`` timed calls (at least 3 unless ``iters`` is smaller; fewer once
        ``max_s`` is spent); fills ``row``'s times and memory and returns the last output."""
        device = self.device
        cuda = device.type == "cuda"
        t_start = time.perf_counter()
        out = None
        for i in range(max(warmup, 1)):  # the first call autotunes; stop early once a row is slow
            out = fn()
            if i >= 1 and time.perf_counter() - t_start > max_s:
                break
        sync(device)
        row["warmup_s"] = round(time.perf_counter() - t_start, 2)
        if on_device:
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        else:
            _cpu_peak_reset()
        host_ms, gpu_ms = [], []
        t_loop = time.perf_counter()
        for i in range(max(iters, 1)):
            del out  # the previous output is freed before the next call, as a caller would
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                t = time.perf_counter()
                start.record()
                out = fn()
                end.record()
                torch.cuda.synchronize(device)
                host_ms.append((time.perf_counter() - t) * 1e3)
                gpu_ms.append(start.elapsed_time(end))
            else:
                t = time.perf_counter()
                out = fn()
                host_ms.append((time.perf_counter() - t) * 1e3)
            if i >= 2 and time.perf_counter() - t_loop > max_s:
                break
        if on_device:
            peak = torch.cuda.max_memory_allocated(device)
            row.update(peak_mib=round((peak - base + own_bytes) / MIB, 1), peak_abs_mib=round(peak / MIB, 1),
                       peak_kind="cuda max_memory_allocated above the row's start + own weights")
        else:
            row.update(peak_mib=round(_host_peak_mib(), 1), peak_kind="process peak RSS (VmHWM)")
        host_ms.sort()
        row.update(ms_median=round(statistics.median(host_ms), 4), ms_p90=round(quantile(host_ms, 0.9), 4),
                   ms_mean=round(statistics.fmean(host_ms), 4), iters=len(host_ms))
        if gpu_ms:
            row["gpu_ms_median"] = round(statistics.median(gpu_ms), 4)
        row["images_per_s"] = round(row["batch"] * 1e3 / row["ms_median"], 2)
        return out
