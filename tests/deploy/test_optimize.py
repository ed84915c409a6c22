"""The inference rewrites compute the same maps as the checkpoint's model, and leave it untouched."""

from collections import Counter

import pytest
import torch

from spinenet.deploy.optimize import optimize_for_inference
from spinenet.modeling.spinenet import SPINENET_BLOCK_SPECS

SIZE = 128


def _maps(model, x):
    with torch.no_grad():
        return model(x)


def _max_rel(a: dict, b: dict) -> float:
    return max(float((a[lvl] - b[lvl]).abs().max() / b[lvl].abs().max()) for lvl in b)


@pytest.mark.parametrize("conv_algorithm", ["direct", "winograd"])
def test_same_maps_as_the_model(small_model, random_images, conv_algorithm):
    from spinenet.deploy.export import ExportWrapper

    x = ExportWrapper(small_model, image_size=(SIZE, SIZE)).preprocess(random_images(1, seed=3))
    before = {k: v.clone() for k, v in small_model.state_dict().items()}
    fast = optimize_for_inference(small_model, conv_algorithm=conv_algorithm, winograd_min_pixels=1)
    cls, box = _maps(small_model, x)
    fcls, fbox = _maps(fast, x)
    assert _max_rel(fcls, cls) < 1e-4 and _max_rel(fbox, box) < 1e-4
    assert all(torch.equal(v, before[k]) for k, v in small_model.state_dict().items())  # original untouched
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.backbone.modules())  # folded
    # 49S's odd widths (41, 83, 166, 164, 332, ...) all padded to multiples of 8; the image input keeps 3.
    convs = [m for m in fast.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert any(c.out_channels % 8 for c in small_model.backbone.modules() if isinstance(c, torch.nn.Conv2d))
    assert all(c.out_channels % 8 == 0 and (c.in_channels % 8 == 0 or c.in_channels == 3) for c in convs)
    # The 1x1 reductions that read the same feature run stacked: every feature that the block table has read by
    # more than one block.
    readers = Counter(j for spec in SPINENET_BLOCK_SPECS for j in spec.input_offsets)
    assert type(fast.backbone).__name__ == "SharedReduceSpineNet"
    assert {j: len(r) for j, r in fast.backbone.readers.items()} == {j: n for j, n in readers.items() if n > 1}
    # Winograd: every head 3x3 conv; in the backbone the wide (>= 80 input channels) 3x3 stride-1 ones only.
    head_winograd = sum(type(m).__name__ == "WinogradConv2d" for m in fast.head.modules())
    backbone_winograd = [m for m in fast.backbone.modules() if type(m).__name__ == "WinogradConv2d"]
    if conv_algorithm == "winograd":
        assert head_winograd == 10  # 4 + 4 convs and the 2 predictors
        assert backbone_winograd and all(m.in_channels >= 80 for m in backbone_winograd)
        narrow = [m for m in fast.backbone.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)
                  and m.stride == (1, 1) and m.in_channels < 80]
        assert narrow  # 49S's level-2 48-channel convolutions stay direct
    else:
        assert head_winograd == 0 and not backbone_winograd


def test_dropping_background_keeps_every_foreground_channel(small_model, random_images):
    from spinenet.deploy.export import ExportWrapper

    x = ExportWrapper(small_model, image_size=(SIZE, SIZE)).preprocess(random_images(1, seed=4))
    fast = optimize_for_inference(small_model, conv_algorithm="direct", drop_background=True)
    assert fast.head.background_channel is False and small_model.head.background_channel is True
    cls, _ = _maps(small_model, x)
    fcls, _ = _maps(fast, x)
    a, k = small_model.head.num_anchors, small_model.num_classes
    for lvl, ref in cls.items():
        b, _, h, w = ref.shape
        foreground = ref.reshape(b, a, k, h, w)[:, :, 1:].reshape(b, a * (k - 1), h, w)
        assert fcls[lvl].shape == foreground.shape
        torch.testing.assert_close(fcls[lvl], foreground, rtol=0, atol=1e-4 * float(foreground.abs().max()))


def test_unknown_algorithm_is_named(small_model):
    with pytest.raises(ValueError, match="winograd, direct"):
        optimize_for_inference(small_model, conv_algorithm="fft")


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("conv_algorithm", ["direct", "winograd"])
def test_new_modules_take_the_source_dtype(small_model, random_images, dtype, conv_algorithm):
    """The stacked 1x1 reductions, the slimmed class predictor and the Winograd buffers are built in the source
    model's dtype (and on its device): a float64 or bf16 model's optimised copy holds no float32 tensor and runs."""
    import copy

    from spinenet.deploy.export import ExportWrapper

    source = copy.deepcopy(small_model).to(dtype)
    fast = optimize_for_inference(source, conv_algorithm=conv_algorithm, drop_background=True, winograd_min_pixels=1)
    tensors = dict(fast.named_parameters()) | dict(fast.named_buffers())
    wrong = {n: t.dtype for n, t in tensors.items() if t.is_floating_point() and t.dtype != dtype}
    assert not wrong, wrong
    x = ExportWrapper(small_model, image_size=(SIZE, SIZE)).preprocess(random_images(1, seed=5))
    fcls, _ = _maps(fast, x.to(dtype))
    assert all(m.dtype == dtype for m in fcls.values())
    if dtype == torch.float64 and conv_algorithm == "direct":  # winograd's class maps are tile-major here
        # against the fp64 model: the rewrites are exact up to fp64 rounding
        cls, _ = _maps(source, x.to(dtype))
        a, k = small_model.head.num_anchors, small_model.num_classes
        for lvl, ref in cls.items():
            b, _, h, w = ref.shape
            fg = ref.reshape(b, a, k, h, w)[:, :, 1:].reshape(b, a * (k - 1), h, w)
            torch.testing.assert_close(fcls[lvl].reshape(fg.shape), fg, rtol=0, atol=1e-9 * float(fg.abs().max()))
