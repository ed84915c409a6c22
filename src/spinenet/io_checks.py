"""Checks and writes at the file-system edge: fail before the work when the output can't be written, and never
leave a half-written file under its real name (a temporary file beside it, renamed over it when complete)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["NotWritableError", "ensure_writable_dir", "write_text_atomic"]


class NotWritableError(ValueError):
    """An output folder that can't be created or written (a ValueError: the CLI prints it as one line)."""


def ensure_writable_dir(path: str | os.PathLike, what: str) -> Path:
    """Create folder ``path`` if missing and prove it writable by creating (and removing) a file in it.

    ``what`` names the folder for the message ("evaluation output folder"). ``os.access`` is not enough: it
    says nothing of a read-only mount and follows the real, not the effective, user; a real file is the test.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotWritableError(f"{what} {path} exists and is not a folder; choose a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except OSError as e:
        raise NotWritableError(f"cannot write to {what} {path}: {e.strerror or e}; choose a folder you can "
                               "write to (or fix its permissions)") from e
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` via a temporary file in the same folder and a rename, with the usual
    0666 & ~umask permissions; on any error or interrupt the temporary file is removed and ``path`` untouched."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
