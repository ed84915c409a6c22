"""Learning-rate schedules of the reference (``modeling/learning_rates.py``), as pure functions of the step."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class StepWithWarmup:
    """``step_learning_rate_with_linear_warmup``: linear warm-up, then piecewise-constant levels.

    ``lr(step) = warmup_lr + step / warmup_steps * (init_lr - warmup_lr)`` for ``step < warmup_steps``; then
    ``init_lr``, replaced by ``levels[i]`` once ``step >= steps[i]``.
    """

    warmup_learning_rate: float
    warmup_steps: int
    init_learning_rate: float
    learning_rate_levels: Sequence[float] = ()
    learning_rate_steps: Sequence[int] = ()

    def __post_init__(self):
        if len(self.learning_rate_levels) != len(self.learning_rate_steps):
            raise ValueError("learning_rate_levels and learning_rate_steps must have the same length")

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_learning_rate + step / self.warmup_steps * (
                self.init_learning_rate - self.warmup_learning_rate)
        lr = self.init_learning_rate
        for level, start in zip(self.learning_rate_levels, self.learning_rate_steps, strict=True):
            if step >= start:
                lr = level
        return lr


@dataclass(frozen=True)
class CosineWithWarmup:
    """``cosine_learning_rate_with_linear_warmup``: linear warm-up, then cosine decay to 0 at ``total_steps``."""

    warmup_learning_rate: float
    warmup_steps: int
    init_learning_rate: float
    total_steps: int

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_learning_rate + step / self.warmup_steps * (
                self.init_learning_rate - self.warmup_learning_rate)
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return self.init_learning_rate * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_schedule(cfg) -> StepWithWarmup | CosineWithWarmup:
    """From an :class:`~spinenet.config.ExperimentConfig` (``train.learning_rate``, ``train.total_steps``)."""
    lr = cfg.train.learning_rate
    if lr.type == "step":
        return StepWithWarmup(lr.warmup_learning_rate, lr.warmup_steps, lr.init_learning_rate,
                              tuple(lr.learning_rate_levels), tuple(lr.learning_rate_steps))
    if lr.type == "cosine":
        return CosineWithWarmup(lr.warmup_learning_rate, lr.warmup_steps, lr.init_learning_rate,
                                cfg.train.total_steps)
    raise ValueError(f"train.learning_rate.type {lr.type!r} is not supported; valid: step, cosine")
