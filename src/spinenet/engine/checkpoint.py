"""Self-describing checkpoints: weights + variant + resolved config + label map + format version.

They load with ``torch.load(weights_only=True)`` (plain dicts, lists, strings, numbers and tensors only) and are
written atomically: a temporary file in the same folder, flushed and fsynced, then renamed over the target, so
a crash never leaves a half-written checkpoint under the real name. A crash can leave the temporary file; its
name matches :data:`TEMP_NAME`, so the next run in that folder can remove exactly those files.
"""

from __future__ import annotations

import errno
import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from spinenet import io_checks
from spinenet.config import ConfigError, ExperimentConfig, config_from_dict, config_to_dict

FORMAT_NAME = "spinenet-checkpoint"
FORMAT_VERSION = 1


# The temporary names :func:`atomic_write` makes: "." + target name + "." + mkstemp's 8 random characters + ".tmp".
TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.[A-Za-z0-9_]{8}\.tmp$")


class CheckpointError(ValueError):
    """A checkpoint that can't be used: wrong kind of file, truncated, or weights of another model."""


class NoSpaceError(OSError, ValueError):
    """The disk filled while writing ``path``; nothing was written under that name (an earlier file is intact).

    An ``OSError`` (errno ``ENOSPC``) for callers that handle I/O errors, and a ``ValueError`` so that the CLI
    prints it as its one-line error instead of torch's ``inline_container.cc ... unexpected pos``.
    """

    def __init__(self, path: str | os.PathLike, note: str = "any earlier file of that name is intact"):
        super().__init__(errno.ENOSPC, f"No space left on device: {path} (not written; {note}). Free some space "
                                       "or choose another folder", str(path))

    def __str__(self) -> str:
        return self.strerror


class _RecordingWriter:
    """A file wrapper that remembers the first ``OSError`` of a write: torch.save replaces it with a RuntimeError
    (``unexpected pos``) that no longer says the disk is full."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        self.f.flush()


def make_checkpoint(model: torch.nn.Module, cfg: ExperimentConfig, *, variant: str,
                    label_map: dict[int, str] | None = None, extra: dict[str, Any] | None = None) -> dict:
    """The checkpoint dict for ``model`` (built from ``cfg``)."""
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "variant": variant,
        "model_id": (cfg.spinenet_mbconv if cfg.architecture.backbone == "spinenet_mbconv" else cfg.spinenet).model_id,
        "config": config_to_dict(cfg),
        # String keys: a checkpoint must round-trip through JSON-minded tools as well as torch.load.
        "label_map": {str(k): v for k, v in (label_map or {}).items()},
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **(extra or {}),
    }


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None]) -> Path:
    """Call ``write(binary_file)`` on a temporary file beside ``path``, fsync it, rename it over ``path``
    (:func:`spinenet.io_checks.atomic_write`, ``durable=True``).

    On any failure the temporary file is removed and ``path`` is untouched; a full disk is a :class:`NoSpaceError`
    naming ``path``. Only a kill mid-write leaves the temporary file (named as :data:`TEMP_NAME` describes).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recorders: list[_RecordingWriter] = []

    def recorded(f) -> None:
        recorders.append(_RecordingWriter(f))
        write(recorders[0])

    try:
        return io_checks.atomic_write(path, recorded, binary=True, durable=True)
    except BaseException as e:
        first = recorders[0].error if recorders and recorders[0].error is not None else e
        if isinstance(first, OSError) and first.errno in (errno.ENOSPC, errno.EDQUOT):
            raise NoSpaceError(path) from e
        raise


def save_checkpoint(ckpt: dict, path: str | os.PathLike) -> Path:
    """Write ``ckpt`` to ``path`` atomically (see :func:`atomic_write`); returns the path."""
    return atomic_write(path, lambda f: torch.save(ckpt, f))


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Load and validate a spinenet checkpoint; errors name the file and say what it looks like instead."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes), probably cut off by a crash or a full disk; use an "
                              "earlier checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" not in str(e).lower():
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated or another format: "
                                  f"{_first_line(e)})") from e
        # Refused by weights_only: the pickle names Python objects to construct. Say so; never suggest running it.
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(f"{path} holds pickled Python code{what}, not only weights; it was refused and "
                              "nothing in it was run. Use a spinenet checkpoint (`spinenet train` or `spinenet "
                              "convert` make them), or re-save plain tensors from a program you trust") from None
    except Exception as e:  # torch raises several types for truncated / foreign files
        hint = ""
        if path.suffix in (".index", ".meta") or ".data-" in path.name or path.suffix == ".pb":
            hint = " It looks like a TensorFlow file: convert it first with `spinenet convert`."
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated or another format: "
                              f"{_first_line(e)}).{hint}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT_NAME:
        keys = sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path} is not a spinenet checkpoint (found {keys}); make one with "
                              "`spinenet convert` or `spinenet train`")
    if ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {ckpt['format_version']}, newer than this spinenet "
                              f"({FORMAT_VERSION}); upgrade spinenet")
    return ckpt


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__


def checkpoint_config(ckpt: dict, source: str = "checkpoint") -> ExperimentConfig:
    try:
        return config_from_dict(ckpt["config"])
    except ConfigError as e:
        raise CheckpointError(f"{source}: its stored config is invalid: {e}") from e


def load_state_dict_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict`` that never loads partially: any missing, unexpected or mis-shaped key is an error."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state)) if tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
            if items:
                shown = ", ".join(items[:6]) + (f", ... ({len(items)} in all)" if len(items) > 6 else "")
                parts.append(f"{title}: {shown}")
        raise CheckpointError(f"{source} does not fit this model ({'; '.join(parts)}). "
                              "Is it a checkpoint of another variant or class count?")
    model.load_state_dict(state, strict=True)


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """Build the model a checkpoint describes and load its weights. Returns ``(model, ckpt)``, model in eval mode."""
    from spinenet.modeling.factory import build_retinanet

    ckpt = read_checkpoint(path)
    model = build_retinanet(checkpoint_config(ckpt, str(path)))
    load_state_dict_strict(model, ckpt["model"], str(path))
    return model.to(map_location).eval(), ckpt
