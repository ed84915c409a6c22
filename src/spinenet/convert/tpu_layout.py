"""TF1 variable names of our modules, in the TF1 code's creation order (split out of :mod:`spinenet.convert.tpu`,
which re-exports these names; SpineNet-MBConv's layout is :func:`spinenet.convert.mobile_map.tf1_mobile_layout`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from spinenet.convert.model_garden import BN_FIELDS, _Assigner
from spinenet.modeling.layers import Bottleneck, ConvNormAct
from spinenet.modeling.spinenet import SpineNet

# ---------------------------------------------------------------------------------------------------------
# The layout: our modules in TF1 creation order, with their TF1 variable names.
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayoutEntry:
    tf_name: str  # variable prefix, e.g. spinenet/sub_policy3/scale_permuted_block_5/conv2d_2
    kind: str  # "conv" (kernel), "conv_bias" (kernel + bias), "depthwise", "separable" or "bn"
    module: nn.Module

    def variables(self) -> list[str]:
        return [f"{self.tf_name}/{leaf}" for leaf in LEAVES[self.kind]]

    def assign(self, a: _Assigner, values: dict[str, np.ndarray]) -> None:
        """Put this entry's TF values (by leaf name) into ``a``."""
        if self.kind == "bn":
            a.bn(self.module, values, self.tf_name)
        elif self.kind == "depthwise":
            a.depthwise(self.module, values["depthwise_kernel"], self.tf_name)
        elif self.kind == "separable":
            a.separable(self.module, values, self.tf_name)
        else:
            a.conv(self.module, values["kernel"], values.get("bias"), self.tf_name)


LEAVES = {"conv": ("kernel",), "conv_bias": ("kernel", "bias"), "depthwise": ("depthwise_kernel",),
          "separable": ("depthwise_kernel", "pointwise_kernel", "bias"), "bn": tuple(BN_FIELDS)}


class _Scopes:
    """``tf.layers`` auto-naming: a counter per (variable scope, layer type)."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}
        self.entries: list[LayoutEntry] = []

    def unit(self, scope: str, unit: ConvNormAct) -> None:
        """conv (``depthwise_conv2d`` when grouped, as SpineNet-MBConv's ``DepthwiseConv2D``) then its BN."""
        if unit.conv.groups > 1:
            self.entries.append(LayoutEntry(self._name(scope, "depthwise_conv2d"), "depthwise", unit.conv))
        else:
            self.entries.append(LayoutEntry(self._name(scope, "conv2d"), "conv", unit.conv))
        self.entries.append(LayoutEntry(self._name(scope, "batch_normalization"), "bn", unit.norm))

    def conv_bias(self, scope: str, conv: nn.Conv2d) -> None:
        """A ``tf.layers.Conv2D`` with bias (SpineNet-MBConv's squeeze-and-excitation)."""
        self.entries.append(LayoutEntry(self._name(scope, "conv2d"), "conv_bias", conv))

    def _name(self, scope: str, base: str) -> str:
        k = self.counts.get((scope, base), 0)
        self.counts[(scope, base)] = k + 1
        return f"{scope}/{base}" if k == 0 else f"{scope}/{base}_{k}"


def _block_units_tf1_order(blk: nn.Module) -> list[ConvNormAct]:
    """A bottleneck/residual block's conv+BN units in the order the TF1 code creates them (shortcut first)."""
    units = [blk.shortcut] if blk.shortcut is not None else []
    units += [blk.conv1, blk.conv2] + ([blk.conv3] if isinstance(blk, Bottleneck) else [])
    return units


def tf1_variable_layout(model: nn.Module) -> list[LayoutEntry]:
    """Every conv/BN of a :class:`~spinenet.modeling.retinanet.RetinaNet` with its TF1 variable prefix."""
    backbone: SpineNet = model.backbone
    s = _Scopes()
    s.unit("spinenet", backbone.stem)
    for group in backbone.stem_blocks:  # stem_block_1, stem_block_2: no variable scope of their own
        for blk in group:
            for unit in _block_units_tf1_order(blk):
                s.unit("spinenet", unit)
    for i, block in enumerate(backbone.blocks):
        for j, r in enumerate(block.resample):
            scope = f"spinenet/sub_policy{i}/resample_with_alpha_resample_{i}_{j}"
            for unit in (r.reduce, r.down, r.expand):
                if unit is not None:
                    s.unit(scope, unit)
        for blk in block.group:
            for unit in _block_units_tf1_order(blk):
                s.unit(f"spinenet/sub_policy{i}/scale_permuted_block_{i + 2}", unit)
    for lvl in range(backbone.min_level, backbone.max_level + 1):
        s.unit("spinenet", backbone.endpoints[str(lvl)])
    return s.entries + tf1_head_layout(model.head)


def tf1_head_layout(head: nn.Module) -> list[LayoutEntry]:
    """The head's shared convs ``…-{i}``, per-level BNs ``…-{i}-{level}`` and predictor ``…-predict`` (plain convs
    with bias, or ``tf.layers.separable_conv2d`` when the head is separable)."""
    entries = []
    for tf_net, net in (("class", head.class_net), ("box", head.box_net)):
        base = f"retinanet/{tf_net}_net/{tf_net}"
        kind = "conv_bias" if isinstance(net.predict, nn.Conv2d) else "separable"
        entries += [LayoutEntry(f"{base}-{i}", kind, conv) for i, conv in enumerate(net.convs)]
        entries += [LayoutEntry(f"{base}-{i}-{lvl}", "bn", norm)
                    for lvl in net.levels for i, norm in enumerate(net.norms[str(lvl)])]
        entries.append(LayoutEntry(f"{base}-predict", kind, net.predict))
    return entries


