"""MBConv (inverted bottleneck) and squeeze-and-excitation blocks of SpineNet-Mobile, and the per-convention
numerics of the family.

References (file:line at the versions this project reads):

* TF1 (``tensorflow/tpu`` ``models/official/detection``): ``modeling/architecture/nn_blocks.py:182``
  (``mbconv_block``), ``nn_ops.py:540`` (``squeeze_excitation``), ``nn_ops.py:510``
  (``depthwise_conv2d_fixed_padding``).
* Model Garden (``tf-models-official`` 2.20, ``official/vision/modeling``): ``layers/nn_blocks.py:497``
  (``InvertedBottleneckBlock``), ``layers/nn_layers.py:89`` (``SqueezeExcitation``), ``layers/nn_layers.py:31``
  (``make_divisible``; with ``divisible_by=1`` it returns its input, so both references reduce to
  ``max(1, int(in_filters * se_ratio))`` SE channels), ``official/modeling/activations/sigmoid.py:21``
  (``hard_sigmoid``: ``relu6(x + 3) * 0.16667``, not ``/ 6``).

Both SE blocks squeeze the *un-expanded* ``in_filters`` (TF1 ``nn_ops.py:558``; Model Garden
``expand_se_in_filters=False``, ``nn_blocks.py:515``) and excite the expanded width; they differ only in the two
activations, which :data:`SE_ACTIVATIONS` holds per convention.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from spinenet.modeling.layers import ConvNormAct, DropConnect, check_convention, get_activation

DEFAULT_EXPAND_RATIO = 6  # TF1 spinenet_mbconv.py:33; Model Garden spinenet_mobile.py SpineNetMobile(expand_ratio=6)

# convention -> (SE inner activation, SE gate). TF1 nn_ops.py:582-584: swish, sigmoid. Model Garden
# spinenet_mobile.py:242 passes se_gating_activation='hard_sigmoid' and leaves se_inner_activation at the
# InvertedBottleneckBlock default 'relu' (nn_blocks.py:512).
SE_ACTIVATIONS = {"tpu": ("swish", "sigmoid"), "model_garden": ("relu", "hard_sigmoid")}


class HardSigmoid(nn.Module):
    """Model Garden's ``hard_sigmoid``: ``relu6(x + 3) * 0.16667`` (its constant, so maps match to float32)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.relu6(x + 3.0) * 0.16667


def _gate(name: str) -> nn.Module:
    return nn.Sigmoid() if name == "sigmoid" else HardSigmoid()


class SqueezeExcite(nn.Module):
    """Global mean -> 1x1 ``reduce`` (bias) -> inner act -> 1x1 ``expand`` (bias) -> gate, times the input."""

    def __init__(self, in_filters: int, channels: int, se_ratio: float, *, convention: str):
        super().__init__()
        inner, gate = SE_ACTIVATIONS[check_convention(convention)]
        reduced = max(1, int(in_filters * se_ratio))
        self.reduce = nn.Conv2d(channels, reduced, 1, bias=True)
        self.act = get_activation(inner)
        self.expand = nn.Conv2d(reduced, channels, 1, bias=True)
        self.gate = _gate(gate)
        for conv in (self.reduce, self.expand):
            nn.init.kaiming_normal_(conv.weight, nonlinearity="linear")
            nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        return x * self.gate(self.expand(self.act(self.reduce(s))))


class MBConv(nn.Module):
    """Inverted bottleneck: 1x1 ``expand`` (x ``expand_ratio``, BN, act) -> 3x3 ``depthwise`` (BN, act) ->
    ``se`` -> 1x1 ``project`` (BN, no act) -> + input when shapes match (stochastic depth on the branch).

    No activation after the residual sum (both references). Stride 2 pads as the convention's strided convs do
    (:class:`~spinenet.modeling.layers.Conv2dTF`).
    """

    def __init__(self, in_filters: int, out_filters: int, *, stride: int = 1, expand_ratio: int = DEFAULT_EXPAND_RATIO,
                 se_ratio: float | None = 0.2, activation: str, drop_rate: float | None = None,
                 convention: str = "tpu", bn_momentum: float = 0.003, bn_eps: float = 1e-4):
        super().__init__()
        kw = dict(convention=convention, bn_momentum=bn_momentum, bn_eps=bn_eps)
        mid = in_filters * expand_ratio
        self.expand = ConvNormAct(in_filters, mid, 1, activation=activation, **kw) if expand_ratio != 1 else None
        self.depthwise = ConvNormAct(mid, mid, 3, stride, activation=activation, groups=mid, **kw)
        self.se = (SqueezeExcite(in_filters, mid, se_ratio, convention=convention)
                   if se_ratio is not None and 0 < se_ratio <= 1 else None)
        self.project = ConvNormAct(mid, out_filters, 1, activation=None, **kw)
        self.residual = in_filters == out_filters and stride == 1
        self.drop = DropConnect(drop_rate if self.residual else None)

    def forward(self, x: Tensor) -> Tensor:
        y = x if self.expand is None else self.expand(x)
        y = self.depthwise(y)
        if self.se is not None:
            y = self.se(y)
        y = self.project(y)
        return self.drop(y) + x if self.residual else y


class MBConvGroup(nn.Sequential):
    """``block_repeats`` MBConv blocks, only the first strided (``spinenet_mbconv.py:block_group``).

    Every published variant has ``block_repeats = 1``. (Model Garden's repeat loop feeds each extra block the
    group's *input*, ``spinenet_mobile.py:_block_group``, a bug that never runs; this follows TF1's chaining.)
    """

    def __init__(self, in_filters: int, out_filters: int, repeats: int, *, stride: int = 1, **block_kw):
        super().__init__(*[MBConv(in_filters if i == 0 else out_filters, out_filters, stride=stride if i == 0 else 1,
                                  **block_kw) for i in range(repeats)])
        self.out_channels = out_filters
