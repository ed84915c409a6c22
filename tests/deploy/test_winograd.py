"""Winograd F(4x4, 3x3) against the direct convolution, computed in float64 as the reference."""

import pytest
import torch
import torch.nn.functional as F

from spinenet.deploy.winograd import SizeSwitchedConv, WinogradConv2d, is_winograd_compatible


def _relative_error(out: torch.Tensor, x: torch.Tensor, conv: torch.nn.Conv2d) -> float:
    with torch.no_grad():
        ref = F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1)
        return float((out.detach().double() - ref).abs().max() / ref.abs().max())


@pytest.mark.parametrize("batch, cin, cout, h, w", [
    (1, 16, 24, 20, 20),  # multiples of the 4x4 tile: padding folded into the transform
    (2, 8, 8, 7, 10),     # not: padded up to whole tiles, then cropped
    (1, 5, 3, 1, 1),      # a 1x1 map (level 7 of a 128x128 input)
    (1, 32, 819, 8, 12),  # a wide predictor
])
def test_equals_direct_convolution(batch, cin, cout, h, w):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(cin, cout, 3, padding=1)
    x = torch.randn(batch, cin, h, w)
    out = WinogradConv2d.from_conv(conv)(x)
    assert out.shape == (batch, cout, h, w)
    assert _relative_error(out, x, conv) < 5e-5  # float32 Winograd with points 0, ±1, ±2: ~1e-5
    assert _relative_error(conv(x).detach(), x, conv) < 1e-6  # the direct conv, for scale


def test_a_wrong_filter_is_caught():
    # Not a test of the tolerance: a transposed filter must fail it by orders of magnitude.
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(4, 4, 3, padding=1)
    x = torch.randn(1, 4, 12, 12)
    wrong = WinogradConv2d(conv.weight.transpose(2, 3), conv.bias)
    assert _relative_error(wrong(x), x, conv) > 1e-2


def test_only_same_3x3_stride_1_convolutions_qualify():
    assert is_winograd_compatible(torch.nn.Conv2d(4, 4, 3, padding=1))
    for conv in (torch.nn.Conv2d(4, 4, 3, padding=1, stride=2), torch.nn.Conv2d(4, 4, 1),
                 torch.nn.Conv2d(4, 4, 3, padding=0), torch.nn.Conv2d(4, 4, 3, padding=1, groups=2),
                 torch.nn.Conv2d(4, 4, 3, padding=2, dilation=2)):
        assert not is_winograd_compatible(conv)
        with pytest.raises(ValueError, match="3x3, stride-1"):
            WinogradConv2d.from_conv(conv)


def test_size_switch_uses_the_direct_conv_below_the_threshold():
    torch.manual_seed(2)
    conv = torch.nn.Conv2d(8, 8, 3, padding=1)
    switched = SizeSwitchedConv(conv, min_pixels=64)
    small, large = torch.randn(1, 8, 4, 4), torch.randn(1, 8, 8, 8)
    with torch.no_grad():
        assert torch.equal(switched(small), conv(small))  # 16 px: the very same direct convolution
        assert torch.equal(switched(large), switched.winograd(large))  # 64 px: Winograd
        assert not torch.equal(switched(large), conv(large))  # (which rounds differently)
