"""Anchor values worked out by hand from spec §4.1."""

import math

import pytest
import torch

from spinenet.modeling.anchors import Anchors


def _close(actual, expected):
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=torch.float32), rtol=0, atol=1e-4)


@pytest.mark.parametrize("size, count", [(640, 76_725), (1024, 196_416), (1280, 306_900)])
def test_total_counts(size, count):
    # 640: (80² + 40² + 20² + 10² + 5²) = 8,525 locations x 9; 1024: 21,824 x 9; 1280: 34,100 x 9.
    anchors = Anchors((size, size))
    assert anchors.boxes.shape == (count, 4)
    assert anchors.boxes.dtype == torch.float32
    assert anchors.num_anchors_per_location == 9
    assert sum(len(b) for b in anchors.level_boxes.values()) == count


def test_feature_sizes_and_level_blocks():
    anchors = Anchors((640, 1024))
    assert dict(anchors.feature_sizes) == {3: (80, 128), 4: (40, 64), 5: (20, 32), 6: (10, 16), 7: (5, 8)}
    assert anchors.level_boxes[7].shape == (5 * 8 * 9, 4)
    torch.testing.assert_close(anchors.boxes[-5 * 8 * 9:], anchors.level_boxes[7])


def test_first_anchors_at_p3():
    boxes = Anchors((640, 640)).boxes
    # P3, stride 8: first centre (4, 4); scale 0 base = 3 * 8 = 24.
    # ar 1: half 12 -> [4-12, 4-12, 4+12, 4+12].
    _close(boxes[0], [-8.0, -8.0, 16.0, 16.0])
    # ar 2: half_w = 24·√2/2 = 16.97056, half_h = 24/√2/2 = 8.48528.
    _close(boxes[1], [4 - 8.48528, 4 - 16.97056, 4 + 8.48528, 4 + 16.97056])
    # ar 0.5: the transpose.
    _close(boxes[2], [4 - 16.97056, 4 - 8.48528, 4 + 16.97056, 4 + 8.48528])
    # scale 1, ar 1: base 24·2^(1/3) = 30.23811, half 15.11905.
    _close(boxes[3], [4 - 15.11905, 4 - 15.11905, 4 + 15.11905, 4 + 15.11905])
    # scale 2, ar 1: base 24·2^(2/3) = 38.09762, half 19.04881.
    _close(boxes[6], [4 - 19.04881, 4 - 19.04881, 4 + 19.04881, 4 + 19.04881])
    # Next location is x + 8 (x inner): centre (4, 12).
    _close(boxes[9], [-8.0, 0.0, 16.0, 24.0])
    # Second row starts after 80 locations: centre (12, 4).
    _close(boxes[80 * 9], [0.0, -8.0, 24.0, 16.0])


def test_last_anchor_at_p7():
    boxes = Anchors((640, 640)).boxes
    # P7, stride 128: last centre (576, 576) = 64 + 4·128. Scale 2, ar 0.5:
    # base = 3·128·2^(2/3) = 609.56200; half_w = base·√0.5/2 = 215.51273; half_h = base/√0.5/2 = 431.02545.
    base = 3 * 128 * 2 ** (2 / 3)
    half_w, half_h = base * math.sqrt(0.5) / 2, base / math.sqrt(0.5) / 2
    assert abs(half_w - 215.51273) < 1e-4 and abs(half_h - 431.02545) < 1e-4
    _close(boxes[-1], [576 - half_h, 576 - half_w, 576 + half_h, 576 + half_w])
    _close(boxes[-1], [144.97455, 360.48727, 1007.02545, 791.51273])


def test_anchor_size_4():
    # SpineNet-143/190: base 32 px at P3 scale 0.
    _close(Anchors((1280, 1280), anchor_size=4.0).boxes[0], [4 - 16.0, 4 - 16.0, 4 + 16.0, 4 + 16.0])


def test_model_garden_same_as_tpu_on_multiples_of_128():
    tpu = Anchors((640, 768))
    mg = Anchors((640, 768), convention="model_garden")
    assert torch.equal(tpu.boxes, mg.boxes)


def test_model_garden_aspect_ratio_order_comes_from_argument():
    mg = Anchors((640, 640), aspect_ratios=(0.5, 1.0, 2.0), convention="model_garden").boxes
    tpu = Anchors((640, 640)).boxes
    # Per location, (0.5, 1, 2) puts TF1's slots (2, 0, 1) first.
    torch.testing.assert_close(mg[:3], tpu[[2, 0, 1]])


def test_model_garden_non_multiple_size():
    # 100 x 200, P3: feat = ceil(100/8) = 13 rows, stride_y = 100/13 = 7.6923; centre_y (i + 0.5)·stride_y.
    # ceil(200/8) = 25 columns, stride_x = 8 exactly.
    anchors = Anchors((100, 200), 3, 4, num_scales=1, aspect_ratios=(1.0,), convention="model_garden")
    assert dict(anchors.feature_sizes) == {3: (13, 25), 4: (7, 13)}
    p3 = anchors.level_boxes[3].view(13, 25, 4)
    yc = (p3[:, 0, 0] + p3[:, 0, 2]) / 2
    torch.testing.assert_close(yc, (torch.arange(13) + 0.5) * (100 / 13), rtol=0, atol=1e-4)
    assert abs(yc[-1].item() - 96.15385) < 1e-4  # 12.5 · 7.69231
    xc = (p3[0, :, 1] + p3[0, :, 3]) / 2
    torch.testing.assert_close(xc, torch.arange(25) * 8.0 + 4.0)
    # P4: 7 rows, stride 100/7 = 14.2857; 13 columns, stride 200/13 = 15.3846; base 3·16 = 48.
    _close(anchors.level_boxes[4][0], [100 / 14 - 24, 100 / 13 - 24, 100 / 14 + 24, 100 / 13 + 24])


@pytest.mark.parametrize("kwargs, match", [
    (dict(image_size=(600, 640)), "divisible by 2\\*\\*max_level"),
    (dict(image_size=(640,)), "two positive integers"),
    (dict(image_size=(640, 640), min_level=5, max_level=4), "min_level <= max_level"),
    (dict(image_size=(640, 640), num_scales=0), "num_scales"),
    (dict(image_size=(640, 640), aspect_ratios=()), "aspect_ratios"),
    (dict(image_size=(640, 640), aspect_ratios=(1.0, -2.0)), "aspect_ratios"),
    (dict(image_size=(640, 640), anchor_size=0.0), "anchor_size"),
    (dict(image_size=(640, 640), convention="tf2"), "valid: tpu, model_garden"),
])
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Anchors(**kwargs)


def test_read_only_views():
    anchors = Anchors((256, 256))
    with pytest.raises(TypeError):
        anchors.level_boxes[3] = torch.zeros(1, 4)
    with pytest.raises(AttributeError):
        anchors.boxes = torch.zeros(1, 4)
