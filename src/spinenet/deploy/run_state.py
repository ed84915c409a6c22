"""Whether a ``spinenet infer`` run folder is complete: a marker written before the first output and removed after
``summary.json``, so that a killed or failed run can't pass for a finished one.

msame prints its run folder first and fills it as it goes, and ``spinenet infer`` keeps that contract (tools may
watch the folder), so the folder is not built elsewhere and renamed; instead ``infer_incomplete.json`` lists the
input names the run was to write, and ``spinenet report`` refuses a folder that still holds it, naming the count
of inputs that have no outputs (``--allow_partial`` reports on the rest, with a warning). A folder written by
msame itself has no marker and is taken as it is.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from spinenet.io_checks import atomic_write

MARKER = "infer_incomplete.json"


def mark_started(run_dir: str | os.PathLike, names: list[str], num_outputs: int) -> None:
    """Record that ``run_dir`` is being written: ``names`` (each input's output name) x ``num_outputs`` files."""
    atomic_write(Path(run_dir) / MARKER, lambda f: json.dump(
        {"note": "spinenet infer has not finished this folder (interrupted or failed if it is not running)",
         "num_outputs": num_outputs, "names": names}, f, indent=1))


def mark_complete(run_dir: str | os.PathLike) -> None:
    """The run finished (``summary.json`` written): drop the marker."""
    (Path(run_dir) / MARKER).unlink(missing_ok=True)


def missing_outputs(run_dir: str | os.PathLike) -> tuple[list[str], int] | None:
    """``(names without a full set of outputs, names planned)`` for an unfinished run; None for a finished one."""
    run_dir = Path(run_dir)
    path = run_dir / MARKER
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        names, count = [str(n) for n in data["names"]], int(data["num_outputs"])
    except (OSError, ValueError, KeyError, TypeError):  # killed while writing the marker itself: nothing ran
        return [], 0
    present = {p.name for p in run_dir.iterdir()}
    missing = [n for n in names if not all(f"{n}_output_{k}.txt" in present or f"{n}_output_{k}.bin" in present
                                           for k in range(count))]
    return missing, len(names)


def check_run_complete(run_dir: str | os.PathLike, allow_partial: bool = False) -> str | None:
    """Raise ValueError for an unfinished ``spinenet infer`` folder; with ``allow_partial``, return a warning."""
    state = missing_outputs(run_dir)
    if state is None:
        return None
    missing, total = state
    what = (f"{run_dir} is an unfinished spinenet infer run (interrupted or failed; {MARKER} is still there): "
            f"{len(missing)} of {total} input(s) have no outputs")
    if not allow_partial:
        raise ValueError(f"{what}; rerun spinenet infer, point --output at a finished run folder, or pass "
                         "--allow_partial to report on the rest")
    return f"warning: {what}"
