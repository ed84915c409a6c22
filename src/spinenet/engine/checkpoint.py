"""Self-describing checkpoints: weights + variant + resolved config + label map + format version.

They load with ``torch.load(weights_only=True)`` (plain dicts, lists, strings, numbers and tensors only) and are
written atomically: a temporary file in the same folder, flushed and fsynced, then renamed over the target, so
a crash never leaves a half-written checkpoint under the real name.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from spinenet.config import ConfigError, ExperimentConfig, config_from_dict, config_to_dict

FORMAT_NAME = "spinenet-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that can't be used: wrong kind of file, truncated, or weights of another model."""


def make_checkpoint(model: torch.nn.Module, cfg: ExperimentConfig, *, variant: str,
                    label_map: dict[int, str] | None = None, extra: dict[str, Any] | None = None) -> dict:
    """The checkpoint dict for ``model`` (built from ``cfg``)."""
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "variant": variant,
        "model_id": cfg.spinenet.model_id,
        "config": config_to_dict(cfg),
        # String keys: a checkpoint must round-trip through JSON-minded tools as well as torch.load.
        "label_map": {str(k): v for k, v in (label_map or {}).items()},
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **(extra or {}),
    }


def save_checkpoint(ckpt: dict, path: str | os.PathLike) -> Path:
    """Write ``ckpt`` to ``path`` atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a checkpoint gets the usual permissions
        with os.fdopen(fd, "wb") as f:
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Load and validate a spinenet checkpoint; errors name the file and say what it looks like instead."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated / foreign files
        hint = ""
        if path.suffix in (".index", ".meta") or ".data-" in path.name or path.suffix == ".pb":
            hint = " It looks like a TensorFlow file: convert it first with `spinenet convert`."
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated or another format: "
                              f"{type(e).__name__}: {str(e).splitlines()[0][:200]}).{hint}") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT_NAME:
        keys = sorted(ckpt)[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path} is not a spinenet checkpoint (found {keys}); make one with "
                              "`spinenet convert` or `spinenet train`")
    if ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {ckpt['format_version']}, newer than this spinenet "
                              f"({FORMAT_VERSION}); upgrade spinenet")
    return ckpt


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
