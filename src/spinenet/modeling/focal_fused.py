"""The RetinaNet focal loss of one level's NCHW class map, without a one-hot target and with a hand-written gradient.

:func:`~spinenet.modeling.losses.retinanet_loss` used to flatten the class maps to (B, N, K), build an int64
one-hot target of that shape and let autograd differentiate ~20 element-wise ops, each a full pass (and a fresh
allocation) over B·N·K elements, forward and backward. With K = 91 that tensor is most of the loss's time and
memory. This module computes the same sum from the integer targets directly:

* every element is first scored as a negative, ``f(x) = σ(x)^γ · softplus(x)`` (the reference's
  ``exp(-γ·softplus(-x)) · CE(x, 0)`` rewritten: ``exp(-softplus(-x)) = σ(x)``), weighted ``1 - α``;
* the one positive element per positive anchor (the class channel of its target) is gathered and its term
  replaced by ``α·f(-x)`` (the positive term is the negative term of ``-x``);
* ignored anchors (target :data:`~spinenet.modeling.labeler.IGNORED`) have their logits replaced by -inf before
  anything else, where every term and its derivative is exactly 0 (so, as in the reference's ``where``, a
  non-finite ignored logit stays out of the loss and of the gradient).

In eager mode (:class:`FocalSum`) the derivative ``f'(x) = σ^γ·(σ(x) + γ·σ(-x)·softplus(x))`` is computed in the
same pass as the loss, over cache-sized chunks with a handful of reused buffers, into one gradient tensor that
backward only scales. Under ``torch.compile`` (:func:`focal_sum_traced`) the same math is written as plain
differentiable ops, which the compiler fuses; the autograd graph is then the compiler's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from spinenet.modeling.labeler import IGNORED

# Chunk sizes (elements per scratch buffer). On the CPU five float32 buffers of 2^19 elements per intra-op
# thread (2 MB each) stay in the L2/L3 caches and are reused, so no pass touches fresh memory (a fresh 200 MB
# buffer costs more in page faults than the arithmetic done on it); per thread, so that each parallel op has
# enough work to amortise its barrier. Two interleaved runs on the shared 2-core machine (batch 8, 640²):
# 1 thread: 2^17 382 ms, 2^19 360 ms; 2 threads: 2^18 312 ms, 2^20 235 ms, 2^21 247 ms, 2^22 349 ms (out of
# the L3 cache). On an accelerator the launch count matters more: few, large chunks.
_CPU_CHUNK = 1 << 19
_CPU_CHUNK_MAX = 1 << 21
_DEVICE_CHUNK = 1 << 24
# Smallest normal float32: σ(-x) underflows below it for x > 87.3, where softplus(x) = x to float32 precision.
_TINY = torch.finfo(torch.float32).tiny


def level_targets(cls_targets: Tensor, offset: int, num_anchors: int, height: int, width: int) -> Tensor:
    """(B, A, 1, H·W) view of one level's targets from ``cls_targets`` (B, N) in (level, y, x, anchor) order."""
    b = cls_targets.shape[0]
    t = cls_targets[:, offset:offset + height * width * num_anchors]
    return t.reshape(b, height * width, num_anchors).transpose(1, 2).unsqueeze(2)


def _chunk_limit(device: torch.device) -> int:
    if device.type != "cpu":
        return _DEVICE_CHUNK
    return min(_CPU_CHUNK * torch.get_num_threads(), _CPU_CHUNK_MAX)


def _chunks(shape: torch.Size, limit: int):
    """Index tuples into a (B, A, K, HW) tensor covering it in chunks of at most ~``limit`` elements.

    Whole (image, anchor) blocks are grouped while they fit; a block larger than ``limit`` is split along HW.
    Every chunk is a view of the tensor; the class axis is never split, so a (·, ·, 1, ·) mask slices alike.
    """
    b, a, k, hw = shape
    block = k * hw
    if block * a <= limit:
        step = max(1, limit // (block * a))
        for i in range(0, b, step):
            yield (slice(i, i + step),)
    elif block <= limit:
        step = max(1, limit // block)
        for i in range(b):
            for j in range(0, a, step):
                yield (i, slice(j, j + step))
    else:
        step = max(1, limit // k)
        for i in range(b):
            for j in range(a):
                for c in range(0, hw, step):
                    yield (i, j, slice(None), slice(c, c + step))


def _neg_term(x: Tensor, gamma: float, scale: Tensor, grad_out: Tensor | None,
              bufs: list[Tensor] | None = None) -> Tensor:
    """``-sum(scale·f(x))`` negated back: returns ``sum(scale·f(x))`` and writes ``scale·f'(x)`` to ``grad_out``.

    ``x`` float32 (any layout; -inf where ignored). ``bufs``: four float32 scratch tensors of ``x``'s shape
    (fresh ones when None). Every op writes into a buffer, so a chunk costs no allocation.
    """
    s, q, nsp, m = bufs if bufs is not None else [torch.empty_like(x, dtype=torch.float32) for _ in range(4)]
    torch.sigmoid(x, out=s)  # σ(x); 0 at -inf
    torch.neg(x, out=m)
    torch.sigmoid(m, out=q)  # σ(-x), accurate where σ(x) is close to 1
    # -softplus(x) = log σ(-x), and -softplus(x) <= -x: the min repairs the underflow of σ(-x) for x > 87.3.
    torch.clamp(q, min=_TINY, out=nsp).log_()
    torch.minimum(nsp, m, out=nsp)  # at -inf: min(log 1, +inf) = 0
    if gamma == 1.5:  # the reference's γ; sqrt + mul is 6x cheaper than pow on the CPU
        torch.sqrt(s, out=m).mul_(s)
    elif gamma == 2.0:
        torch.mul(s, s, out=m)
    else:
        torch.pow(s, gamma, out=m)
    m.mul_(scale)  # scale·σ^γ
    if grad_out is not None:
        # f'(x) = σ^γ·(σ(x) + γ·σ(-x)·softplus(x)); q·nsp = -σ(-x)·softplus(x). Computed before m·nsp reuses q.
        torch.mul(torch.addcmul(s, q, nsp, value=-gamma, out=s), m, out=grad_out)
    return -torch.mul(m, nsp, out=q).sum()


class FocalSum(torch.autograd.Function):
    """Focal loss of one level, normalised: ``(1-α)/N_norm · Σ_neg f(x) + α/N_norm · Σ_pos f(-x)``.

    ``logits`` (B, A*K, H, W) (any dtype or memory layout), ``targets`` (B, A, 1, H·W) int (class id / -1 /
    -2) as from :func:`level_targets`, ``w_neg`` = (1-α)/N_norm and ``w_pos`` = α/N_norm float32 scalars.
    The gradient is computed in forward (when needed) and returned scaled by the incoming gradient.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, w_neg: Tensor, w_pos: Tensor, gamma: float,
                num_classes: int) -> Tensor:
        b, _, h, w = logits.shape
        x = logits.view(b, -1, num_classes, h * w)  # (B, A, K, HW), a view in NCHW and in channels_last
        keep = targets != IGNORED
        need_grad = ctx.needs_input_grad[0]
        grad = torch.empty_like(logits).view(x.shape) if need_grad else None
        on_cpu = x.device.type == "cpu"
        limit = _chunk_limit(x.device)
        flat = torch.empty(5, min(max(limit, num_classes), x.numel()), dtype=torch.float32, device=x.device)
        neg_inf = torch.tensor(float("-inf"), dtype=torch.float32, device=x.device)
        # The reference's thresholds (0.5 / 0.5) ignore no anchor: then the masking pass is skipped. Asking costs
        # a host read, free on the CPU only; elsewhere the mask is always applied.
        masked = not on_cpu or bool((~keep).any())
        views: dict[torch.Size, list[Tensor]] = {}  # scratch views per chunk shape (most chunks share one)
        parts = []
        for index in _chunks(x.shape, limit):
            xc = x[index]
            bufs = views.get(xc.shape)
            if bufs is None:
                bufs = views[xc.shape] = [t[: xc.numel()].view(xc.shape) for t in flat]
            if xc.dtype != torch.float32:
                xc = bufs[4].copy_(xc)
            if masked:  # (aliasing out and input is fine for an element-wise op)
                xc = torch.where(keep[index], xc, neg_inf, out=bufs[4])
            parts.append(_neg_term(xc, gamma, w_neg, grad[index] if need_grad else None, bufs[:4]))
        loss = torch.stack(parts).sum()

        # Positive anchors: one element each, at the class channel; replace its negative term by α·f(-x).
        positive = targets >= 0
        index = targets.clamp(min=0).long()  # (B, A, 1, HW); 0 for the others, masked below
        xp = x.gather(2, index).float()
        g_neg = torch.empty_like(xp) if need_grad else None
        g_pos = torch.empty_like(xp) if need_grad else None
        # Per-anchor terms, masked: only positive anchors count (the others' gathered channel 0 is a negative).
        neg_at_pos = _neg_term(torch.where(positive, xp, neg_inf), gamma, w_neg, g_neg)
        pos_at_pos = _neg_term(torch.where(positive, -xp, neg_inf), gamma, w_pos, g_pos)
        loss = loss - neg_at_pos + pos_at_pos
        if need_grad:
            # d/dx α·f(-x) = -α·f'(-x); written over the negative derivative there, not added to it.
            grad.scatter_(2, index, torch.where(positive, -g_pos.to(grad.dtype), grad.gather(2, index)))
            ctx.grad = grad.view(logits.shape)
        return loss

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        grad = ctx.grad
        if grad is None:
            raise RuntimeError("FocalSum's gradient was already handed out: backward through the focal loss "
                               "twice (retain_graph=True) is not supported; recompute the loss instead")
        ctx.grad = None  # hand the tensor over (autograd may keep it as .grad without a copy)
        # grad_output is 1 for a plain loss.backward(): skip a pass over the largest tensor of the step. The
        # check reads the value on the CPU only, where it does not synchronise anything.
        if not (grad_output.device.type == "cpu" and grad_output.item() == 1.0):
            grad = grad.mul_(grad_output.to(grad.dtype))
        return grad, None, None, None, None, None


def focal_sum_traced(logits: Tensor, targets: Tensor, w_neg: Tensor, w_pos: Tensor, gamma: float,
                     num_classes: int) -> Tensor:
    """:class:`FocalSum`'s value as plain differentiable ops, for ``torch.compile`` to fuse (no graph break).

    Same math and arguments; the modulator is the reference's ``exp(-γ·softplus(-x))`` (autograd-safe at -inf
    for every γ >= 0). The gradient at a positive element is the negative term's plus the correction's, equal
    to the reference's up to float32 rounding of that sum.
    """
    b, _, h, w = logits.shape
    x = logits.view(b, -1, num_classes, h * w).float()
    xm = torch.where(targets != IGNORED, x, float("-inf"))
    loss = w_neg * _f_traced(xm, gamma).sum()
    positive = targets >= 0
    xg = x.gather(2, targets.clamp(min=0).long())
    pos_term = _f_traced(torch.where(positive, -xg, float("-inf")), gamma).sum()
    neg_term = _f_traced(torch.where(positive, xg, float("-inf")), gamma).sum()
    return loss + w_pos * pos_term - w_neg * neg_term


def _f_traced(x: Tensor, gamma: float) -> Tensor:
    return torch.exp(-gamma * F.softplus(-x)) * F.softplus(x)
