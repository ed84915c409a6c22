"""Building blocks shared by the backbone and the head: TF-compatible padding, conv + BN + activation,
stochastic depth, and the two ResNet block types SpineNet uses.

Two padding conventions exist because the two reference implementations differ (see
``shared/spec/model-garden-reference.md``):

* ``"tpu"`` (TF1 Cloud TPU code, the default): strided convs pad symmetrically by ``(k-1)//2``
  (``nn_ops.conv2d_fixed_padding``); stride-1 convs use ``'SAME'``, which is symmetric for odd k.
* ``"model_garden"`` (TF2): every conv uses Keras ``'same'``, which for stride 2 on an even input
  pads *less before than after* (7x7/2 at 640: 2 before, 3 after).

Max-pools use TF ``'SAME'`` in both (pad right/bottom first, with -inf).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CONVENTIONS = ("tpu", "model_garden")


def check_convention(convention: str) -> str:
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; valid: {', '.join(CONVENTIONS)}")
    return convention


def tf_same_pad_amounts(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of TF/Keras ``'SAME'`` for one spatial axis."""
    out = -(-size // stride)  # ceil without floats, so symbolic sizes trace cleanly
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def pad_same(x: Tensor, kernel: int, stride: int, value: float = 0.0) -> Tensor:
    """Pad an NCHW tensor the way TF ``'SAME'`` does (the extra pixel goes bottom/right)."""
    top, bottom = tf_same_pad_amounts(x.shape[-2], kernel, stride)
    left, right = tf_same_pad_amounts(x.shape[-1], kernel, stride)
    if top == bottom == left == right == 0:
        return x
    return F.pad(x, (left, right, top, bottom), value=value)


class HardSwish(nn.Module):
    """``x * relu6(x + 3) / 6`` (Model Garden ``activations.hard_swish``), written out as Clip/Add/Mul so the
    exported ONNX graph needs no ``HardSwish`` operator (not on every ATC operator list)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * F.relu6(x + 3.0) * (1.0 / 6.0)


ACTIVATIONS = ("relu", "swish", "hard_swish")


def get_activation(name: str) -> nn.Module:
    if name == "swish":
        return nn.SiLU()
    if name == "relu":
        return nn.ReLU()
    if name == "hard_swish":
        return HardSwish()
    raise ValueError(f"unknown activation {name!r}; valid: {', '.join(ACTIVATIONS)}")


def init_variance_scaling_(weight: Tensor) -> Tensor:
    """TF ``variance_scaling_initializer()``: fan-in, truncated normal with post-truncation std sqrt(1/fan_in)."""
    fan_in = weight.shape[1] * weight.shape[2] * weight.shape[3]
    # 0.8796... is the std of a unit normal truncated at +-2; TF divides by it so the *result* has std sqrt(1/n).
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
    # Rejection sampling (redraw values beyond 2 std) is the same distribution as nn.init.trunc_normal_ and
    # ~10x faster on CPU, which matters when building SpineNet-190 (163 M parameters) in tests.
    if weight.is_meta:  # shape-only models (parameter counting, structure tests) need no values
        return weight
    with torch.no_grad():
        weight.normal_()
        outside = weight.abs() > 2
        while bool(outside.any()):
            weight[outside] = torch.randn(int(outside.sum()), dtype=weight.dtype, device=weight.device)
            outside = weight.abs() > 2
        return weight.mul_(std)


class Conv2dTF(nn.Conv2d):
    """``nn.Conv2d`` with the reference's padding rule for its convention (no bias by default)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, *,
                 convention: str = "tpu", bias: bool = False, groups: int = 1):
        # Symmetric padding is static and free; only Keras 'same' with stride > 1 needs a dynamic pad.
        self.dynamic_same = check_convention(convention) == "model_garden" and stride > 1
        padding = 0 if self.dynamic_same else (kernel_size - 1) // 2
        super().__init__(in_ch, out_ch, kernel_size, stride=stride, padding=padding, bias=bias, groups=groups)

    def forward(self, x: Tensor) -> Tensor:
        if self.dynamic_same:
            x = pad_same(x, self.kernel_size[0], self.stride[0])
        return super().forward(x)


def _ceil_mode_is_same(size: int, kernel: int, stride: int) -> bool:
    """True when an unpadded ``ceil_mode`` max-pool covers the same windows as TF ``'SAME'`` on this axis: TF
    pads nothing before, and both give ceil(size / stride) windows starting at 0, stride apart (ceil_mode's
    last window may run past the end, where SAME's -inf padding sits)."""
    before, _ = tf_same_pad_amounts(size, kernel, stride)
    if before or size < kernel:
        return False
    out = -(-(size - kernel) // stride) + 1  # PyTorch's ceil_mode output size, padding 0
    if (out - 1) * stride >= size:  # a last window starting past the input is dropped
        out -= 1
    return out == -(-size // stride)


class MaxPoolSame(nn.Module):
    """Max-pool with TF ``'SAME'`` padding (-inf fill, extra pixel bottom/right)."""

    def __init__(self, kernel_size: int, stride: int):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, x: Tensor) -> Tensor:
        if all(_ceil_mode_is_same(int(n), self.kernel_size, self.stride) for n in x.shape[-2:]):
            # No padding before and at most a partial last window: ceil_mode pools exactly the same windows,
            # without a Pad (which costs a copy, and in ONNX Runtime a layout change before and after).
            return F.max_pool2d(x, self.kernel_size, self.stride, ceil_mode=True)
        x = pad_same(x, self.kernel_size, self.stride, value=float("-inf"))
        return F.max_pool2d(x, self.kernel_size, self.stride)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


def batchnorm_affine(bn: nn.BatchNorm2d, conv_bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Eval-mode ``bn`` (after a convolution with ``conv_bias``, if any) as a per-channel ``x * scale + shift``."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    if conv_bias is not None:
        shift = shift + conv_bias * scale
    return scale, shift


class BatchNorm2dTF(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training-mode update of ``running_var`` uses the *biased* batch variance.

    The reference YAMLs set ``use_sync_bn: true``, which selects ``nn_ops.BatchNormalization`` (non-fused Keras
    BN): its moments are ``tf.nn.moments``, the population variance, and the moving variance moves towards it.
    ``nn.BatchNorm2d`` moves towards the unbiased one (x n/(n-1), n = batch x H x W), which at 640 px and 8 images
    per replica is 0.5 % larger on level 7 (measured against TF1 in ``tests/engine/test_tf1_training_parity.py``).
    Normalisation (biased variance) and eval mode are unchanged; the state dict is ``nn.BatchNorm2d``'s.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and self.track_running_stats) or self.momentum is None:
            return super().forward(x)
        return self.train_forward(x, self.weight, self.bias)

    def train_forward(self, x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
        """Training mode with the TF moving-statistics update, given the affine parameters (padded ones too:
        :mod:`spinenet.engine.padded`)."""
        self.num_batches_tracked.add_(1)
        # momentum 1 makes F.batch_norm write the batch mean and the unbiased variance into the scratch buffers.
        mean, var = torch.zeros_like(self.running_mean), torch.ones_like(self.running_var)
        out = F.batch_norm(x, mean, var, weight, bias, True, 1.0, self.eps)
        n = x.numel() // x.shape[1]
        with torch.no_grad():  # TF: moving -= (moving - batch) * (1 - decay)
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var * ((n - 1) / n) if n > 1 else var, self.momentum)
        return out


class ConvNormAct(nn.Module):
    """conv -> BN -> optional activation; the unit every SpineNet layer is made of."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, *, activation: str | None,
                 convention: str = "tpu", bn_momentum: float = 0.003, bn_eps: float = 1e-4, groups: int = 1):
        super().__init__()
        self.conv = Conv2dTF(in_ch, out_ch, kernel_size, stride, convention=convention, groups=groups)
        self.norm = BatchNorm2dTF(out_ch, eps=bn_eps, momentum=bn_momentum)
        self.act = get_activation(activation) if activation else nn.Identity()
        init_variance_scaling_(self.conv.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(self.conv(x)))


class DropConnect(nn.Module):
    """Stochastic depth on a residual branch (``nn_ops.drop_connect``): per-sample keep mask, scaled by 1/keep."""

    def __init__(self, rate: float | None):
        super().__init__()
        self.rate = rate if rate and 0.0 < rate < 1.0 else 0.0  # the reference applies it only for 0 < rate < 1

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = torch.floor(keep + torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device))
        return x / keep * mask

    def extra_repr(self) -> str:
        return f"rate={self.rate:.4f}"


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 (x4 expansion) residual block; projection shortcut when shapes differ."""

    expansion = 4

    def __init__(self, in_ch: int, filters: int, *, activation: str, drop_rate: float | None = None,
                 convention: str = "tpu", bn_momentum: float = 0.003, bn_eps: float = 1e-4):
        super().__init__()
        out_ch = filters * self.expansion
        kw = dict(convention=convention, bn_momentum=bn_momentum, bn_eps=bn_eps)
        self.shortcut = ConvNormAct(in_ch, out_ch, 1, activation=None, **kw) if in_ch != out_ch else None
        self.conv1 = ConvNormAct(in_ch, filters, 1, activation=activation, **kw)
        self.conv2 = ConvNormAct(filters, filters, 3, activation=activation, **kw)
        self.conv3 = ConvNormAct(filters, out_ch, 1, activation=None, **kw)
        self.drop = DropConnect(drop_rate)
        self.act = get_activation(activation)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return self.act(self.drop(self.conv3(self.conv2(self.conv1(x)))) + shortcut)


class Residual(nn.Module):
    """Basic 3x3 -> 3x3 residual block; projection shortcut when shapes differ."""

    expansion = 1

    def __init__(self, in_ch: int, filters: int, *, activation: str, drop_rate: float | None = None,
                 convention: str = "tpu", bn_momentum: float = 0.003, bn_eps: float = 1e-4):
        super().__init__()
        kw = dict(convention=convention, bn_momentum=bn_momentum, bn_eps=bn_eps)
        self.shortcut = ConvNormAct(in_ch, filters, 1, activation=None, **kw) if in_ch != filters else None
        self.conv1 = ConvNormAct(in_ch, filters, 3, activation=activation, **kw)
        self.conv2 = ConvNormAct(filters, filters, 3, activation=None, **kw)
        self.drop = DropConnect(drop_rate)
        self.act = get_activation(activation)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return self.act(self.drop(self.conv2(self.conv1(x))) + shortcut)


BLOCK_FNS: dict[str, type[Bottleneck] | type[Residual]] = {"bottleneck": Bottleneck, "residual": Residual}


class BlockGroup(nn.Sequential):
    """``block_repeats`` blocks of one type; only the first may project (``nn_blocks.block_group``)."""

    def __init__(self, in_ch: int, filters: int, block_fn: str, repeats: int, **block_kw):
        cls = BLOCK_FNS[block_fn]
        blocks = [cls(in_ch if i == 0 else filters * cls.expansion, filters, **block_kw) for i in range(repeats)]
        super().__init__(*blocks)
        self.out_channels = filters * cls.expansion
