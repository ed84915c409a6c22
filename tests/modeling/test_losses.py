"""RetinaNet losses and the L2 term (spec §4.5, §1.2), with values worked out by hand."""

import math

import pytest
import torch
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from spinenet.modeling.losses import (
    LossParams,
    focal_loss_sum,
    huber_loss_sum,
    l2_regularization,
    retinanet_loss,
)

ALPHA, GAMMA, DELTA = 0.25, 1.5, 0.1
# Focal loss at x = 0 before the alpha weight: p = 0.5, CE = ln 2, modulator = 0.5^1.5 = 0.353553;
# C = 0.353553 · 0.693147 = 0.245065.
C = math.log(2) * 0.5**1.5


def _focal(x, z):
    return focal_loss_sum(torch.tensor([x]), torch.tensor([z]), ALPHA, GAMMA).item()


def test_focal_single_logit_at_zero():
    # target 1: α · C = 0.25 · 0.245065 = 0.061266; target 0: (1 - α) · C = 0.75 · 0.245065 = 0.183798.
    assert _focal(0.0, 1.0) == pytest.approx(0.25 * C, rel=1e-6)
    assert _focal(0.0, 0.0) == pytest.approx(0.75 * C, rel=1e-6)


def test_focal_single_logit_at_two():
    # x = 2: p = sigmoid(2) = 0.880797.
    # target 1: CE = ln(1 + e^-2) = 0.126928; modulator = (1 - p)^1.5 = 0.119203^1.5 = 0.041156;
    #           0.25 · 0.041156 · 0.126928 = 0.0013060.
    # target 0: CE = -ln(1 - p) = 2.126928; modulator = p^1.5 = 0.826635; 0.75 · 0.826635 · 2.126928 = 1.318645.
    p = 1 / (1 + math.exp(-2))
    assert _focal(2.0, 1.0) == pytest.approx(0.25 * (1 - p) ** 1.5 * math.log1p(math.exp(-2)), rel=1e-5)
    assert _focal(2.0, 0.0) == pytest.approx(0.75 * p**1.5 * -math.log(1 - p), rel=1e-5)
    assert _focal(2.0, 0.0) == pytest.approx(1.318645, rel=1e-5)


def test_focal_is_stable_for_large_logits():
    # Confidently wrong: CE = 100, modulator (1 - p_t)^γ = 1 -> α·100 = 25 (positive), (1 - α)·100 = 75 (negative).
    # TF's literal log1p(exp(100)) overflows in float32 and would give 0 for the positive.
    x = torch.tensor([-100.0, 100.0], requires_grad=True)
    loss = focal_loss_sum(x, torch.tensor([1.0, 0.0]), ALPHA, GAMMA)
    assert loss.item() == pytest.approx(100.0, rel=1e-6)
    loss.backward()
    assert torch.isfinite(x.grad).all()
    # Confidently right: both terms vanish.
    assert focal_loss_sum(torch.tensor([100.0, -100.0]), torch.tensor([1.0, 0.0]), ALPHA, GAMMA).item() < 1e-30


def test_focal_matches_torchvision_sigmoid_focal_loss():
    # torchvision: ce · (1 - p_t)^γ · (α t + (1 - α)(1 - t)), the same function for 0/1 targets; it computes
    # (1 - p_t) from sigmoid directly, which only loses relative precision where the loss is ~0 anyway.
    logits = torch.randn(64, 91) * 4
    targets = (torch.rand(64, 91) < 0.1).float()
    ours = focal_loss_sum(logits, targets, ALPHA, GAMMA)
    theirs = sigmoid_focal_loss(logits, targets, alpha=ALPHA, gamma=GAMMA, reduction="sum")
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_huber_below_and_above_delta():
    # δ = 0.1. |e| = 0.05 <= δ: 0.5 · 0.05² = 0.00125. |e| = 0.3 > δ: 0.1 · (0.3 - 0.05) = 0.025.
    # Weights default to target != 0: the third element (target 0, pred 1) does not count.
    pred = torch.tensor([0.15, -0.2, 1.0])
    target = torch.tensor([0.1, 0.1, 0.0])
    assert huber_loss_sum(pred, target, DELTA).item() == pytest.approx(0.00125 + 0.025, rel=1e-6)
    # At exactly δ both branches agree: 0.5 · 0.01 = 0.005 = 0.1 · (0.1 - 0.05).
    assert huber_loss_sum(torch.tensor([0.2]), torch.tensor([0.1]), DELTA).item() == pytest.approx(0.005, rel=1e-5)
    # Explicit weights, and agreement with torch's huber_loss (same definition, no division by δ).
    ones = torch.ones(3)
    expected = nn.functional.huber_loss(pred, target, delta=DELTA, reduction="sum")
    torch.testing.assert_close(huber_loss_sum(pred, target, DELTA, ones), expected)


# --- retinanet_loss ----------------------------------------------------------------------------------------
# Two levels (3 and 4) of 1x1 maps, one anchor each (A = 1), K = 3 classes: N = 2 anchors, anchor 0 = level 3.

K = 3


def _maps(logits, deltas):
    """(B, N=2, K) logits and (B, 2, 4) deltas -> per-level NCHW maps (channel a*K + c with A = 1)."""
    cls = {3: logits[:, 0, :, None, None], 4: logits[:, 1, :, None, None]}
    box = {3: deltas[:, 0, :, None, None], 4: deltas[:, 1, :, None, None]}
    return cls, box


def _loss(cls_targets, box_targets, num_pos, logits=None, deltas=None, params=None):
    b = len(cls_targets)
    logits = torch.zeros(b, 2, K) if logits is None else logits
    deltas = torch.zeros(b, 2, 4) if deltas is None else deltas
    cls, box = _maps(logits, deltas)
    return retinanet_loss(cls, box, torch.tensor(cls_targets), torch.tensor(box_targets),
                          torch.tensor(num_pos, dtype=torch.float32), params or LossParams(), K)


BOX_T = [[0.05, -0.3, 0.0, 0.2], [0.0, 0.0, 0.0, 0.0]]


def test_retinanet_loss_hand_values():
    # Logits all 0. Anchor 0 has class 2 -> one-hot [0, 0, 1]; anchor 1 negative -> [0, 0, 0] (channel 0 too).
    # Focal sum = 1 · α C + 5 · (1 - α) C = (0.25 + 3.75) C = 4 C = 0.980258. N_norm = 1 + 1 = 2.
    # cls_loss = 4 C / 2 = 0.490129.
    # Box (predictions 0): |e| = 0.05 -> 0.00125; 0.3 -> 0.025; target 0 -> masked; 0.2 -> 0.1·(0.2-0.05) = 0.015.
    # Sum 0.04125; box_loss = 0.04125 / (2 · 4) = 0.00515625. total = 0.490129 + 50 · 0.00515625 = 0.747942.
    out = _loss([[2, -1]], [BOX_T], [1.0])
    assert out["cls_loss"].item() == pytest.approx(2 * C, rel=1e-6)
    assert out["box_loss"].item() == pytest.approx(0.00515625, rel=1e-6)
    assert out["total_loss"].item() == pytest.approx(2 * C + 50 * 0.00515625, rel=1e-6)


def test_retinanet_loss_box_weight_is_applied():
    out = _loss([[2, -1]], [BOX_T], [1.0], params=LossParams(box_loss_weight=1.0))
    assert out["total_loss"].item() == pytest.approx(2 * C + 0.00515625, rel=1e-6)


def test_retinanet_loss_ignored_anchor_excluded():
    # Anchor 1 ignored (-2): its 3 class terms drop out. Focal sum = α C + 2 (1 - α) C = 1.75 C; / 2.
    out = _loss([[2, -2]], [BOX_T], [1.0])
    assert out["cls_loss"].item() == pytest.approx(1.75 * C / 2, rel=1e-6)
    # A huge logit on the ignored anchor changes nothing, and its gradient is 0.
    logits = torch.zeros(1, 2, K)
    logits[0, 1] = 50.0
    logits.requires_grad_(True)
    out2 = _loss([[2, -2]], [BOX_T], [1.0], logits=logits)
    assert out2["cls_loss"].item() == pytest.approx(out["cls_loss"].item(), rel=1e-6)
    out2["total_loss"].backward()
    assert logits.grad[0, 1].abs().sum() == 0


def test_retinanet_loss_empty_image_divides_by_one():
    # No GT: all anchors negative, num_positives 0 -> N_norm = 0 + 1. Focal sum = 6 · (1 - α) C = 4.5 C; box 0.
    out = _loss([[-1, -1]], [[[0.0] * 4] * 2], [0.0])
    assert out["cls_loss"].item() == pytest.approx(4.5 * C, rel=1e-6)
    assert out["box_loss"].item() == 0.0
    assert out["total_loss"].item() == pytest.approx(4.5 * C, rel=1e-6)


def test_retinanet_loss_normalizer_sums_the_batch_plus_one():
    # Two images, num_positives 1 and 2 -> N_norm = 1 + 2 + 1 = 4 (per-replica sum, not a per-image mean).
    # Image 0: 4 C (as above); image 1 with targets [1, 2]: 2 α C + 4 (1 - α) C = 3.5 C. cls = 7.5 C / 4.
    # Box: image 0 sums 0.04125, image 1 has zero targets -> 0.04125 / (4 · 4).
    out = _loss([[2, -1], [1, 2]], [BOX_T, [[0.0] * 4] * 2], [1.0, 2.0])
    assert out["cls_loss"].item() == pytest.approx(7.5 * C / 4, rel=1e-6)
    assert out["box_loss"].item() == pytest.approx(0.04125 / 16, rel=1e-6)


def test_retinanet_loss_follows_the_head_channel_layout():
    # Two anchors per location (A = 2) on a 1x2 map of one level: channel a*K + c and (y, x, a) anchor order.
    b, h, w, a = 2, 1, 2, 2
    logits = torch.randn(b, h * w * a, K)  # (B, N, K) in anchor order
    deltas = torch.randn(b, h * w * a, 4)
    cls_t = torch.tensor([[0, -1, 2, -2], [-1, 1, -1, -1]])
    box_t = torch.randn(b, h * w * a, 4) * (cls_t >= 0)[..., None]
    cls_map = {3: logits.reshape(b, h, w, a * K).permute(0, 3, 1, 2)}  # (B, A*K, H, W)
    box_map = {3: deltas.reshape(b, h, w, a * 4).permute(0, 3, 1, 2)}
    out = retinanet_loss(cls_map, box_map, cls_t, box_t, torch.tensor([2.0, 1.0]), LossParams(), K)
    onehot = torch.nn.functional.one_hot(cls_t.clamp(min=0), K) * (cls_t >= 0)[..., None]
    keep = cls_t != -2
    expected_cls = focal_loss_sum(logits[keep], onehot[keep], ALPHA, GAMMA) / 4.0
    expected_box = huber_loss_sum(deltas, box_t, DELTA) / 16.0
    torch.testing.assert_close(out["cls_loss"], expected_cls)
    torch.testing.assert_close(out["box_loss"], expected_box)


def test_retinanet_loss_rejects_mismatched_targets():
    cls, box = _maps(torch.zeros(1, 2, K), torch.zeros(1, 2, 4))
    with pytest.raises(ValueError, match="anchors"):
        retinanet_loss(cls, box, torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 3, 4), torch.zeros(1),
                       LossParams(), K)


# --- L2 ----------------------------------------------------------------------------------------------------

def test_l2_regularization_conv_kernels_only():
    conv1 = nn.Conv2d(1, 2, 1, bias=True)
    conv2 = nn.Conv2d(2, 1, 1, bias=True)
    bn = nn.BatchNorm2d(2)
    frozen = nn.Conv2d(1, 1, 1, bias=False).requires_grad_(False)
    with torch.no_grad():
        conv1.weight.copy_(torch.tensor([1.0, 2.0]).view(2, 1, 1, 1))
        conv2.weight.copy_(torch.tensor([3.0, 4.0]).view(1, 2, 1, 1))
        conv1.bias.fill_(10.0)
        conv2.bias.fill_(10.0)
        bn.weight.fill_(5.0)
        bn.bias.fill_(5.0)
        frozen.weight.fill_(7.0)
    # conv2 appears twice (a shared conv, as in the head) but counts once.
    model = nn.ModuleDict({"a": nn.Sequential(conv1, bn, conv2), "b": conv2, "frozen": frozen})
    # Σ w² = (1 + 4) + (9 + 16) = 30; tf.nn.l2_loss = 30 / 2 = 15; × 4e-5 = 6e-4.
    # Biases (10), BN gamma/beta (5) and the non-trainable kernel (7) are excluded.
    assert l2_regularization(model, 4e-5).item() == pytest.approx(6e-4, rel=1e-6)
    assert l2_regularization(nn.BatchNorm2d(3), 4e-5).item() == 0.0
