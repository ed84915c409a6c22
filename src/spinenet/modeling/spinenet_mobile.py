"""SpineNet-Mobile (49, 49S, 49XS): the scale-permuted backbone built from MBConv blocks, as data plus one builder.

Sources: TF1 ``modeling/architecture/spinenet_mbconv.py`` (``tensorflow/tpu``, ``models/official/detection``) and
Model Garden ``official/vision/modeling/backbones/spinenet_mobile.py`` (tf-models-official 2.20). The two files
carry identical ``FILTER_SIZE_MAP``, ``SPINENET_BLOCK_SPECS`` (16 blocks) and ``SCALING_MAP`` (TF1 lines 35-85,
Model Garden lines 33-86); ``tests/modeling/test_spinenet_mobile.py`` holds the tables as transcribed data.

Feature indices: 0 and 1 are the stem block groups (level 1 with ``f1`` channels, level 2 with ``f2``); scale-permuted
block *i* produces feature *i + 2*. Unlike SpineNet there is no max-pool: the 3x3/2 stem conv is the only thing
before the stem MBConvs, and resampling down is a chain of 3x3/2 depthwise convs (BN + act each), one per level.

Where the two references differ (the ``convention`` switch; see also :mod:`spinenet.modeling.mbconv` and
``docs`` of :class:`SpineNetMobile`):

==================  =============================================  ============================================
difference          TF1 (``convention="tpu"``)                      Model Garden (``"model_garden"``)
==================  =============================================  ============================================
SE inner / gate     swish / sigmoid (``nn_ops.py:582-584``)         relu / hard_sigmoid x0.16667
                                                                   (``nn_blocks.py:512``, ``spinenet_mobile.py:242``)
BN momentum / eps   0.997 / 1e-4 (``nn_ops.py:109-110``)            0.99 / 1e-3 (``spinenet_mobile.py:150-151``);
                                                                   config preset, ``spinenet.config``
stride-2 padding    symmetric (``nn_ops.py:375,529`` fixed_padding)  Keras 'same', extra pixel after
                                                                   (``spinenet_mobile.py:279,443``)
anchor order        aspect ratios [1, 2, 0.5] (base_config)        [0.5, 1, 2] (the mobile YAMLs); config preset
L2 coverage         every conv kernel incl. depthwise, head         backbone depthwise and head-tower separable
                    separable (regex ``.*(kernel|weight):0$``)      kernels unregularized (``nn_blocks.py:520``
                                                                   regularize_depthwise=False; dense_prediction_
                                                                   heads.py:124-127 tower, 152-161 predictors)
stochastic depth    ``init * (i + 1) / 16`` (spinenet_mbconv.py:204)  ``init * (i + 1) / 16`` (spinenet_mobile.py:388,
                                                                   nn_layers.py:206): the same; only the recipes
                                                                   differ (TF1 YAML: none; Model Garden: 0.2)
level clamp         none (out-of-range output level is an error)    ``level = min(level, max_level)`` (l. 323)
==================  =============================================  ============================================
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from spinenet.modeling.layers import ConvNormAct, check_convention, get_activation
from spinenet.modeling.mbconv import DEFAULT_EXPAND_RATIO, MBConvGroup
from spinenet.modeling.spinenet import BlockSpec

# Base filter count per level, including level 0 (the stem conv) and 1 (the first stem block).
MOBILE_FILTER_SIZE_MAP = {0: 8, 1: 16, 2: 24, 3: 40, 4: 80, 5: 112, 6: 112, 7: 112}

# (level, block_fn, input_offsets, is_output): ``SPINENET_BLOCK_SPECS`` of both references, every variant.
MOBILE_BLOCK_SPECS = tuple(BlockSpec(*row) for row in [
    (2, "mbconv", (0, 1), False),
    (2, "mbconv", (1, 2), False),
    (4, "mbconv", (1, 2), False),
    (3, "mbconv", (3, 4), False),
    (4, "mbconv", (3, 5), False),
    (6, "mbconv", (4, 6), False),
    (4, "mbconv", (4, 6), False),
    (5, "mbconv", (7, 8), False),
    (7, "mbconv", (7, 9), False),
    (5, "mbconv", (9, 10), False),
    (5, "mbconv", (9, 11), False),
    (4, "mbconv", (6, 11), True),
    (3, "mbconv", (5, 11), True),
    (5, "mbconv", (8, 13), True),
    (7, "mbconv", (6, 15), True),
    (6, "mbconv", (13, 15), True),
])


@dataclass(frozen=True)
class MobileScaling:
    endpoints_num_filters: int
    filter_size_scale: float
    block_repeats: int


MOBILE_SCALING_MAP = {
    "49": MobileScaling(48, 1.0, 1),
    "49S": MobileScaling(40, 0.65, 1),
    "49XS": MobileScaling(24, 0.6, 1),
}
MOBILE_MODEL_IDS = tuple(MOBILE_SCALING_MAP)


def get_mobile_scaling(model_id: str) -> MobileScaling:
    if model_id not in MOBILE_SCALING_MAP:
        raise ValueError(f"unknown SpineNet-Mobile model_id {model_id!r}; valid: {', '.join(MOBILE_SCALING_MAP)}")
    return MOBILE_SCALING_MAP[model_id]


def mobile_filters(level: int, filter_size_scale: float) -> int:
    return int(MOBILE_FILTER_SIZE_MAP[level] * filter_size_scale)  # Python int() truncation, as both references


class MobileResample(nn.Module):
    """``resample_with_sepconv``: ``down`` (one 3x3/2 depthwise conv + BN + act per level), or nearest upsampling,
    then ``proj``: 1x1 conv to the target width + BN, no activation."""

    def __init__(self, in_ch: int, in_level: int, out_ch: int, out_level: int, *, activation: str, **kw):
        super().__init__()
        self.down = nn.Sequential(*[ConvNormAct(in_ch, in_ch, 3, 2, activation=activation, groups=in_ch, **kw)
                                    for _ in range(max(out_level - in_level, 0))])
        self.upsample = 2 ** (in_level - out_level) if in_level > out_level else 1
        self.proj = ConvNormAct(in_ch, out_ch, 1, activation=None, **kw)

    def forward(self, x: Tensor) -> Tensor:
        x = self.down(x)
        if self.upsample > 1:
            x = F.interpolate(x, scale_factor=self.upsample, mode="nearest")  # integer factor: pixel repeat
        return self.proj(x)


class MobileScalePermutedBlock(nn.Module):
    """Resample two parents, add them (plus unused same-shape features for output blocks), act, MBConv group."""

    def __init__(self, spec: BlockSpec, parents: list[tuple[int, int]], extra_inputs: tuple[int, ...], filters: int,
                 repeats: int, drop_rate: float | None, *, activation: str, se_ratio: float, expand_ratio: int,
                 **kw):
        super().__init__()
        self.input_offsets = spec.input_offsets
        self.extra_inputs = extra_inputs
        self.resample = nn.ModuleList(MobileResample(ch, lvl, filters, spec.level, activation=activation, **kw)
                                      for lvl, ch in parents)
        self.act = get_activation(activation)
        self.group = MBConvGroup(filters, filters, repeats, activation=activation, se_ratio=se_ratio,
                                 expand_ratio=expand_ratio, drop_rate=drop_rate, **kw)

    def forward(self, feats: list[Tensor]) -> Tensor:
        x0, x1 = (rs(feats[j]) for rs, j in zip(self.resample, self.input_offsets, strict=True))
        x = x0 + x1
        for j in self.extra_inputs:
            x = x + feats[j]
        return self.group(self.act(x))


class SpineNetMobile(nn.Module):
    """``forward(images (B, 3, H, W)) -> {level: (B, endpoints_num_filters, H/2^l, W/2^l)}``; H, W multiples of
    ``2**max_level``.

    Module names (stable; the importers map onto them):
    ``stem.{conv,norm}``; ``stem_blocks.{0,1}.0.{expand,depthwise,project}.{conv,norm}``,
    ``stem_blocks.{g}.0.se.{reduce,expand}``; ``blocks.{i}.resample.{0,1}.down.{k}.{conv,norm}`` (k-th stride-2
    step), ``blocks.{i}.resample.{p}.proj.{conv,norm}``, ``blocks.{i}.group.0.{expand,depthwise,se,project}...``;
    ``endpoints.{level}.{conv,norm}``.
    """

    def __init__(self, model_id: str = "49", *, min_level: int = 3, max_level: int = 7, activation: str = "swish",
                 se_ratio: float = 0.2, expand_ratio: int = DEFAULT_EXPAND_RATIO,
                 init_drop_connect_rate: float | None = None, convention: str = "tpu", bn_momentum: float = 0.003,
                 bn_eps: float = 1e-4, block_specs=MOBILE_BLOCK_SPECS, scaling: MobileScaling | None = None):
        super().__init__()
        check_convention(convention)
        sc = scaling if scaling is not None else get_mobile_scaling(model_id)
        self.model_id, self.scaling, self.min_level, self.max_level = model_id, sc, min_level, max_level
        self.convention = convention
        kw = dict(convention=convention, bn_momentum=bn_momentum, bn_eps=bn_eps)
        blk = dict(activation=activation, se_ratio=se_ratio, expand_ratio=expand_ratio, **kw)
        f = [mobile_filters(lvl, sc.filter_size_scale) for lvl in range(3)]

        self.stem = ConvNormAct(3, f[0], 3, 2, activation=activation, **kw)
        self.stem_blocks = nn.ModuleList([
            MBConvGroup(f[0], f[1], sc.block_repeats, stride=1, **blk),
            MBConvGroup(f[1], f[2], sc.block_repeats, stride=2, **blk),
        ])

        feats: list[tuple[int, int]] = [(1, f[1]), (2, f[2])]  # (level, channels) per feature
        out_degree = [0, 0]
        n = len(block_specs)
        blocks, outputs = [], {}
        for i, spec in enumerate(block_specs):
            if convention == "model_garden":  # spinenet_mobile.py:323 clamps; TF1 keeps the level
                spec = BlockSpec(min(spec.level, max_level), spec.block_fn, spec.input_offsets, spec.is_output)
            filters = mobile_filters(spec.level, sc.filter_size_scale)
            for j in spec.input_offsets:
                if j >= len(feats):
                    raise ValueError(f"block {i}: input offset {j} is out of the {len(feats)} existing features")
                out_degree[j] += 1
            extra: list[int] = []
            if spec.is_output:
                for j, (lvl, ch) in enumerate(feats):
                    if out_degree[j] == 0 and lvl == spec.level and ch == filters:
                        extra.append(j)
                        out_degree[j] += 1
            rate = init_drop_connect_rate * (i + 1) / n if init_drop_connect_rate is not None else None
            blocks.append(MobileScalePermutedBlock(spec, [feats[j] for j in spec.input_offsets], tuple(extra),
                                                   filters, sc.block_repeats, rate, **blk))
            feats.append((spec.level, filters))
            out_degree.append(0)
            if spec.is_output:
                if spec.level in outputs:
                    raise ValueError(f"block specs have two output blocks at level {spec.level}")
                outputs[spec.level] = i + 2
        self.blocks = nn.ModuleList(blocks)
        missing = [lvl for lvl in range(min_level, max_level + 1) if lvl not in outputs]
        if missing:
            raise ValueError(f"block specs have no output block for levels {missing}")
        self.output_index = outputs
        self.endpoints = nn.ModuleDict({
            str(lvl): ConvNormAct(feats[outputs[lvl]][1], sc.endpoints_num_filters, 1, activation=activation, **kw)
            for lvl in range(min_level, max_level + 1)})
        self.out_channels = sc.endpoints_num_filters
        if convention == "model_garden":  # depthwise kernels get no kernel_regularizer there (module docstring)
            for m in self.modules():
                if isinstance(m, nn.Conv2d) and m.groups > 1:
                    m.l2_exempt = True
        self.feature_info = [dict(level=lvl, channels=sc.endpoints_num_filters, stride=2**lvl)
                             for lvl in range(min_level, max_level + 1)]

    def forward(self, images: Tensor) -> dict[int, Tensor]:
        x = self.stem(images)
        feats = []
        for group in self.stem_blocks:
            x = group(x)
            feats.append(x)
        for block in self.blocks:
            feats.append(block(feats))
        return {lvl: self.endpoints[str(lvl)](feats[self.output_index[lvl]])
                for lvl in range(self.min_level, self.max_level + 1)}
