"""``spinenet train`` itself, in a child process: ``--train_cli_steps`` steps (200 by default, the issue's
"spinenet train itself for 200 steps at batch 64 bf16") on the synthetic COCO set of the training rows, with
the same ``--params_override`` (640², batch 64, 91 classes) and ``--num_workers``; images/s read from its own
log (``metrics.jsonl``, ``train/images_per_second`` every ``--train_cli_log_every`` steps).

The row's images/s is the median of the logged windows after the first (the first includes start-up: worker
start, cuDNN autotuning); the JSON keeps every window and the whole run's rate. The child runs
``spinenet.cli.main`` and then prints its own peak device memory (or, on a CPU, its peak RSS) for the row.

The run is bounded by ``--train_cli_max_s``: when the step and loader rows measured before it say the steps
would not fit, fewer steps are run (a note says so), and a run past the limit is stopped; the windows logged
until then still make the row.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from .machine import ROOT
from .report import best
from .timing import quantile

MARK = "GPU_SPEED_TRAIN_CLI "
STARTUP_S = 30.0  # a generous guess of spinenet train's start-up on a GPU host (imports, model, workers)
RUNNER = f"""
import json, sys
import torch
from spinenet.cli import main
from spinenet.deploy.benchmark import peak_rss_mib
rc = main(sys.argv[1:])
cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mib()
print({MARK!r} + json.dumps({{"rc": rc, "peak_mib": round(peak, 1), "peak_kind": "cuda max_memory_allocated"
      if cuda else "process peak RSS (VmHWM)"}}), flush=True)
sys.exit(rc)
"""


def planned_steps(bench, requested: int, batch: int, log_every: int) -> int:
    """``requested``, or fewer when the images/s measured so far (the slower of the loader and the step) say
    that it would not finish within ``--train_cli_max_s``."""
    rows = bench.rows
    rates = [r["images_per_s"] for r in (best(rows, model="spinenet", what="loader"),
                                         best(rows, model="spinenet", what="train")) if r]
    if not rates:
        return requested
    fit = int((bench.args.train_cli_max_s - STARTUP_S) * min(rates) / batch) // log_every * log_every
    return max(min(requested, fit), 2 * log_every)


def command(args, device, setup, model_dir: Path, steps: int) -> list[str]:
    cmd = [sys.executable, "-c", RUNNER, "train", "--model_dir", str(model_dir),
           "--train_data", setup.data[0], setup.data[1], "--params_override", json.dumps(setup.override),
           "--max_steps", str(steps), "--log_every", str(args.train_cli_log_every),
           "--checkpoint_every", str(10 ** 9), "--num_workers", str(args.num_workers),
           "--precision", args.train_precision, "--device", str(device), "--seed", str(args.seed), "--no_progress"]
    return cmd + (["--channels_last"] if args.train_channels_last else [])


def read_windows(model_dir: Path) -> list[dict]:
    """The ``train/images_per_second`` records of ``metrics.jsonl`` (a line cut by a kill is ignored)."""
    path = model_dir / "metrics.jsonl"
    out = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec.get("train/images_per_second"), (int, float)):
            out.append({"step": rec["step"], "time": rec["time"], "images_per_s": rec["train/images_per_second"]})
    return out


def row_from_log(windows: list[dict], batch: int) -> dict:
    """The table row of a run's logged windows; raises ValueError when it logged none."""
    if not windows:
        raise ValueError("spinenet train logged no training window (see its output above)")
    steady = [w["images_per_s"] for w in (windows[1:] or windows)]
    rate = statistics.median(steady)
    span = windows[-1]["time"] - windows[0]["time"]
    overall = (windows[-1]["step"] - windows[0]["step"]) * batch / span if span > 0 else None
    slow = quantile(sorted(steady), 0.1)
    return {"images_per_s": round(rate, 2), "ms_median": round(batch * 1e3 / rate, 4),
            "ms_p90": round(batch * 1e3 / slow, 4), "iters": len(steady), "steps_done": windows[-1]["step"],
            "first_window_images_per_s": windows[0]["images_per_s"],
            "images_per_s_after_first_window": overall and round(overall, 2),
            "windows": [[w["step"], w["images_per_s"]] for w in windows]}


def cli_row(bench, setup, work_dir: Path) -> None:
    args, device = bench.args, bench.device
    requested, batch = args.train_cli_steps, args.train_batch
    if requested <= 0:
        bench.skip("spinenet train itself: --train_cli_steps 0")
        return
    label = f"`spinenet train` itself, batch {batch} {args.train_precision}"
    if not bench.fits(label, 60.0):
        return
    steps = planned_steps(bench, requested, batch, args.train_cli_log_every)
    if steps < requested:
        bench.note(f"{label}: {steps} steps instead of {requested}, to fit --train_cli_max_s "
                   f"{args.train_cli_max_s:.0f} s at the images/s measured above")
    model_dir = work_dir / f"train_cli_{len(bench.rows)}"
    cmd = command(args, device, setup, model_dir, steps)
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p))
    print(f"running {label} for {steps} steps (at most {args.train_cli_max_s:.0f} s)", flush=True)
    info = {"model": "spinenet", "backend": "spinenet train (CLI)", "what": "train (CLI)", "batch": batch,
            "precision": args.train_precision, "steps_requested": requested, "steps_planned": steps,
            "variant": f"`spinenet train` {steps} steps, {args.num_workers} workers, its log (median of the "
                       "windows after the first)", "labels_in_step": False}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.train_cli_max_s, env=env)
        stdout, stderr, status = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        stderr = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        status = f"stopped after {args.train_cli_max_s:.0f} s"
    info["exit"] = status
    for line in stdout.splitlines():
        if line.startswith(MARK):
            info.update(json.loads(line[len(MARK):]))
        else:
            print(f"  | {line}", flush=True)
    if status != 0:
        tail = " | ".join(stderr.strip().splitlines()[-3:])
        bench.note(f"{label}: exit {status}" + (f"; stderr tail: {tail[:400]}" if tail else ""))
    try:
        row = {**info, **row_from_log(read_windows(model_dir), batch)}
    except ValueError as e:
        row = {**info, "error": str(e)}
    bench.add(row)
