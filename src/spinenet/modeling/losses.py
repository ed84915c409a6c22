"""RetinaNet training losses and the L2 term, as the TF1 reference computes them (spec §4.5, §1.2).

``modeling/losses.py``: ``focal_loss``, ``RetinanetClassLoss``, ``RetinanetBoxLoss``; ``retinanet_model.py``:
``model_loss = cls_loss + box_loss_weight * box_loss``; ``base_model.py``: ``l2_weight_decay * sum(l2_loss(v))``
over the variables named ``.*(kernel|weight):0$``. Losses are computed in float32 whatever the model's dtype
(the reference casts bfloat16 head outputs to float32 first).

:func:`retinanet_loss` computes the focal term with :mod:`spinenet.modeling.focal_fused` (no one-hot, a
hand-written gradient); :func:`focal_loss_sum` keeps the reference's element-wise formula, on which the tests
check the fused one (and ``benchmarks/loss_speed.py`` keeps the whole one-hot ``retinanet_loss`` it replaced).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spinenet.modeling.focal_fused import FocalSum, focal_sum_traced, level_targets
from spinenet.modeling.postprocess import _check_maps, _flatten_level

# The reference divides by ``normalizer + 1e-20``; a no-op in float32 once N >= 1, kept for fidelity.
_TINY = 1e-20


@dataclass(frozen=True)
class LossParams:
    """``retinanet_loss`` defaults of the reference (γ = 1.5, not the paper's 2)."""

    focal_loss_alpha: float = 0.25
    focal_loss_gamma: float = 1.5
    huber_loss_delta: float = 0.1
    box_loss_weight: float = 50.0


def focal_loss_sum(logits: Tensor, targets: Tensor, alpha: float, gamma: float) -> Tensor:
    """Sum of the reference's sigmoid focal loss over all elements of ``logits`` / ``targets`` (same shape).

    ``targets`` holds 0/1. Per element: ``CE = sigmoid_cross_entropy_with_logits(z, x)``,
    ``modulator = exp(-γ·z·x - γ·softplus(-x)) = (1 - p_t)^γ``, weight α where z == 1 else 1 - α. TF writes
    ``log1p(exp(-x))``, which overflows to inf for x < -88 in float32 and turns a positive's modulator into 0
    instead of 1; ``softplus`` is the same function computed stably. Returns a float32 scalar, unnormalized.
    """
    return _focal_elements(logits, targets, alpha, gamma).sum()


def huber_loss_sum(pred: Tensor, target: Tensor, delta: float, weights: Tensor | None = None) -> Tensor:
    """``tf.losses.huber_loss(target, pred, weights, delta, reduction=SUM)``: a float32 scalar.

    Per element with e = pred - target: ``0.5·min(|e|, δ)² + δ·(|e| - min(|e|, δ))``, i.e. 0.5e² for |e| <= δ
    and δ(|e| - δ/2) above (no division by δ, unlike ``smooth_l1``). ``weights`` defaults to ``target != 0``,
    the reference's mask, which keeps positive anchors only (and drops any target coordinate that is exactly 0).
    """
    pred, target = pred.float(), target.float()
    if weights is None:
        weights = target != 0.0
    abs_error = (pred - target).abs()
    quadratic = abs_error.clamp(max=delta)
    linear = abs_error - quadratic
    losses = 0.5 * quadratic * quadratic + delta * linear
    return (losses * weights.to(losses.dtype)).sum()


def retinanet_loss(cls_outputs: dict[int, Tensor], box_outputs: dict[int, Tensor], cls_targets: Tensor,
                   box_targets: Tensor, num_positives: Tensor, params: LossParams | None = None,
                   num_classes: int = 91) -> dict[str, Tensor]:
    """RetinaNet losses of one (per-replica) batch.

    ``cls_outputs[l]`` (B, A*K, H_l, W_l), channel ``a*K + c``; ``box_outputs[l]`` (B, A*4, H_l, W_l);
    ``cls_targets`` (B, N) int (class id / -1 / -2), ``box_targets`` (B, N, 4), ``num_positives`` (B,), all in
    anchor order (level, y, x, anchor). With ``N_norm = sum(num_positives) + 1``:
    ``cls_loss = focal_sum / N_norm`` (anchors with target -2 masked out), ``box_loss = huber_sum / (4 N_norm)``,
    ``total_loss = cls_loss + box_loss_weight * box_loss``. Returns float32 scalars ``total_loss``,
    ``cls_loss``, ``box_loss``; the L2 term is :func:`l2_regularization`, added by the caller.
    """
    params = params or LossParams()
    levels = _check_maps(cls_outputs, box_outputs, num_classes)
    deltas = torch.cat([_flatten_level(box_outputs[level], 4) for level in levels], dim=1)  # (B, N, 4)
    batch = deltas.shape[0]
    if cls_targets.shape != (batch, deltas.shape[1]) or box_targets.shape != deltas.shape:
        raise ValueError(f"targets cls {tuple(cls_targets.shape)} / box {tuple(box_targets.shape)} do not match "
                         f"the head outputs (B, N) = {(batch, deltas.shape[1])}: were the anchors built for "
                         "another image size or anchor configuration?")
    # The reference sums num_positives over its local batch and adds 1.0 (no moving average, momentum 0).
    normalizer = num_positives.float().sum() + 1.0
    denominator = normalizer + _TINY

    # Focal loss per level, straight from the NCHW maps and the integer targets (no (B, N, K) one-hot): the
    # reference's one_hot(-1 or -2) is an all-zero row, so negatives and background channel 0 score as
    # negatives, a target c >= 0 makes channel c positive, and ignored anchors (-2) drop out (focal_fused.py).
    w_neg = (1.0 - params.focal_loss_alpha) / denominator
    w_pos = params.focal_loss_alpha / denominator
    focal = FocalSum.apply if not torch.compiler.is_compiling() else focal_sum_traced
    cls_loss, offset = None, 0
    for level in levels:
        logits = cls_outputs[level]
        num_anchors, (height, width) = logits.shape[1] // num_classes, logits.shape[2:]
        targets = level_targets(cls_targets, offset, num_anchors, height, width)
        part = focal(logits, targets, w_neg, w_pos, params.focal_loss_gamma, num_classes)
        cls_loss = part if cls_loss is None else cls_loss + part
        offset += num_anchors * height * width

    box_loss = huber_loss_sum(deltas, box_targets, params.huber_loss_delta) / (normalizer * 4.0 + _TINY)
    total = cls_loss + params.box_loss_weight * box_loss
    return {"total_loss": total, "cls_loss": cls_loss, "box_loss": box_loss}


def _focal_elements(logits: Tensor, targets: Tensor, alpha: float, gamma: float) -> Tensor:
    """Per-element focal loss (shape of ``logits``), float32; see :func:`focal_loss_sum`."""
    x = logits.float()
    z = targets.to(x.dtype)
    ce = F.binary_cross_entropy_with_logits(x, z, reduction="none")  # max(x, 0) - x·z + log1p(exp(-|x|))
    loss = torch.exp(-gamma * z * x - gamma * F.softplus(-x)) * ce  # modulator (1 - p_t)^γ times CE
    return torch.where(z == 1.0, alpha * loss, (1.0 - alpha) * loss)


def l2_regularization(model: nn.Module, weight_decay: float) -> Tensor:
    """``weight_decay * sum(w²) / 2`` over the trainable conv kernels of ``model`` (a float32 scalar).

    The reference's regex ``.*(kernel|weight):0$`` matches every conv kernel (backbone, head towers, head
    predictors) and nothing else in this model: not the biases, not BN gamma/beta. Here: the 4-D ``weight`` of
    each ``nn.Conv2d`` with ``requires_grad`` (the reference takes trainable variables), each counted once even
    when a conv is shared (the head's convs serve all levels). A conv with ``l2_exempt = True`` is left out: the
    builder sets it where the convention's reference leaves a kernel unregularized (Model Garden's depthwise
    kernels in SpineNet-Mobile; :mod:`spinenet.modeling.spinenet_mobile`).
    """
    kernels: dict[int, Tensor] = {}
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module.weight.requires_grad and not getattr(module, "l2_exempt", False):
            kernels[id(module.weight)] = module.weight
    if not kernels:
        device = next(model.parameters(), torch.zeros(())).device
        return torch.zeros((), dtype=torch.float32, device=device)
    # tf.nn.l2_loss(v) = sum(v²) / 2, here as ||v||² from one multi-tensor norm: on CUDA one fused kernel
    # launch for all ~200 kernels (forward and backward) instead of three per kernel.
    weights = [w if w.dtype == torch.float32 else w.float() for w in kernels.values()]
    total = torch.stack(torch._foreach_norm(weights, 2)).square().sum()
    return weight_decay * total / 2.0
