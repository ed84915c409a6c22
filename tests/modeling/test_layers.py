"""Layers: TF "SAME" max-pooling (the ceil_mode shortcut pools exactly the windows of the padded reference) and
the eval-mode resampling order."""

import pytest
import torch
import torch.nn.functional as F

from spinenet.modeling.layers import MaxPoolSame, pad_same


@pytest.mark.parametrize("kernel, stride", [(3, 2), (5, 4), (3, 1), (2, 2)])
def test_max_pool_same_equals_padded_pool(kernel, stride):
    torch.manual_seed(0)
    for size in range(1, 42):
        x = torch.randn(1, 2, size, size + 3)
        ref = F.max_pool2d(pad_same(x, kernel, stride, value=float("-inf")), kernel, stride)
        assert torch.equal(MaxPoolSame(kernel, stride)(x), ref), size


def test_max_pool_same_hand_worked():
    # 4 wide, k3 s2, TF SAME: windows [0..2] and [2..3 + one -inf pad] -> maxima 3 and 4.
    x = torch.tensor([[[[1.0, 2.0, 3.0, 4.0]]]])
    assert MaxPoolSame(3, 2)(x.transpose(2, 3)).flatten().tolist() == [3.0, 4.0]


def test_eval_resample_expands_before_upsampling_with_the_same_result():
    from spinenet.modeling.spinenet import Resample, _upsample

    torch.manual_seed(0)
    r = Resample(32, "bottleneck", 5, 24, 3, 0.5, activation="swish", convention="tpu", bn_momentum=0.1,
                 bn_eps=1e-3)
    for m in r.modules():  # non-trivial BN statistics, so the BN's affine map matters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    r.eval()
    x = torch.randn(2, 32, 5, 7)
    with torch.no_grad():
        reference_order = r.expand(_upsample(r.reduce(x), 4))  # the reference: upsample, then 1x1 conv + BN
        out = r(x)
    assert out.shape == (2, 24, 20, 28)
    torch.testing.assert_close(out, reference_order, rtol=1e-6, atol=1e-6)
