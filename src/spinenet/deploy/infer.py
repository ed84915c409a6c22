"""``spinenet infer``: msame's batch inference, on ONNX Runtime / OpenVINO / PyTorch, CPU or GPU.

Same flags (``--model --input --output --outfmt TXT|BIN --loop``), same output folder
(``<output>/<YYYYmmdd_HHMMSS>/``), same file names (``<input name>_output_<k>.txt|bin``), same TXT layout, and the
same timing lines (``Inference time: X ms`` per file, ``Inference average time : X ms`` and ``… without first
time``), which time the model run alone as msame times ``aclmdlExecute``. Unlike msame it checks every input's
size against the model and names the file on a mismatch (counted and skipped), and writes ``summary.json``.
msame's other flags (``--device`` id, ``--debug``, ``--profiler``, ``--dump``, ``--dym*``, ``--outputSize``) are
answered in :mod:`spinenet.deploy.msame_flags`.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spinenet.deploy.msame_flags import MsameOptions, MsameRun
from spinenet.deploy.msame_format import timeline_dirname, write_output
from spinenet.deploy.run_state import mark_complete, mark_started
from spinenet.deploy.runtimes import open_session
from spinenet.io_checks import write_text_atomic


@dataclass
class InferResult:
    run_dir: Path
    files: list[str] = field(default_factory=list)
    times_ms: list[float] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _inputs(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"--input {path} does not exist")
    # msame lists the folder, skips names starting with '.', and sorts; here non-.bin files (manifest.json) too.
    return sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix == ".bin")


def run_inference(model: str | os.PathLike, input_path: str | os.PathLike, output: str | os.PathLike, *,
                  outfmt: str = "TXT", backend: str = "onnxruntime", device: str = "cpu", loop: int = 1,
                  threads: int | None = None, precision: str = "fp32", progress: bool = True,
                  quiet: bool = False, msame: MsameOptions | None = None) -> InferResult:
    """Run ``model`` over the .bin inputs (see the module docstring). ``quiet``: print only warnings (skipped
    inputs), not msame's run folder and timing lines. ``msame``: msame's remaining flags (--debug, --profiler,
    --dump, --dym*, --outputSize; see msame_flags)."""
    from tqdm import tqdm

    say = (lambda *a, **k: None) if quiet else print

    if not 1 <= loop <= 100:
        raise ValueError(f"--loop must be in 1..100 (as msame), got {loop}")
    flags = MsameRun(msame, backend, output)
    session = flags.open_session(model, device, threads) or open_session(model, backend, device, threads, precision)
    flags.after_open(session, model)
    files = _inputs(Path(input_path))
    if not files:
        raise FileNotFoundError(f"--input {input_path} holds no .bin files (make them with `spinenet image2bin`)")
    out_root = Path(output)
    try:
        out_root.mkdir(parents=True, exist_ok=True)
        run_dir = out_root / timeline_dirname()
        while run_dir.exists():  # two runs within one second: msame would clash; wait for the next name
            time.sleep(0.2)
            run_dir = out_root / timeline_dirname()
        run_dir.mkdir()
    except OSError as e:
        raise ValueError(f"--output {out_root}: cannot create the output folder ({e})") from e
    say(run_dir, flush=True)
    result = InferResult(run_dir)
    expected = int(np.prod(session.input_shape)) * session.input_dtype.itemsize
    single = len(files) == 1 and Path(input_path).is_file()
    mark_started(run_dir, [Path(model).stem] if single else [p.stem for p in files], len(session.output_names))
    bar = tqdm(files, desc="infer", unit="file", disable=not progress or len(files) < 20)
    for path in bar:
        size = path.stat().st_size
        if size != expected:
            reason = (f"{size} bytes, but the model takes {session.input_name} {list(session.input_shape)} "
                      f"{session.input_dtype.name} = {expected} bytes")
            result.skipped.append((str(path), reason))
            bar.write(f"[WARNING] {path}: {reason}; skipped (make inputs with `spinenet image2bin "
                      f"--image_size {session.input_shape[1]},{session.input_shape[2]}`)")
            continue
        x = np.fromfile(path, dtype=session.input_dtype).reshape(session.input_shape)
        for _ in range(loop if single else 1):
            t0 = time.perf_counter()
            outputs = session.run(x)
            ms = (time.perf_counter() - t0) * 1000
            result.times_ms.append(ms)
            if not quiet:
                bar.write(f"Inference time: {ms:.3f}ms")
        # Single-file input is named after the model, as msame does; folder input after each input file.
        name = Path(model).stem if single else path.stem
        flags.after_run(name, x, outputs, run_dir)
        for k, array in enumerate(outputs.values()):
            write_output(run_dir, name, k, array, outfmt)
        result.files.append(str(path))
    if result.times_ms:
        avg = statistics.fmean(result.times_ms)
        say(f"Inference average time : {avg:.2f} ms")
        if len(result.times_ms) > 1:
            say(f"Inference average time without first time: {statistics.fmean(result.times_ms[1:]):.2f} ms")
    flags.finish(session)
    _write_summary(result, model, backend, device, precision, session, outfmt, flags.summary())
    mark_complete(run_dir)  # last: until here `spinenet report` sees an unfinished run
    if result.skipped:
        print(f"{len(result.skipped)} input file(s) skipped: " + "; ".join(f"{p} ({r})" for p, r in result.skipped))
    say(f"outputs: {run_dir} ({len(result.files)} inputs, {outfmt})")
    return result


def _write_summary(result: InferResult, model, backend, device, precision, session, outfmt, extra: dict) -> None:
    t = result.times_ms
    ordered = sorted(t)
    precision = precision if backend == "openvino" else "fp32"
    if getattr(session, "metadata", {}).get("spinenet.quantize") == "int8":  # convolutions int8, the rest so
        precision = f"int8+{precision}"
    summary = {
        "model": str(model), "backend": backend, "device": device, "precision": precision,
        "machine": f"{platform.machine()} {platform.processor() or ''} ({os.cpu_count()} CPUs)".strip(),
        "input_shape": list(session.input_shape), "outputs": list(session.output_names), "outfmt": outfmt,
        "inputs": result.files, "skipped": [{"file": p, "reason": r} for p, r in result.skipped],
        "time_ms": {"mean": statistics.fmean(t) if t else None,
                    "mean_without_first": statistics.fmean(t[1:]) if len(t) > 1 else None,
                    "median": statistics.median(t) if t else None,
                    "p90": ordered[min(len(t) - 1, int(0.9 * len(t)))] if t else None, "count": len(t),
                    "timed": "model run only (as msame times aclmdlExecute): no file I/O"}, **extra,
    }
    write_text_atomic(result.run_dir / "summary.json", json.dumps(summary, indent=1))
