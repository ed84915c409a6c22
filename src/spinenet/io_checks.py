"""Filesystem checks and writes shared by the commands that write results.

Two defects this exists to prevent: a command that works for minutes and only then finds its output folder
read-only (so the check must come *before* the work, and must reflect what a write would really do: permission
bits for ordinary users, read-only mounts for everyone), and result files created private (``tempfile.mkstemp``
makes 0600) where a plain ``open`` would have given the usual umask-respecting 0644.
"""

from __future__ import annotations

import errno
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["NotWritableError", "atomic_write", "ensure_writable_dir", "write_text_atomic"]


class NotWritableError(ValueError):
    """An output folder that can't be created or written (a ValueError: the CLI prints it as one line)."""


def ensure_writable_dir(path: str | os.PathLike, what: str) -> Path:
    """Make sure files can be created in folder ``path`` (created if missing); returns it as a Path.

    ``what`` names the flag or role in the error (``"--output_dir"``). Raises NotWritableError with one line naming
    the folder, the reason and the fix. The check creates and removes a probe file rather than trusting
    ``os.access``: root passes ``os.access`` on a read-only mount, and ACLs or quotas can refuse what the mode
    bits allow.
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise NotWritableError(f"{what} {folder} is a file, not a folder; choose a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".spinenet-write-check.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise NotWritableError(f"cannot write to {what} {folder} ({_reason(e)}); choose a writable folder or "
                               "fix its permissions") from e
    return folder


def _reason(e: OSError) -> str:
    names = {errno.EACCES: "permission denied", errno.EPERM: "permission denied", errno.EROFS: "read-only file system",
             errno.ENOSPC: "no space left on device", errno.ENOTDIR: "a parent is a file"}
    return names.get(e.errno, e.strerror or str(e))


def current_umask() -> int:
    """The process umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable, *, binary: bool = False, durable: bool = False) -> Path:
    """``write(file)`` into a temporary file beside ``path``, then rename it over ``path``; returns the path.

    A reader never sees a half-written file, and a failure leaves the old file (if any) in place and no
    temporary file behind. The result gets the mode a plain ``open(path, "w")`` would give (0666 less the
    umask: 0644 usually), not ``mkstemp``'s private 0600. ``durable``: fsync before the rename (checkpoints).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            os.fchmod(f.fileno(), 0o666 & ~current_umask())
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def strict_json(value: object) -> object:
    """``value`` with every NaN/±inf float replaced by ``None``: Python's ``json`` would write them as ``NaN``,
    which is not JSON and which strict readers (browsers' ``JSON.parse``, jq, Go, Rust) reject. COCO's per-class
    AP is NaN for a class with no ground truth, so every metrics file goes through this."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(v) for v in value]
    return value


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_write`: the usual permissions, and on any error or
    interrupt the temporary file is removed and ``path`` untouched."""
    return atomic_write(path, lambda f: f.write(text))
