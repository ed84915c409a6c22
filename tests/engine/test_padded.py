"""Tensor-core widths in training (spinenet.engine.padded): the padded model is the same function with the same
parameters, its padded channels stay exactly zero through SGD, and its checkpoints are the standard layout.

Tolerances: a convolution over zero-padded channels may sum in another order (another blocking), which in
float32 moved the 128x128 outputs (magnitude ~4.6) by up to 1.3e-4 on level 7, where train-mode BN normalises
two values per channel -- less than float32 itself is off from float64 there (2.8e-4). So the comparisons run in
float64, where the padded and unpadded models agree to 1e-13 (4.5e-10 on level 7) and a real difference
(a non-zero padded channel, a wrong slice) would show at 1e-3 or more: atol/rtol 1e-8. What must be zero is
compared exactly.

BN epsilon is 0.1 here, not the reference's 1e-4: with 1e-4, train-mode BN over the two values per channel of
level 7 (1x1 maps at batch 2) makes a few SGD steps chaotic -- a 1e-15 relative change of one weight of the
*unpadded* model moved its third step's gradient norm from 2.98 to 7.05 -- so no trajectory comparison could tell
padding from noise. Whether a padded channel stays zero does not depend on epsilon.
"""

import copy

import pytest
import torch

from spinenet.config import load_config
from spinenet.engine.checkpoint import load_state_dict_strict
from spinenet.engine.padded import PaddedBatchNorm2d, PaddedConv2d, PaddedConv2dTF, pad_channels
from spinenet.modeling.factory import build_retinanet
from spinenet.modeling.losses import l2_regularization
from spinenet.registry import config_path

TOL = dict(atol=1e-8, rtol=1e-8)
# COCO's 91 classes: the class predictor has 9 x 91 = 819 outputs, the box predictor 36.
OVERRIDE = {"retinanet_parser": {"output_size": [128, 128]}, "spinenet": {"init_drop_connect_rate": None},
            "batch_norm_activation": {"batch_norm_epsilon": 0.1}}


def model_pair():
    torch.manual_seed(0)
    plain = build_retinanet(load_config(config_path("retinanet_spinenet49s"), OVERRIDE)).double()
    padded = copy.deepcopy(plain)
    assert pad_channels(padded, 8) > 0
    return plain, padded


def images(seed=1):
    return torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def zero_channel_probe(model):
    """Forward hooks recording whether every padded output channel of every padded module was exactly zero."""
    seen = []

    def hook(module, args, out):
        width = module.out_channels if hasattr(module, "out_channels") else module.num_features
        if out.shape[1] > width:
            seen.append(bool(out[:, width:].eq(0).all()))

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (PaddedConv2d, PaddedConv2dTF, PaddedBatchNorm2d))]
    return seen, handles


def test_widths_are_rounded_and_parameters_unchanged():
    plain, padded = model_pair()
    convs = {n: m for n, m in padded.named_modules() if isinstance(m, (PaddedConv2d, PaddedConv2dTF))}
    widths = {m.out_channels + m.pad_out for m in convs.values()} | {m.in_channels + m.pad_in for m in convs.values()
                                                                       if m is not padded.backbone.stem.conv}
    assert widths and all(w % 8 == 0 for w in widths)
    assert {41, 83, 166, 332} <= {m.out_channels for m in convs.values()}  # 49S's odd widths were padded
    predict = padded.head.class_net.predict
    assert (predict.out_channels, predict.pad_out, predict.slice_output) == (819, 5, True)
    assert padded.head.box_net.predict.pad_out == 4
    assert getattr(padded.backbone.stem.conv, "pad_in", 0) == 0  # the image keeps its 3 channels
    assert sum(p.numel() for p in padded.parameters()) == sum(p.numel() for p in plain.parameters())
    for (name, a), (_, b) in zip(plain.named_parameters(), padded.named_parameters(), strict=True):
        assert a.shape == b.shape, name


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_padded_model_computes_the_same_outputs(mode):
    plain, padded = model_pair()
    plain.train(mode == "train")
    padded.train(mode == "train")
    seen, _ = zero_channel_probe(padded)
    with torch.no_grad():
        cls_a, box_a = plain(images())
        cls_b, box_b = padded(images())
    assert seen and all(seen), "a padded channel held a non-zero value"
    for level in cls_a:
        assert cls_a[level].shape == cls_b[level].shape and box_a[level].shape == box_b[level].shape
        torch.testing.assert_close(cls_b[level], cls_a[level], **TOL)
        torch.testing.assert_close(box_b[level], box_a[level], **TOL)
    if mode == "train":  # BN running statistics were updated alike, and come out unpadded
        for k, v in plain.state_dict().items():
            torch.testing.assert_close(padded.state_dict()[k], v, **TOL)


def sgd_run(model, steps=3, clip=0.01):
    """SGD momentum + L2 + global-norm clipping (small enough to act) on one fixed batch; the clip norms."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    norms = []
    for _ in range(steps):
        cls, box = model(images())
        loss = sum((c.sigmoid() - 0.1).square().mean() + b.square().mean() for c, b in zip(
            cls.values(), box.values(), strict=True)) + l2_regularization(model, 1e-4)
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip)))
        opt.step()
        opt.zero_grad(set_to_none=True)
    return norms, opt


def test_sgd_steps_match_and_padded_channels_stay_zero():
    plain, padded = model_pair()
    norms_a, opt_a = sgd_run(plain)
    norms_b, opt_b = sgd_run(padded)
    assert min(norms_a) > 0.01  # clipping acted on every step
    assert norms_b == pytest.approx(norms_a, rel=1e-8)  # the clip saw the same gradients: nothing from padding
    for k, v in plain.state_dict().items():
        torch.testing.assert_close(padded.state_dict()[k], v, **TOL)
    moved = sum(float((a.detach() - b.detach()).abs().sum()) for a, b in zip(
        plain.parameters(), build_retinanet(load_config(config_path("retinanet_spinenet49s"),
                                                        OVERRIDE)).double().parameters(), strict=True))
    assert moved > 0
    # The optimiser state has the standard layout: momentum buffers of the unpadded shapes.
    for p_a, p_b in zip(plain.parameters(), padded.parameters(), strict=True):
        buf_a, buf_b = opt_a.state[p_a]["momentum_buffer"], opt_b.state[p_b]["momentum_buffer"]
        assert buf_a.shape == buf_b.shape
    seen, _ = zero_channel_probe(padded)
    padded(images(2))
    assert seen and all(seen)


def test_checkpoints_keep_the_standard_layout():
    plain, padded = model_pair()
    padded.train()
    padded(images())  # move the running statistics
    state = padded.state_dict()
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in plain.state_dict().items()}
    load_state_dict_strict(plain, state, "padded")  # an unpadded model (evaluate, export, convert) reads it
    fresh = copy.deepcopy(plain)
    pad_channels(fresh, 8)
    load_state_dict_strict(fresh, state, "padded")  # a resume with padding re-pads the statistics
    for bn in (m for m in fresh.modules() if isinstance(m, PaddedBatchNorm2d)):
        width = bn.num_features
        assert bn.running_mean[width:].eq(0).all() and bn.running_var[width:].eq(1).all()
    plain.eval()
    fresh.eval()
    with torch.no_grad():
        for a, b in zip(plain(images(3)), fresh(images(3)), strict=True):
            for level in a:
                torch.testing.assert_close(b[level], a[level], **TOL)


def test_bad_multiple_is_refused():
    with pytest.raises(ValueError, match="--pad_channels -8 is negative"):
        pad_channels(model_pair()[0], -8)


def test_cross_replica_bn_is_refused_by_name():
    model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model_pair()[0])
    with pytest.raises(ValueError, match=r"backbone\.stem\.norm is SyncBatchNorm .*train without --pad_channels"):
        pad_channels(model, 8)
    assert not any(isinstance(m, (PaddedConv2d, PaddedConv2dTF)) for m in model.modules())  # nothing half-done
