"""What ``--resume`` continues from, and whether the new command line may continue it.

A resume must give the run an uninterrupted run would have given, so a change to anything that shapes the
trajectory (model, data, batch, augmentation, loss, optimiser, schedule, seed, ranks x accumulation, precision)
is refused, naming each key with both values. :data:`ALLOWED_CHANGES` lists the config keys that may change
(each with why); the command-line options not in :func:`run_settings` (workers, ``--eval_every``,
``--checkpoint_every``, ``--keep_last``, ``--max_steps``, ``--log_every``, progress, device, TensorBoard) never
alter the trajectory and may always change. Accepted changes are printed, logged and kept in the checkpoint.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from spinenet.config import config_to_dict
from spinenet.engine.checkpoint import CheckpointError, load_state_dict_strict, read_checkpoint
from spinenet.engine.distributed import on_main
from spinenet.engine.run_dir import BEST_NAME, CONFIG_NAME, checkpoint_step, list_checkpoints, warn

# Config keys (dotted; a trailing "." covers a section) a resume may change, with the reason it is safe.
ALLOWED_CHANGES: dict[str, str] = {
    "train.total_steps": "where the run ends (refused with the cosine schedule, whose every step depends on it)",
    "train.iterations_per_loop": "a TPU host-loop setting; unused here",
    "train.checkpoint.": "the initial checkpoint; only read when a run starts",
    "eval.eval_batch_size": "evaluation batching; not training",
    "eval.per_category_metrics": "what evaluation prints",
    "model_dir": "where the run is",
    "use_tpu": "the seed's TPU flag; unused here",
    "platform.": "the seed's TPU runtime settings; unused here",
    "enable_summary": "TensorBoard switch of the seed; unused here",
}


def _allowed(key: str, old: dict, new: dict) -> bool:
    if key == "train.total_steps" and "cosine" in (_get(old, "train.learning_rate.type"),
                                                    _get(new, "train.learning_rate.type")):
        return False
    return any(key == a or (a.endswith(".") and key.startswith(a)) for a in ALLOWED_CHANGES)


def _get(d: dict, dotted: str):
    for part in dotted.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


def config_changes(old: dict, new: dict, prefix: str = "") -> dict[str, tuple]:
    """Every dotted key whose value differs between two nested config dicts: ``{key: (old, new)}``."""
    out: dict[str, tuple] = {}
    for k in sorted(set(old) | set(new), key=str):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out.update(config_changes(a, b, f"{prefix}{k}."))
        elif a != b:
            out[f"{prefix}{k}"] = (a, b)
    return out


def file_digest(path: str | Path) -> str:
    if not Path(path).is_file():
        raise FileNotFoundError(f"annotations {path} do not exist")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run_settings(*, seed: int, accum_steps: int, world_size: int, precision: str, train_annotations: str,
                 val_annotations: str | None) -> dict:
    """The command-line settings that shape the run (stored in each checkpoint, compared on resume).

    Annotations are compared by content, not path, so a moved dataset still resumes; ``precision`` is the
    resolved one (``auto`` is bf16 on GPU, fp32 on CPU).
    """
    return {"seed": seed, "accum_steps": accum_steps, "world_size": world_size, "precision": precision,
            "train_annotations_sha256": file_digest(train_annotations),
            "val_annotations_sha256": file_digest(val_annotations) if val_annotations else None}


_RUN_NAMES = {"seed": "--seed", "accum_steps": "--accum_steps", "world_size": "number of processes",
              "precision": "precision (--precision on this device)",
              "train_annotations_sha256": "training annotations (sha256)",
              "val_annotations_sha256": "evaluation annotations (sha256)"}


def check_resume(ckpt: dict, source: Path, new_config: dict, new_run: dict, model_dir: Path) -> dict[str, list]:
    """Refuse a resume that would alter the run; return the accepted changes ``{key: [old, new]}``.

    Checkpoints from before run settings were recorded are compared on their config only.
    """
    changes = config_changes(ckpt["config"], new_config)
    old_run = ckpt.get("run")
    if old_run is not None:
        for k, (a, b) in config_changes(old_run, new_run).items():
            if k == "val_annotations_sha256" and a is None:
                continue  # adding an evaluation set to a run that had none changes no trajectory or best metric
            changes[_RUN_NAMES.get(k, k)] = (a, b)
    refused = {k: v for k, v in changes.items() if not _allowed(k, ckpt["config"], new_config)}
    if refused:
        shown = ", ".join(f"{k} {_short(a)} -> {_short(b)}" for k, (a, b) in refused.items())
        raise ValueError(f"cannot resume {source} with these changes: {shown}. They alter the run; resume with "
                         f"the same settings (the config is in {model_dir / CONFIG_NAME}), or start a new "
                         "--model_dir with --init_checkpoint. Allowed to change: "
                         f"{', '.join(k.rstrip('.') for k in ALLOWED_CHANGES)} and the options that don't "
                         "shape training (workers, --eval_every, --checkpoint_every, --keep_last, --max_steps, "
                         "--log_every, --device)")
    return {k: [a, b] for k, (a, b) in changes.items()}


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 70 else text[:67] + "..."


def select_checkpoint(model_dir: Path, resume_from: str | None) -> tuple[Path, dict] | None:
    """The checkpoint to resume from: ``resume_from`` if given, else the newest readable ``ckpt-STEP.pt``.

    Unreadable newer checkpoints (cut off, zero bytes) are skipped with a warning naming each and renamed to
    ``NAME.unreadable``; readable ones newer than the chosen one (``--resume_from`` an earlier step) are renamed
    to ``NAME.superseded``. Both keep the files for the user while taking them out of the run, so a later
    ``--resume`` continues this run and pruning counts only its checkpoints. Call while holding the lock.
    """
    if resume_from is not None:
        chosen = Path(resume_from)
        ckpt = read_checkpoint(chosen)
    else:
        chosen, ckpt = None, None
        for path in reversed(list_checkpoints(model_dir)):
            try:
                ckpt = read_checkpoint(path)
            except CheckpointError as e:
                warn(f"skipping {path}: {e}")
                _set_aside(path, "unreadable")
                continue
            chosen = path
            break
        if chosen is None:
            return None
    for path in list_checkpoints(model_dir):
        if checkpoint_step(path) > ckpt["step"]:
            _set_aside(path, "superseded")
    return chosen, ckpt


def _set_aside(path: Path, why: str) -> None:
    target = path.with_name(f"{path.name}.{why}")
    path.replace(target)
    print(f"moved {path.name} aside to {target.name} ({why}); it is no longer part of this run")


def recorded_best(model_dir: Path) -> float | None:
    """The metric ``best.pt`` holds, so that a new best is only ever written over a worse one.

    Read memory-mapped, without loading the weights. An unreadable ``best.pt`` holds no metric: warn.
    """
    path = Path(model_dir) / BEST_NAME
    if not path.exists():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        value = ckpt.get("best_metric")
        return float(value) if value is not None else None
    except Exception as e:  # noqa: BLE001 - any unreadable file: keep training, say so
        warn(f"{path} is unreadable ({type(e).__name__}); the next evaluation will replace it")
        return None


def start_point(model_dir: Path, resume: bool, resume_from: str | None) -> tuple[Path, dict] | None:
    """On the rank that holds the lock: tidy the folder, then the checkpoint to continue from (or None: start).

    A folder holding a run is never started over without ``--resume``: its checkpoints would be overwritten.
    """
    from spinenet.engine.run_dir import remove_partial_writes

    remove_partial_writes(model_dir)
    existing = list_checkpoints(model_dir) + [p for p in [model_dir / BEST_NAME] if p.exists()]
    if not (resume or resume_from):
        if existing:
            raise ValueError(f"{model_dir} already holds checkpoints ({existing[-1].name}); pass --resume to "
                             "continue that run or choose another --model_dir")
        return None
    found = select_checkpoint(model_dir, resume_from)
    if found is None:
        print(f"no checkpoint to resume in {model_dir}; starting a new run")
    return found


@dataclass
class ResumeState:
    """Where training starts: step 0 of a new run, or a checkpoint's step, data position, best metric, RNG."""

    source: Path | None = None
    step: int = 0
    data_position: dict = field(default_factory=dict)
    best: float | None = None
    rng: dict | None = None  # this rank's RNG states, restored just before the first step
    history: list = field(default_factory=list)  # every accepted change of every resume: [{step, changes}]
    changes: dict = field(default_factory=dict)  # this resume's accepted changes


def resume_run(model_dir: Path, resume: bool, resume_from: str | None, cfg, run: dict, detector, optimizer,
               dist_info) -> ResumeState:
    """Choose the checkpoint (rank 0, which holds the lock), check the new settings against it (every rank, so
    all refuse together), and load the weights and optimiser state into ``detector`` and ``optimizer``."""
    chosen: dict = {}

    def choose():
        found = start_point(model_dir, resume, resume_from)
        if found is None:
            return None
        chosen["ckpt"] = found[1]
        return str(found[0])  # only the path goes to the other ranks, which read the file themselves

    source = on_main(choose, dist_info)
    if source is None:
        return ResumeState()
    source = Path(source)
    ckpt = chosen.pop("ckpt", None) or read_checkpoint(source)
    changes = check_resume(ckpt, source, config_to_dict(cfg), run, model_dir)
    load_state_dict_strict(detector, ckpt["model"], str(source))
    optimizer.load_state_dict(ckpt["optimizer"])
    step = ckpt["step"]
    history = list(ckpt.get("resume_changes", [])) + ([{"step": step, "changes": changes}] if changes else [])
    state = ResumeState(source, step, ckpt["data_position"], ckpt.get("best_metric"),
                        ckpt["rng"][min(dist_info.rank, len(ckpt["rng"]) - 1)], history, changes)
    if dist_info.is_main:
        state.best = max_metric(state.best, recorded_best(model_dir))  # best.pt may be newer than the checkpoint
        print(f"resumed from {source} at step {step}" + "".join(
            f"; changed {k} {a!r} -> {b!r}" for k, (a, b) in changes.items()))
    return state


def max_metric(a: float | None, b: float | None) -> float | None:
    return max((v for v in (a, b) if v is not None), default=None)
