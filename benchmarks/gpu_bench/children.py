"""Optional variants in child processes: a failed CUDA-graph capture or a long torch.compile must not take the
main run down. The child re-runs ``benchmarks/gpu_speed.py`` with the parent's arguments plus ``--_child SPEC``
and the budget left, and reports its rows, notes and skips on stdout as marked JSON lines; the parent kills it
at the budget and keeps what it reported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from .machine import ROOT
from .report import finite, format_row
from .timing import Bench

CHILD_MARK = "GPU_SPEED_CHILD_RESULT "
SCRIPT = ROOT / "benchmarks" / "gpu_speed.py"


class ChildBench(Bench):
    """In a child: rows, notes and skips go to stdout as marked JSON lines for the parent."""

    def add(self, row: dict) -> None:
        row.setdefault("done_when", False)
        self.rows.append(row)
        print(format_row(row), file=sys.stderr, flush=True)
        print(CHILD_MARK + json.dumps({"row": finite(row)}, default=str), flush=True)

    def note(self, text: str) -> None:
        print(CHILD_MARK + json.dumps({"note": text}), flush=True)

    def skip(self, text: str) -> None:
        print(CHILD_MARK + json.dumps({"skip": text}), flush=True)


def child_main(args, device, spec: dict) -> int:
    from .compiled import compile_rows
    from .graphs import compiled_detector_rows, full_graph_rows
    from .models import SpineNetRunners, build_spinenet

    bench = ChildBench(args, device, [])
    bench.essential = False
    base, fast = build_spinenet(args, device)
    sn = SpineNetRunners(args, device, base, fast)
    if spec["kind"] == "full_graph_capture":
        full_graph_rows(bench, sn, spec["batch"], spec["precision"])
        if bench.device.type == "cuda":
            compiled_detector_rows(bench, sn, spec["batch"])
    elif spec["kind"] == "compile":
        compile_rows(bench, sn, spec["batches"], spec["precision"])
    return 0


def run_child(bench: Bench, kind: str, spec: dict, min_left_s: float) -> None:
    if not bench.fits(kind, min_left_s):
        return
    timeout = bench.left() - 2.0
    cmd = [sys.executable, str(SCRIPT), *bench.argv, "--time_budget_s", f"{timeout - 5:.0f}",
           "--_child", json.dumps({"kind": kind, **spec})]
    print(f"child ({kind}, up to {timeout:.0f} s): {' '.join(cmd[-2:])}", flush=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        stdout, stderr, status = proc.stdout, proc.stderr, f"exit status {proc.returncode}"
    except subprocess.TimeoutExpired as e:
        stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        stderr = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        status = f"stopped after {timeout:.0f} s (time budget)"
    got = 0
    for line in stdout.splitlines():
        if not line.startswith(CHILD_MARK):
            continue
        item = json.loads(line[len(CHILD_MARK):])
        if "row" in item:
            bench.add(item["row"])
            got += 1
        if "note" in item:
            bench.note(item["note"])
        if "skip" in item:
            bench.skip(item["skip"])
    if status != "exit status 0" or not got:
        tail = " | ".join(line for line in (stderr or "").strip().splitlines()[-3:])
        bench.note(f"{kind} child: {status}, {got} rows" + (f"; stderr tail: {tail[:400]}" if tail else ""))
