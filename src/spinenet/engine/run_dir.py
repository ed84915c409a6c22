"""The training run folder (``--model_dir``): its lock, its checkpoint files, its config and scalar logs.

One trainer owns a folder at a time (an exclusive ``flock`` on ``.train.lock``, which holds the owner's pid and
host); only while holding it does a run remove the temporary files that a killed checkpoint write left, so it
never removes another live trainer's half-written file. Checkpoints are ``ckpt-STEP.pt``; any other name
(``ckpt-backup.pt``, ``ckpt-7.pt.old``) is the user's and left alone.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import math
import os
import re
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

from spinenet.engine.checkpoint import TEMP_NAME, atomic_write

LOCK_NAME = ".train.lock"
CHECKPOINT_NAME = re.compile(r"^ckpt-(\d+)\.pt$")
BEST_NAME = "best.pt"
CONFIG_NAME = "config.yaml"
METRICS_NAME = "metrics.jsonl"
# Files this module writes through checkpoint.atomic_write; only their temporary files are ever removed.
_OWN_TARGETS = re.compile(r"^(ckpt-\d+\.pt|best\.pt|config\.yaml|metrics\.jsonl)$")


class RunDirLockedError(ValueError):
    """Another trainer holds the folder's lock."""


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def lock_model_dir(model_dir: Path) -> Iterator[Path]:
    """Hold an exclusive lock on ``model_dir`` for the block; fail at once, naming the holder, if it is taken.

    ``flock`` is released by the kernel when the holder exits, however it exits (SIGKILL included), so a stale
    lock file never blocks a later run; the file itself stays (removing it would race with the next locker).
    """
    path = model_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:  # checked before any work: a read-only folder would otherwise fail at the first save
        raise ValueError(f"cannot write in {model_dir} ({e.strerror}); choose a writable --model_dir") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "a process that is starting"
            raise RunDirLockedError(f"{model_dir} is in use by another trainer ({holder}); wait for it to end, "
                                    "stop it, or choose another --model_dir") from None
        except OSError as e:  # e.g. a file system without locks: carry on, but say the folder is unguarded
            warn(f"could not lock {path} ({e.strerror}); make sure no other trainer uses {model_dir}")
        started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock


def checkpoint_step(path: Path) -> int | None:
    m = CHECKPOINT_NAME.match(path.name)
    return int(m.group(1)) if m else None


def list_checkpoints(model_dir: Path) -> list[Path]:
    """``ckpt-STEP.pt`` files, oldest first; other names are ignored."""
    found = [(checkpoint_step(p), p) for p in Path(model_dir).glob("ckpt-*.pt")]
    return [p for step, p in sorted((s, p) for s, p in found if s is not None)]


def remove_partial_writes(model_dir: Path) -> list[Path]:
    """Remove temporary files that a killed write of one of our files left (call only while holding the lock)."""
    removed = []
    for p in Path(model_dir).iterdir():
        m = TEMP_NAME.match(p.name)
        if m and _OWN_TARGETS.match(m.group("target")) and p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    if removed:
        print(f"removed {len(removed)} partial file(s) left by an interrupted write: "
              f"{', '.join(p.name for p in removed)}")
    return removed


def write_config(model_dir: Path, cfg) -> Path:
    """The resolved config as ``config.yaml``: what this run trains with (``--config_file`` takes it back)."""
    from spinenet.config import dump_yaml

    text = dump_yaml(cfg).encode()
    return atomic_write(Path(model_dir) / CONFIG_NAME, lambda f: f.write(text))


class MetricsLog:
    """``metrics.jsonl``: one JSON object per line with ``step`` and the scalars TensorBoard gets, plus events.

    A run starting at step N (0 for a new run) drops the records of later steps (an interrupted stretch about to
    be replayed, or a run killed before its first checkpoint), so each step appears once; the trainer adds a
    ``{"event": "resume", ...}`` record saying what was resumed.
    """

    def __init__(self, model_dir: Path, start_step: int = 0):
        self.path = Path(model_dir) / METRICS_NAME
        if self.path.exists():
            kept = [ln for ln in self.path.read_text().splitlines() if _record_step(ln) <= start_step]
            text = "".join(ln + "\n" for ln in kept).encode()
            atomic_write(self.path, lambda f: f.write(text))
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the whole run

    def write(self, step: int, **values) -> None:
        record = {"step": step, "time": round(datetime.datetime.now().timestamp(), 3)}
        record.update({k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in values.items()})
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _record_step(line: str) -> float:
    try:
        return float(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):
        return math.inf  # a line cut off by a kill: drop it
