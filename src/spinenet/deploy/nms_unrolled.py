"""Greedy NMS keep vector in a fixed number of rounds: no ``Loop``, no data-dependent control flow.

The rounds are those of :func:`~spinenet.deploy.postprocess_export._greedy_keep` (read that docstring for why
each decision is greedy NMS's): i is *dropped* once a kept j suppresses it, *kept* once no kept j suppresses it
and no undecided j could. Every decision is final and right, so after any number of rounds the kept set is a
subset of greedy's and the dropped set a subset of greedy's dropped set; only undecided candidates are unknown.

Exactness. Candidate i is decided by round ``1 + max(round of j : j could suppress i)`` at the latest: the rounds
needed are at most the length of the longest chain of valid, same-class, overlapping candidates (j1 could suppress
j2, which could suppress j3 ...), at most k. No bound below k holds for every input (greedy NMS is inherently
sequential), so the round count is a measured bound with margin (:data:`DEFAULT_NMS_ROUNDS`, figures in
benchmarks/RESULTS.md), and the outputs never hold a wrong detection when it is too small: the detections are the
kept candidates *before the first undecided one* (:func:`greedy_keep_unrolled`), which is greedy's own list cut
short. The outputs are exactly the reference's whenever at least ``max_total_size`` candidates are kept before the
first undecided one, or none is left undecided; otherwise ``NumDetections`` is smaller than the reference's (never
a different box). :func:`greedy_rounds_needed` measures both round counts on real data (host side, eager).

Each round is two products, (B, 1, k) @ (B, k, k), of 0/1 values, compared with zero. Unlike the one-product
round of the ``Loop`` version (counts weighted by 4096, sums up to 2^23), this stays exact when ATC compiles
the MatMul in float16 (``--precision_mode`` force_fp16, Ascend 310's default): a sum of 0/1 is zero or at
least one in any precision. Sync-free: no host read of a tensor, so it also runs inside a CUDA graph.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Measured (benchmarks/ascend_export.py, benchmarks/RESULTS.md 2026-12-05): the outputs of the 200 held-out synthetic
# images are decided after at most 8 rounds (every candidate after 9), the TF1 fixture's after 3 (7). 32 leaves a
# 4x margin for crowded real images, for ~300 graph nodes more than 16 would and 63 small MatMuls on the NPU.
DEFAULT_NMS_ROUNDS = 32


def greedy_keep_unrolled(valid: Tensor, suppress: Tensor, rounds: int, *,
                         with_undecided: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Greedy NMS keep vector (B, 1, k) bool after ``rounds`` rounds, cut at the first undecided candidate.

    ``valid`` (B, 1, k) bool; ``suppress`` (B, k, k) float 0/1, [j, i] = 1 when j < i and a kept j suppresses i
    (both as for :func:`~spinenet.deploy.postprocess_export._greedy_keep`). Candidates after the first one still
    undecided are returned as not kept, so the result is always a prefix (in priority order) of greedy's list.
    ``with_undecided=True`` also returns (B, 1) bool: some candidate is still undecided (the cut happened), for a
    check outside the graph (:mod:`spinenet.deploy.compiled`).
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    kept, undecided = _rounds(valid, suppress, rounds)
    k = int(valid.shape[-1])  # a Python int, so that the traced graph holds constants, not Shape arithmetic
    # k..1 falls with the position (exact in float32 for k < 2^24): the first undecided has the largest key.
    position_key = torch.arange(k, 0, -1, dtype=torch.float32, device=valid.device)
    first_undecided = torch.amax(torch.where(undecided, position_key, torch.zeros_like(position_key)), dim=-1,
                                 keepdim=True)  # (B, 1, 1); 0 when every candidate is decided
    kept = kept & (position_key > first_undecided)
    return (kept, first_undecided.squeeze(-1) > 0) if with_undecided else kept


def _rounds(valid: Tensor, suppress: Tensor, rounds: int) -> tuple[Tensor, Tensor]:
    kept = torch.zeros_like(valid)
    undecided = valid
    for i in range(rounds):
        if i == 0:  # nothing is kept yet, so nothing is suppressed by a kept candidate: one product
            by_undecided = torch.matmul(undecided.to(suppress.dtype), suppress) > 0.0
            kept, undecided = undecided & ~by_undecided, undecided & by_undecided
        else:
            kept, undecided = _next_round(kept, undecided, suppress)
    return kept, undecided


@torch.no_grad()
def greedy_rounds_needed(valid: Tensor, suppress: Tensor, max_total_size: int) -> tuple[Tensor, Tensor]:
    """Per batch element: (rounds until the first ``max_total_size`` kept are decided, rounds until every
    candidate is decided), int64 (B,) each. The first is what :func:`greedy_keep_unrolled` needs for exact
    outputs. Eager and host-synchronising: a measuring tool, not for graphs."""
    kept = torch.zeros_like(valid)
    undecided = valid
    batch = valid.shape[0]
    outputs_done = torch.full((batch,), -1, dtype=torch.long)
    all_done = torch.full((batch,), -1, dtype=torch.long)
    k = valid.shape[-1]
    position = torch.arange(k, device=valid.device)
    for r in range(k + 1):
        for b in range(batch):
            und = undecided[b, 0]
            first = int(position[und][0]) if bool(und.any()) else k
            if outputs_done[b] < 0 and (not bool(und.any()) or int(kept[b, 0, :first].sum()) >= max_total_size):
                outputs_done[b] = r
            if all_done[b] < 0 and not bool(und.any()):
                all_done[b] = r
        if not bool(undecided.any()):
            break
        kept, undecided = _next_round(kept, undecided, suppress)
    return outputs_done, all_done


def _next_round(kept: Tensor, undecided: Tensor, suppress: Tensor) -> tuple[Tensor, Tensor]:
    by_kept = torch.matmul(kept.to(suppress.dtype), suppress) > 0.0
    by_undecided = torch.matmul(undecided.to(suppress.dtype), suppress) > 0.0
    return kept | (undecided & ~by_kept & ~by_undecided), undecided & ~by_kept & by_undecided
