"""The SpineNet backbone, described as data (a block-spec table and a scaling map) and built by one builder.

Source of every number: ``shared/spec/spinenet-reference.md`` §2 (TF1 ``spinenet.py``). Feature indices:
0 and 1 are the two stem block groups (level 2); scale-permuted block *i* produces feature *i + 2*.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from spinenet.modeling.layers import BLOCK_FNS, BlockGroup, ConvNormAct, MaxPoolSame, check_convention, get_activation

# Base block filter count per level (``FILTER_SIZE_MAP``).
FILTER_SIZE_MAP = {1: 32, 2: 64, 3: 128, 4: 256, 5: 256, 6: 256, 7: 256}


@dataclass(frozen=True)
class BlockSpec:
    level: int
    block_fn: str  # "bottleneck" | "residual"
    input_offsets: tuple[int, int]
    is_output: bool


# (level, block_fn, input_offsets, is_output): ``SPINENET_BLOCK_SPECS``, the same for every variant.
SPINENET_BLOCK_SPECS = tuple(BlockSpec(*row) for row in [
    (2, "bottleneck", (0, 1), False),
    (4, "residual", (0, 1), False),
    (3, "bottleneck", (2, 3), False),
    (4, "bottleneck", (2, 4), False),
    (6, "residual", (3, 5), False),
    (4, "bottleneck", (3, 5), False),
    (5, "residual", (6, 7), False),
    (7, "residual", (6, 8), False),
    (5, "bottleneck", (8, 9), False),
    (5, "bottleneck", (8, 10), False),
    (4, "bottleneck", (5, 10), True),
    (3, "bottleneck", (4, 10), True),
    (5, "bottleneck", (7, 12), True),
    (7, "bottleneck", (5, 14), True),
    (6, "bottleneck", (12, 14), True),
])


@dataclass(frozen=True)
class Scaling:
    endpoints_num_filters: int
    filter_size_scale: float
    resample_alpha: float
    block_repeats: int


# ``SCALING_MAP``: the only thing that differs between variants.
SCALING_MAP = {
    "49S": Scaling(128, 0.65, 0.5, 1),
    "49": Scaling(256, 1.0, 0.5, 1),
    "96": Scaling(256, 1.0, 0.5, 2),
    "143": Scaling(256, 1.0, 1.0, 3),
    "190": Scaling(512, 1.3, 1.0, 4),
}


def get_scaling(model_id: str) -> Scaling:
    if model_id not in SCALING_MAP:
        raise ValueError(f"unknown SpineNet model_id {model_id!r}; valid: {', '.join(SCALING_MAP)}")
    return SCALING_MAP[model_id]


def level_filters(level: int, filter_size_scale: float) -> int:
    return int(FILTER_SIZE_MAP[level] * filter_size_scale)  # Python int() truncation, as the reference


class Resample(nn.Module):
    """``resample_with_alpha``: bring a parent feature to a target level and width.

    1x1 (parent -> alpha-scaled width) -> [3x3 stride 2 -> max-pool(s)] or nearest upsample -> 1x1 to the
    target width, BN without activation. The ↓8 case pools once with k5/s4 in the TF1 code and twice with
    k3/s2 in Model Garden.
    """

    def __init__(self, in_ch: int, in_block_fn: str, in_level: int, out_ch: int, out_level: int, alpha: float,
                 *, activation: str, convention: str, bn_momentum: float, bn_eps: float):
        super().__init__()
        kw = dict(convention=convention, bn_momentum=bn_momentum, bn_eps=bn_eps)
        base = in_ch / 4 if in_block_fn == "bottleneck" else in_ch  # float division, as the reference
        mid = int(base * alpha)
        self.in_level, self.out_level = in_level, out_level
        self.reduce = ConvNormAct(in_ch, mid, 1, activation=activation, **kw)
        self.down = None
        pools: list[nn.Module] = []
        if in_level < out_level:  # higher level = smaller feature map: downsample
            self.down = ConvNormAct(mid, mid, 3, stride=2, activation=activation, **kw)
            ratio = 2 ** (out_level - in_level)
            if convention == "tpu" and ratio > 2:
                pools.append(MaxPoolSame(3 if ratio <= 4 else 5, ratio // 2))
            else:
                pools.extend(MaxPoolSame(3, 2) for _ in range(out_level - in_level - 1))
        self.pools = nn.Sequential(*pools)
        self.upsample = 2 ** (in_level - out_level) if in_level > out_level else 1
        self.expand = ConvNormAct(mid, out_ch, 1, activation=None, **kw)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_reduced(self.reduce(x))

    def forward_reduced(self, x: Tensor) -> Tensor:
        """The rest of :meth:`forward` after ``reduce``, for callers that computed ``reduce(x)`` themselves."""
        if self.down is not None:
            x = self.pools(self.down(x))
        elif self.upsample > 1:
            if not self.training:
                # In eval mode ``expand`` (1x1 conv + BN with stored statistics) acts on each pixel alone, so it
                # commutes with pixel repetition: run it before upsampling, on upsample^2 times fewer pixels.
                # Training keeps the reference's order (BN batch statistics are taken on the upsampled map).
                return _upsample(self.expand(x), self.upsample)
            x = _upsample(x, self.upsample)
        return self.expand(x)


def _upsample(x: Tensor, factor: int) -> Tensor:
    return F.interpolate(x, scale_factor=factor, mode="nearest")  # integer factor: pixel repeat


class ScalePermutedBlock(nn.Module):
    """Resample two parents to this block's level, add them (plus any extra same-shape features), act, block group."""

    def __init__(self, spec: BlockSpec, parents: list[tuple[int, str, int]], extra_inputs: tuple[int, ...],
                 filters: int, repeats: int, alpha: float, drop_rate: float | None, *, activation: str,
                 convention: str, bn_momentum: float, bn_eps: float):
        super().__init__()
        kw = dict(activation=activation, convention=convention, bn_momentum=bn_momentum, bn_eps=bn_eps)
        self.input_offsets = spec.input_offsets
        self.extra_inputs = extra_inputs  # out-degree-0 features summed into output blocks
        out_ch = filters * BLOCK_FNS[spec.block_fn].expansion
        self.resample = nn.ModuleList(
            Resample(ch, fn, lvl, out_ch, spec.level, alpha, **kw) for lvl, fn, ch in parents)
        self.act = get_activation(activation)
        self.group = BlockGroup(out_ch, filters, spec.block_fn, repeats, drop_rate=drop_rate, **kw)

    def forward(self, feats: list[Tensor], reduced: list[Tensor | None] | None = None) -> Tensor:
        """``reduced[r]``, when given, is ``resample[r].reduce`` of that parent, computed by the caller."""
        reduced = reduced or [None, None]
        x0, x1 = (rs(feats[j]) if red is None else rs.forward_reduced(red)
                  for rs, j, red in zip(self.resample, self.input_offsets, reduced, strict=True))
        x = x0 + x1
        for j in self.extra_inputs:
            x = x + feats[j]
        return self.group(self.act(x))


class SpineNet(nn.Module):
    """Scale-permuted backbone. ``forward(images (B, 3, H, W)) -> {level: (B, endpoints_num_filters, H/2^l, W/2^l)}``.

    H and W must be multiples of ``2**max_level`` (the reference's input sizes are).
    """

    def __init__(self, model_id: str = "49", *, min_level: int = 3, max_level: int = 7, activation: str = "swish",
                 init_drop_connect_rate: float | None = None, convention: str = "tpu",
                 bn_momentum: float = 0.003, bn_eps: float = 1e-4, block_specs=SPINENET_BLOCK_SPECS,
                 scaling: Scaling | None = None):
        super().__init__()
        check_convention(convention)
        sc = scaling if scaling is not None else get_scaling(model_id)
        self.model_id, self.scaling, self.min_level, self.max_level = model_id, sc, min_level, max_level
        kw = dict(activation=activation, convention=convention, bn_momentum=bn_momentum, bn_eps=bn_eps)

        # Stem: 7x7/2 conv with 64 filters (never scaled), SAME max-pool 3/2, two level-2 bottleneck groups.
        self.stem = ConvNormAct(3, 64, 7, stride=2, **kw)
        self.stem_pool = MaxPoolSame(3, 2)
        f2 = level_filters(2, sc.filter_size_scale)
        self.stem_blocks = nn.ModuleList([
            BlockGroup(64, f2, "bottleneck", sc.block_repeats, **kw),
            BlockGroup(4 * f2, f2, "bottleneck", sc.block_repeats, **kw),
        ])

        # feature index -> (level, block_fn, channels); track out-degree for the extra output connections.
        feats: list[tuple[int, str, int]] = [(2, "bottleneck", 4 * f2)] * 2
        out_degree = [0, 0]
        n = len(block_specs)
        blocks = []
        for i, spec in enumerate(block_specs):
            filters = level_filters(spec.level, sc.filter_size_scale)
            out_ch = filters * BLOCK_FNS[spec.block_fn].expansion
            for j in spec.input_offsets:
                out_degree[j] += 1
            extra: list[int] = []
            if spec.is_output:
                for j, (lvl, _, ch) in enumerate(feats):
                    if out_degree[j] == 0 and lvl == spec.level and ch == out_ch:
                        extra.append(j)
                        out_degree[j] += 1
            blocks.append(ScalePermutedBlock(
                spec, [feats[j] for j in spec.input_offsets], tuple(extra), filters, sc.block_repeats,
                sc.resample_alpha, drop_connect_rate(init_drop_connect_rate, i, n, convention), **kw))
            feats.append((spec.level, spec.block_fn, out_ch))
            out_degree.append(0)
        self.blocks = nn.ModuleList(blocks)

        # One output block per level; the last one built at a level wins, as in the reference's dict.
        self.output_index = {spec.level: i + 2 for i, spec in enumerate(block_specs) if spec.is_output}
        missing = [lvl for lvl in range(min_level, max_level + 1) if lvl not in self.output_index]
        if missing:
            raise ValueError(f"block specs have no output block for levels {missing}")
        self.endpoints = nn.ModuleDict({
            str(lvl): ConvNormAct(feats[self.output_index[lvl]][2], sc.endpoints_num_filters, 1, **kw)
            for lvl in range(min_level, max_level + 1)})
        self.out_channels = sc.endpoints_num_filters
        self.feature_info = [dict(level=lvl, channels=sc.endpoints_num_filters, stride=2**lvl)
                             for lvl in range(min_level, max_level + 1)]

    def forward(self, images: Tensor) -> dict[int, Tensor]:
        feats = self.stem_features(images)
        for block in self.blocks:
            feats.append(block(feats))
        return self.outputs(feats)

    def stem_features(self, images: Tensor) -> list[Tensor]:
        """The two level-2 features the scale-permuted blocks start from, each (B, 4*f2, H/4, W/4)."""
        x = self.stem_pool(self.stem(images))  # (B, 64, H/4, W/4)
        feats = []
        for group in self.stem_blocks:
            x = group(x)
            feats.append(x)
        return feats

    def outputs(self, feats: list[Tensor]) -> dict[int, Tensor]:
        """The endpoints, from all features (stem features, then one per block)."""
        return {lvl: self.endpoints[str(lvl)](feats[self.output_index[lvl]])
                for lvl in range(self.min_level, self.max_level + 1)}


def drop_connect_rate(init_rate: float | None, block_index: int, num_blocks: int, convention: str) -> float | None:
    """Stochastic-depth rate of scale-permuted block ``block_index`` (0-based).

    TF1: ``init * (i + 1) / 15``. Model Garden counts its 16 specs (it keeps a pruned level-2 output block):
    ``init * (i + 1) / 16``.
    """
    if init_rate is None:
        return None
    total = num_blocks + 1 if convention == "model_garden" else num_blocks
    return init_rate * (block_index + 1) / total
