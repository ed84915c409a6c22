"""Layers: TF "SAME" max-pooling (the ceil_mode shortcut pools exactly the windows of the padded reference) and
the eval-mode resampling order."""

import pytest
import torch
import torch.nn.functional as F

from spinenet.modeling.layers import BatchNorm2dTF, MaxPoolSame, pad_same


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


def test_batchnorm_tf_moves_running_var_towards_the_biased_variance():
    """Hand-worked: one channel, values 1, 2, 6 (mean 3, biased variance 14/3, unbiased 7); momentum 0.1 from
    running mean 0 / variance 1 -> mean 0.3, variance 0.9 + 0.1 * 14/3 (the reference's rule; torch's would give
    0.9 + 0.7). The output is nn.BatchNorm2d's (normalised with the biased variance)."""
    x = torch.tensor([1.0, 2.0, 6.0]).view(3, 1, 1, 1)
    bn, ref = BatchNorm2dTF(1, eps=1e-4, momentum=0.1), torch.nn.BatchNorm2d(1, eps=1e-4, momentum=0.1)
    out = bn(x)
    assert torch.allclose(out, ref(x), atol=0, rtol=1e-6)
    assert bn.running_mean.item() == pytest.approx(0.3, rel=1e-6)
    assert bn.running_var.item() == pytest.approx(0.9 + 0.1 * 14 / 3, rel=1e-6)
    assert ref.running_var.item() == pytest.approx(0.9 + 0.1 * 7, rel=1e-6)
    assert int(bn.num_batches_tracked) == 1
    bn.eval()
    assert torch.allclose(bn(x), (x - 0.3) / torch.sqrt(torch.tensor(0.9 + 0.1 * 14 / 3 + 1e-4)), rtol=1e-6)
