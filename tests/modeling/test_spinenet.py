"""The backbone and head against the reference's architecture facts (spec §2-§3, model-garden-reference.md)."""

import math

import pytest
import torch

from spinenet.modeling.head import RetinaNetHead
from spinenet.modeling.layers import Conv2dTF, MaxPoolSame, tf_same_pad_amounts
from spinenet.modeling.spinenet import SpineNet, drop_connect_rate


def meta_spinenet(*args, **kw):
    with torch.device("meta"):
        return SpineNet(*args, **kw)


def count(module):
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def build(model_id, head_filters, head_convs, **kw):
    backbone = SpineNet(model_id, **kw)
    head = RetinaNetHead(backbone.out_channels, 91, 9, num_filters=head_filters, num_convs=head_convs)
    return backbone, head


def build_meta(model_id, head_filters, head_convs, **kw):
    """Structure only (no values): parameter counts and layer wiring without paying for initialisation."""
    with torch.device("meta"):
        return build(model_id, head_filters, head_convs, **kw)


def test_49s_parameter_count_matches_model_garden_exactly():
    # Model Garden (tf-models-official 2.20) builds 11,265,942 trainable = 9,089,215 backbone + 2,176,727 head.
    backbone, head = build_meta("49S", 128, 4)
    assert count(backbone) == 9_089_215
    assert count(head) == 2_176_727


def test_49_parameter_count_matches_model_garden_exactly():
    backbone, head = build_meta("49", 256, 4)
    assert count(backbone) == 21_831_488
    assert count(backbone) + count(head) == 28_543_383


@pytest.mark.parametrize("model_id,head_filters,head_convs,expected", [
    ("96", 256, 4, 42.97e6), ("143", 256, 4, 66.96e6), ("190", 512, 7, 163.64e6)])
def test_larger_variants_parameter_counts_within_0p2_percent(model_id, head_filters, head_convs, expected):
    backbone, head = build_meta(model_id, head_filters, head_convs)
    assert abs(count(backbone) + count(head) - expected) / expected < 0.002


def test_only_extra_connection_is_feature_11_into_block_12():
    # Spec §2.2: with this block table the one out-degree-0 feature summed into an output block is 11 -> block 12.
    net = meta_spinenet("49S")
    extras = {i: b.extra_inputs for i, b in enumerate(net.blocks) if b.extra_inputs}
    assert extras == {12: (11,)}


def test_resample_paths_follow_the_tpu_table():
    net = meta_spinenet("49")
    # block 13 (P7) takes f5 (L4) down by 8: 3x3/2 conv then one k5/s4 SAME pool (TF1).
    r = net.blocks[13].resample[0]
    assert r.down is not None and len(r.pools) == 1
    assert (r.pools[0].kernel_size, r.pools[0].stride) == (5, 4)
    # block 1 (L4 from L2) down by 4: k3/s2 pool.
    r = net.blocks[1].resample[0]
    assert (r.pools[0].kernel_size, r.pools[0].stride) == (3, 2)
    # block 8 (L5) from f9 (L7): nearest x4, no conv stride.
    r = net.blocks[8].resample[1]
    assert r.down is None and r.upsample == 4
    # alpha channels for 49 (spec table): L2 bottleneck parent 256 -> 256/4*0.5 = 32; L4 bottleneck 1024 -> 128.
    assert net.blocks[1].resample[0].reduce.conv.out_channels == 32
    assert net.blocks[10].resample[0].reduce.conv.out_channels == 128


def test_49s_alpha_channels():
    net = meta_spinenet("49S")
    # Spec §2.5: 49S L2 bottleneck parent 164 -> 164/4*0.5 = 20.5 -> 20; L3 332 -> 41; L4 664 -> 83; residual 166 -> 83.
    assert net.blocks[0].resample[0].reduce.conv.out_channels == 20
    assert net.blocks[3].resample[1].reduce.conv.out_channels == 41
    assert net.blocks[10].resample[0].reduce.conv.out_channels == 83
    assert net.blocks[6].resample[0].reduce.conv.out_channels == 83


def test_model_garden_downsample_by_8_pools_twice():
    net = meta_spinenet("49", convention="model_garden")
    r = net.blocks[13].resample[0]
    assert [(p.kernel_size, p.stride) for p in r.pools] == [(3, 2), (3, 2)]


def test_same_padding_amounts_by_hand():
    # 7x7/2 at 640: out 320, total = 319*2 + 7 - 640 = 5 -> 2 before, 3 after (Keras 'same').
    assert tf_same_pad_amounts(640, 7, 2) == (2, 3)
    # 3x3/2 on an even size: total 1 -> 0 before, 1 after.
    assert tf_same_pad_amounts(80, 3, 2) == (0, 1)
    # k5/s4 on 40: out 10, total = 9*4 + 5 - 40 = 1.
    assert tf_same_pad_amounts(40, 5, 4) == (0, 1)
    # odd size 5 with 3x3/2: out 3, total = 2*2 + 3 - 5 = 2 -> 1, 1.
    assert tf_same_pad_amounts(5, 3, 2) == (1, 1)


def test_maxpool_same_pads_bottom_right_with_minus_inf():
    x = -torch.arange(16.0).reshape(1, 1, 4, 4) - 1  # all negative: zero padding would win the max
    y = MaxPoolSame(3, 2)(x)
    # windows start at 0 and 2; the second one covers rows/cols 2..4 where 4 is padding.
    assert y.shape == (1, 1, 2, 2)
    assert y[0, 0].tolist() == [[-1.0, -3.0], [-9.0, -11.0]]


def test_strided_conv_padding_conventions():
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 0, 0] = 1.0
    tpu = Conv2dTF(1, 1, 3, 2, convention="tpu")
    mg = Conv2dTF(1, 1, 3, 2, convention="model_garden")
    for conv in (tpu, mg):
        torch.nn.init.ones_(conv.weight)
    # TF1 fixed padding: 1 before, so output (0,0) sees pixel (0,0). Keras same: 0 before, and also sees it;
    # pixel (2,2) only reaches output (1,1) under Keras same (window rows 2..4) and tpu (rows 1..3).
    x2 = torch.zeros(1, 1, 8, 8)
    x2[0, 0, 4, 4] = 1.0
    # tpu windows start at -1, 1, 3, 5: pixel 4 is in windows starting 3 (out 2); Keras windows 0, 2, 4, 6:
    # pixel 4 is in windows starting 2 and 4 (outs 1 and 2).
    assert tpu(x2)[0, 0].nonzero().tolist() == [[2, 2]]
    assert mg(x2)[0, 0].nonzero().tolist() == [[1, 1], [1, 2], [2, 1], [2, 2]]


def test_drop_connect_schedule():
    # TF1: init * (i + 1) / 15; Model Garden: init * (i + 1) / 16.
    assert drop_connect_rate(0.2, 0, 15, "tpu") == pytest.approx(0.2 / 15)
    assert drop_connect_rate(0.2, 14, 15, "tpu") == pytest.approx(0.2)
    assert drop_connect_rate(0.2, 14, 15, "model_garden") == pytest.approx(0.2 * 15 / 16)
    assert drop_connect_rate(None, 3, 15, "tpu") is None
    net = meta_spinenet("49S", init_drop_connect_rate=0.2)
    assert net.blocks[4].group[0].drop.rate == pytest.approx(0.2 * 5 / 15)
    assert all(b.drop.rate == 0 for g in net.stem_blocks for b in g)  # the stem has no stochastic depth


def test_head_init_and_layout():
    head = RetinaNetHead(128, 91, 9, num_filters=128)
    assert head.class_net.predict.out_channels == 819 and head.box_net.predict.out_channels == 36
    assert torch.allclose(head.class_net.predict.bias, torch.full((819,), -math.log(99)))
    assert head.box_net.predict.bias.abs().max() == 0
    assert 0.005 < head.class_net.convs[0].weight.std() < 0.015
    # one BN per level and conv, shared conv weights
    assert len(head.class_net.norms) == 5 and all(len(v) == 4 for v in head.class_net.norms.values())


@pytest.mark.parametrize("model_id,head_filters,head_convs", [
    ("49S", 128, 4), ("49", 256, 4), ("96", 256, 4),
    pytest.param("143", 256, 4, marks=pytest.mark.slow), pytest.param("190", 512, 7, marks=pytest.mark.slow)])
def test_forward_backward_small_input(model_id, head_filters, head_convs):
    backbone, head = build(model_id, head_filters, head_convs, init_drop_connect_rate=0.2)
    x = torch.randn(2, 3, 128, 128)
    feats = backbone(x)
    assert {lvl: tuple(f.shape) for lvl, f in feats.items()} == {
        lvl: (2, backbone.out_channels, 128 >> lvl, 128 >> lvl) for lvl in range(3, 8)}
    cls, box = head(feats)
    assert cls[3].shape == (2, 819, 16, 16) and box[7].shape == (2, 36, 1, 1)
    loss = sum(c.float().pow(2).mean() for c in cls.values()) + sum(b.pow(2).mean() for b in box.values())
    loss.backward()
    assert backbone.stem.conv.weight.grad is not None and backbone.stem.conv.weight.grad.abs().sum() > 0
    assert head.class_net.norms["7"][0].weight.grad is not None


def test_eval_mode_is_deterministic_and_train_mode_is_not_with_stochastic_depth():
    net = SpineNet("49S", init_drop_connect_rate=0.5).eval()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        a, b = net(x), net(x)
    assert all(torch.equal(a[k], b[k]) for k in a)
