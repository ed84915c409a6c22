"""RetinaNet head (``heads.py:RetinanetHead``, spec §3): class and box subnets whose convs are shared across
levels (with bias) while each level has its own BN.

SpineNet-Mobile's recipes set ``use_separable_conv: true``: every 3x3 conv of both towers and both predictors is
then a depthwise 3x3 (no bias) followed by a pointwise 1x1 with the bias (TF1 ``heads.py:481-544``
``tf.layers.separable_conv2d(depth_multiplier=1)``; Model Garden ``dense_prediction_heads.py``
``SeparableConv2D``), module names ``convs.{i}.depthwise`` / ``convs.{i}.pointwise`` and ``predict.depthwise`` /
``predict.pointwise``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from spinenet.modeling.layers import BatchNorm2dTF, get_activation


class SeparableConv2d(nn.Module):
    """Depthwise 3x3 (``groups=in_ch``, no bias, 'same') then pointwise 1x1 with bias: Keras ``SeparableConv2D``.

    ``l2_exempt`` (set by the builder) keeps both kernels out of the L2 term, as Model Garden does for the head's
    tower convs (``dense_prediction_heads.py:124-127`` regularizes only the non-separable kind).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, *, std: float | None = None):
        super().__init__()
        self.depthwise = nn.Conv2d(in_ch, in_ch, kernel_size, padding=(kernel_size - 1) // 2, groups=in_ch,
                                   bias=False)
        self.pointwise = nn.Conv2d(in_ch, out_ch, 1, bias=True)
        for conv in (self.depthwise, self.pointwise):
            if std is None:
                # Glorot uniform: what both references' tower convs get (Keras SeparableConv2D's default, Model
                # Garden passing no initializer; tf.layers.separable_conv2d's in TF1). torch's fans for (C, 1, k, k)
                # sum to Keras's for (k, k, C, 1). A small normal init here (x BN epsilon 1e-3) stalls training.
                nn.init.xavier_uniform_(conv.weight)
            else:
                nn.init.normal_(conv.weight, std=std)
        nn.init.zeros_(self.pointwise.bias)

    @property
    def in_channels(self) -> int:
        return self.depthwise.in_channels

    @property
    def out_channels(self) -> int:
        return self.pointwise.out_channels

    @property
    def bias(self) -> Tensor:
        return self.pointwise.bias

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x))


class Subnet(nn.Module):
    """``num_convs`` x (3x3 conv shared over levels -> per-level BN -> act), then a shared 3x3 predictor."""

    def __init__(self, in_ch: int, num_filters: int, num_convs: int, out_ch: int, levels: list[int], *,
                 activation: str, bn_momentum: float, bn_eps: float, prior_bias: float = 0.0,
                 separable: bool = False):
        super().__init__()
        self.levels = levels
        self.separable = separable
        if separable:  # predictors N(0, 0.03) as Model Garden (dense_prediction_heads.py:152-161)
            self.convs = nn.ModuleList(
                SeparableConv2d(in_ch if i == 0 else num_filters, num_filters) for i in range(num_convs))
        else:
            self.convs = nn.ModuleList(
                nn.Conv2d(in_ch if i == 0 else num_filters, num_filters, 3, padding=1) for i in range(num_convs))
        # norms[str(level)][i]: the BN after conv i at that level (TF names ``class-{i}-{level}``).
        self.norms = nn.ModuleDict({
            str(lvl): nn.ModuleList(BatchNorm2dTF(num_filters, eps=bn_eps, momentum=bn_momentum)
                                    for _ in range(num_convs)) for lvl in levels})
        self.act = get_activation(activation)
        if separable:
            self.predict = SeparableConv2d(num_filters, out_ch, std=0.03)
        else:
            self.predict = nn.Conv2d(num_filters, out_ch, 3, padding=1)
            for conv in self.convs:
                nn.init.normal_(conv.weight, std=0.01)
                nn.init.zeros_(conv.bias)
            nn.init.normal_(self.predict.weight, std=1e-5)
        with torch.no_grad():
            self.predict.bias.fill_(prior_bias)

    def forward(self, x: Tensor, level: int) -> Tensor:
        for conv, norm in zip(self.convs, self.norms[str(level)], strict=True):
            x = self.act(norm(conv(x)))
        return self.predict(x)


class RetinaNetHead(nn.Module):
    """``forward({level: (B, C, H_l, W_l)}) -> (cls {level: (B, A*K, H_l, W_l)}, box {level: (B, A*4, H_l, W_l)})``.

    Class channel ``a*K + c`` (anchor outer, class inner, K includes background 0); box channel ``a*4 + k`` with
    k in [ty, tx, th, tw], as the reference's reshapes expect.
    """

    def __init__(self, in_channels: int, num_classes: int, num_anchors: int, *, min_level: int = 3,
                 max_level: int = 7, num_convs: int = 4, num_filters: int = 256, activation: str = "swish",
                 bn_momentum: float = 0.003, bn_eps: float = 1e-4, prior_prob: float = 0.01,
                 use_separable_conv: bool = False):
        super().__init__()
        levels = list(range(min_level, max_level + 1))
        self.num_classes, self.num_anchors = num_classes, num_anchors
        # False once an inference rewrite has removed the never-read background channels of the class
        # predictor (spinenet.deploy.optimize): the class maps then have A*(K-1) channels, a*(K-1) + c - 1.
        self.background_channel = True
        kw = dict(activation=activation, bn_momentum=bn_momentum, bn_eps=bn_eps, separable=use_separable_conv)
        prior_bias = -math.log((1 - prior_prob) / prior_prob)  # -4.59512 for 0.01
        self.class_net = Subnet(in_channels, num_filters, num_convs, num_classes * num_anchors, levels,
                                prior_bias=prior_bias, **kw)
        self.box_net = Subnet(in_channels, num_filters, num_convs, 4 * num_anchors, levels, **kw)

    def forward(self, features: dict[int, Tensor]) -> tuple[dict[int, Tensor], dict[int, Tensor]]:
        cls_outputs = {lvl: self.class_net(f, lvl) for lvl, f in features.items()}
        box_outputs = {lvl: self.box_net(f, lvl) for lvl, f in features.items()}
        return cls_outputs, box_outputs
