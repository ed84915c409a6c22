"""TF1 variable names of our modules, in the TF1 code's creation order (split out of :mod:`spinenet.convert.tpu`,
which re-exports these names; SpineNet-MBConv's layout is :func:`spinenet.convert.mobile_map.tf1_mobile_layout`).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from spinenet.convert.model_garden import BN_FIELDS
from spinenet.modeling.layers import Bottleneck, ConvNormAct
from spinenet.modeling.spinenet import SpineNet

# ---------------------------------------------------------------------------------------------------------
# The layout: our modules in TF1 creation order, with their TF1 variable names.
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayoutEntry:
    tf_name: str  # variable prefix, e.g. spinenet/sub_policy3/scale_permuted_block_5/conv2d_2
    kind: str  # "conv" (kernel), "conv_bias" (kernel + bias) or "bn"
    module: nn.Module

    def variables(self) -> list[str]:
        leaves = {"conv": ("kernel",), "conv_bias": ("kernel", "bias"), "bn": tuple(BN_FIELDS)}[self.kind]
        return [f"{self.tf_name}/{leaf}" for leaf in leaves]


class _Scopes:
    """``tf.layers`` auto-naming: a counter per (variable scope, layer type)."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}
        self.entries: list[LayoutEntry] = []

    def unit(self, scope: str, unit: ConvNormAct) -> None:
        self.entries.append(LayoutEntry(self._name(scope, "conv2d"), "conv", unit.conv))
        self.entries.append(LayoutEntry(self._name(scope, "batch_normalization"), "bn", unit.norm))

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
    entries = s.entries
    head = model.head
    for tf_net, net in (("class", head.class_net), ("box", head.box_net)):
        base = f"retinanet/{tf_net}_net/{tf_net}"
        entries += [LayoutEntry(f"{base}-{i}", "conv_bias", conv) for i, conv in enumerate(net.convs)]
        entries += [LayoutEntry(f"{base}-{i}-{lvl}", "bn", norm)
                    for lvl in net.levels for i, norm in enumerate(net.norms[str(lvl)])]
        entries.append(LayoutEntry(f"{base}-predict", "conv_bias", net.predict))
    return entries


