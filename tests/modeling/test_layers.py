"""TF 'SAME' max-pooling: the ceil_mode shortcut pools exactly the windows of the padded reference."""

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
