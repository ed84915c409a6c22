"""SpineNet-Mobile against the two references' architecture facts, each transcribed here from the reference file."""

import math

import pytest
import torch

from spinenet.modeling.head import RetinaNetHead, SeparableConv2d
from spinenet.modeling.layers import HardSwish
from spinenet.modeling.losses import l2_regularization
from spinenet.modeling.mbconv import HardSigmoid, MBConv
from spinenet.modeling.spinenet_mobile import (
    MOBILE_BLOCK_SPECS,
    MOBILE_FILTER_SIZE_MAP,
    MOBILE_SCALING_MAP,
    SpineNetMobile,
)

# TF1 spinenet_mbconv.py:35-84 and Model Garden spinenet_mobile.py:33-86 (identical in both files).
REFERENCE_FILTER_SIZE_MAP = {0: 8, 1: 16, 2: 24, 3: 40, 4: 80, 5: 112, 6: 112, 7: 112}
REFERENCE_BLOCK_SPECS = [
    (2, (0, 1), False), (2, (1, 2), False), (4, (1, 2), False), (3, (3, 4), False), (4, (3, 5), False),
    (6, (4, 6), False), (4, (4, 6), False), (5, (7, 8), False), (7, (7, 9), False), (5, (9, 10), False),
    (5, (9, 11), False), (4, (6, 11), True), (3, (5, 11), True), (5, (8, 13), True), (7, (6, 15), True),
    (6, (13, 15), True),
]
REFERENCE_SCALING = {"49": (48, 1.0, 1), "49S": (40, 0.65, 1), "49XS": (24, 0.6, 1)}


def meta(model_id="49S", **kw):
    with torch.device("meta"):
        return SpineNetMobile(model_id, **kw)


def test_tables_are_the_references():
    assert MOBILE_FILTER_SIZE_MAP == REFERENCE_FILTER_SIZE_MAP
    assert len(MOBILE_BLOCK_SPECS) == 16
    assert [(s.level, s.input_offsets, s.is_output) for s in MOBILE_BLOCK_SPECS] == REFERENCE_BLOCK_SPECS
    assert all(s.block_fn == "mbconv" for s in MOBILE_BLOCK_SPECS)
    assert {k: (v.endpoints_num_filters, v.filter_size_scale, v.block_repeats)
            for k, v in MOBILE_SCALING_MAP.items()} == REFERENCE_SCALING


def test_49s_names_and_shapes_by_hand():
    # 49S widths: int(base * 0.65) = 5, 10, 15, 26, 52, 72 (levels 0-5); SE squeezes int(in_filters * 0.2).
    shapes = {n: tuple(p.shape) for n, p in meta("49S").named_parameters()}
    expected = {
        "stem.conv.weight": (5, 3, 3, 3),
        "stem_blocks.0.0.expand.conv.weight": (30, 5, 1, 1),
        "stem_blocks.0.0.depthwise.conv.weight": (30, 1, 3, 3),
        "stem_blocks.0.0.se.reduce.weight": (1, 30, 1, 1),
        "stem_blocks.0.0.se.expand.bias": (30,),
        "stem_blocks.0.0.project.conv.weight": (10, 30, 1, 1),
        "stem_blocks.1.0.se.reduce.weight": (2, 60, 1, 1),
        "stem_blocks.1.0.project.norm.weight": (15,),
        "blocks.0.resample.0.down.0.conv.weight": (10, 1, 3, 3),  # feature 0 (level 1) -> level 2
        "blocks.0.resample.0.proj.conv.weight": (15, 10, 1, 1),
        "blocks.2.resample.0.down.1.conv.weight": (15, 1, 3, 3),  # level 2 -> 4: two stride-2 steps
        "blocks.2.resample.1.proj.conv.weight": (52, 15, 1, 1),
        "blocks.2.group.0.expand.conv.weight": (312, 52, 1, 1),
        "blocks.2.group.0.se.reduce.weight": (10, 312, 1, 1),
        "blocks.11.resample.1.proj.conv.weight": (52, 72, 1, 1),  # feature 11 (level 5) upsampled to level 4
        "endpoints.3.conv.weight": (40, 26, 1, 1),
        "endpoints.7.norm.bias": (40,),
    }
    assert {n: shapes.get(n) for n in expected} == expected
    assert "blocks.2.resample.0.down.2.conv.weight" not in shapes
    assert not any(n.startswith("blocks.11.resample.1.down") for n in shapes)


def test_only_extra_connection_is_feature_12_into_block_13():
    # By hand from the table: at block 13 (level 5) feature 12 (block 10, level 5) has never been read.
    extras = {i: b.extra_inputs for i, b in enumerate(meta().blocks) if b.extra_inputs}
    assert extras == {13: (12,)}


@pytest.mark.parametrize("model_id,size", [("49XS", 256), ("49S", 128)])
def test_forward_shapes_and_backward(model_id, size):
    torch.manual_seed(0)
    net = SpineNetMobile(model_id, activation="hard_swish", init_drop_connect_rate=0.2)
    out = net(torch.randn(2, 3, size, size))
    c = MOBILE_SCALING_MAP[model_id].endpoints_num_filters
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        lvl: (2, c, size // 2**lvl, size // 2**lvl) for lvl in range(3, 8)}
    sum(v.sum() for v in out.values()).backward()
    assert net.stem.conv.weight.grad is not None


def test_se_activations_per_convention():
    tpu, mg = meta(convention="tpu"), meta(convention="model_garden")
    se_tpu, se_mg = tpu.blocks[0].group[0].se, mg.blocks[0].group[0].se
    assert (type(se_tpu.act).__name__, type(se_tpu.gate).__name__) == ("SiLU", "Sigmoid")
    assert (type(se_mg.act).__name__, type(se_mg.gate).__name__) == ("ReLU", "HardSigmoid")


def test_stride2_padding_per_convention():
    # TF1 pads strided convs symmetrically; Model Garden's Keras 'same' pads 0 before, 1 after on even inputs.
    for conv in ("tpu", "model_garden"):
        net = meta(convention=conv)
        strided = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2)]
        assert len(strided) > 10
        assert all(m.dynamic_same == (conv == "model_garden") for m in strided)


def test_hard_activations_by_hand():
    x = torch.tensor([-4.0, -3.0, -1.5, 0.0, 1.0, 3.0, 5.0])
    # Model Garden hard_sigmoid: relu6(x + 3) * 0.16667 (sigmoid.py:21), hard_swish: x * relu6(x + 3) / 6.
    assert HardSigmoid()(x).tolist() == pytest.approx([0.0, 0.0, 0.250005, 0.50001, 0.66668, 1.00002, 1.00002])
    assert HardSwish()(x).tolist() == pytest.approx([0.0, 0.0, -0.375, 0.0, 2.0 / 3.0, 3.0, 5.0])


def test_mbconv_residual_only_when_shapes_match():
    assert MBConv(8, 8, activation="swish").residual
    assert not MBConv(8, 16, activation="swish").residual
    assert not MBConv(8, 8, stride=2, activation="swish").residual


def test_drop_rates_are_init_times_i_plus_1_over_16():
    net = meta(init_drop_connect_rate=0.2)
    rates = [b.group[0].drop.rate for b in net.blocks]
    # TF1 spinenet_mbconv.py:204 init * (i + 1) / n; Model Garden nn_layers.py:206 with i + 1: the same.
    assert rates == pytest.approx([0.2 * (i + 1) / 16 for i in range(16)])
    assert all(b.drop.rate == 0.0 for g in net.stem_blocks for b in g)


def test_separable_head_names_shapes_and_prior():
    head = RetinaNetHead(40, 91, 9, num_filters=40, use_separable_conv=True)
    shapes = {n: tuple(p.shape) for n, p in head.named_parameters()}
    assert shapes["class_net.convs.0.depthwise.weight"] == (40, 1, 3, 3)
    assert shapes["class_net.convs.3.pointwise.weight"] == (40, 40, 1, 1)
    assert shapes["class_net.convs.0.pointwise.bias"] == (40,)
    assert shapes["class_net.norms.7.3.weight"] == (40,)
    assert shapes["class_net.predict.depthwise.weight"] == (40, 1, 3, 3)
    assert shapes["class_net.predict.pointwise.weight"] == (819, 40, 1, 1)
    assert shapes["box_net.predict.pointwise.bias"] == (36,)
    assert not any(n.endswith("depthwise.bias") for n in shapes)
    assert head.class_net.predict.bias[0].item() == pytest.approx(-math.log(99.0))
    # Per conv: 9 depthwise taps per input channel + a dense 1x1 with bias, 4 tower convs shared over levels.
    tower = 4 * (40 * 9 + 40 * 40 + 40)
    norms = 5 * 4 * 2 * 40
    assert sum(p.numel() for p in head.parameters()) == (
        2 * (tower + norms) + (40 * 9 + 40 * 819 + 819) + (40 * 9 + 40 * 36 + 36))
    cls, box = head({3: torch.randn(1, 40, 8, 8)})
    assert cls[3].shape == (1, 819, 8, 8) and box[3].shape == (1, 36, 8, 8)


def test_l2_coverage_per_convention():
    # TF1's regex .*(kernel|weight):0$ takes every conv kernel; Model Garden leaves depthwise kernels out.
    torch.manual_seed(0)
    tpu, mg = SpineNetMobile("49XS", convention="tpu"), SpineNetMobile("49XS", convention="model_garden")
    mg.load_state_dict(tpu.state_dict())
    dense = sum(m.weight.square().sum() for m in tpu.modules() if isinstance(m, torch.nn.Conv2d) and m.groups == 1)
    every = sum(m.weight.square().sum() for m in tpu.modules() if isinstance(m, torch.nn.Conv2d))
    assert l2_regularization(tpu, 2.0).item() == pytest.approx(every.item(), rel=1e-5)
    assert l2_regularization(mg, 2.0).item() == pytest.approx(dense.item(), rel=1e-5)
    assert dense < every


def test_separable_module_is_depthwise_then_pointwise():
    torch.manual_seed(0)
    conv = SeparableConv2d(4, 6)
    x = torch.randn(1, 4, 5, 5)
    dw = torch.nn.functional.conv2d(x, conv.depthwise.weight, padding=1, groups=4)
    ref = torch.nn.functional.conv2d(dw, conv.pointwise.weight, conv.pointwise.bias)
    torch.testing.assert_close(conv(x), ref)


def test_separable_tower_init_is_glorot_uniform_and_predictors_normal_0p03():
    # Keras SeparableConv2D's default (Model Garden passes none for the tower), tf.layers' in TF1: limit
    # sqrt(6 / (fan_in + fan_out)); depthwise (3, 3, C, 1): 9C + 9. Model Garden's predictors: N(0, 0.03).
    torch.manual_seed(0)
    head = RetinaNetHead(48, 91, 9, num_filters=48, use_separable_conv=True)
    dw, pw = head.class_net.convs[0].depthwise.weight, head.class_net.convs[0].pointwise.weight
    for w, limit in ((dw, math.sqrt(6 / (9 * 48 + 9))), (pw, math.sqrt(6 / (48 + 48)))):
        assert w.abs().max() <= limit
        assert w.std().item() == pytest.approx(limit / math.sqrt(3), rel=0.1)
    assert head.class_net.predict.pointwise.weight.std().item() == pytest.approx(0.03, rel=0.05)
