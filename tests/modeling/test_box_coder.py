"""Box coding values worked out by hand from spec §4.3, §4.4 and model-garden-reference.md."""

import math

import pytest
import torch

from spinenet.modeling.box_coder import BBOX_XFORM_CLIP, clip_boxes, decode_boxes, encode_boxes

ANCHOR = torch.tensor([0.0, 0.0, 10.0, 20.0])  # no +1: ha 10, wa 20, centre (5, 10)


def _close(actual, expected, atol=1e-5):
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), rtol=0, atol=atol)


def test_encode_known_box():
    # box [1, 2, 21, 12]: h 20, w 10, centre (11, 7).
    # ty = (11 - 5)/10 = 0.6; tx = (7 - 10)/20 = -0.15; th = log(20/10) = log 2; tw = log(10/20) = -log 2.
    box = torch.tensor([1.0, 2.0, 21.0, 12.0])
    _close(encode_boxes(box, ANCHOR), [0.6, -0.15, math.log(2), -math.log(2)])


def test_encode_identical_box_is_zero_and_zero_size_is_finite():
    _close(encode_boxes(ANCHOR, ANCHOR), [0.0, 0.0, 0.0, 0.0])
    # EPSILON keeps log(0 / 0) finite: h = w = 1e-8 for both -> th = tw = log(1) = 0.
    point = torch.tensor([3.0, 3.0, 3.0, 3.0])
    _close(encode_boxes(point, point), [0.0, 0.0, 0.0, 0.0])


def test_decode_zero_deltas_returns_anchor_tpu():
    # +1 convention: ha = 11, yca = 5.5, h = 11 -> ymin = 0, ymax = 0 + 11 - 1 = 10.
    anchors = torch.tensor([[0.0, 0.0, 10.0, 20.0], [-8.0, -8.0, 16.0, 16.0], [3.5, 7.25, 40.0, 9.0]])
    _close(decode_boxes(torch.zeros(3, 4), anchors), anchors.tolist())


def test_decode_nonzero_tpu_plus_one_arithmetic():
    # deltas [0.1, -0.2, log 2, 0]; ha = 11, wa = 21, yca = 5.5, xca = 10.5.
    # yc = 0.1·11 + 5.5 = 6.6; xc = -0.2·21 + 10.5 = 6.3; h = 22; w = 21.
    # ymin = 6.6 - 11 = -4.4; ymax = -4.4 + 22 - 1 = 16.6; xmin = 6.3 - 10.5 = -4.2; xmax = -4.2 + 21 - 1 = 15.8.
    deltas = torch.tensor([0.1, -0.2, math.log(2), 0.0])
    _close(decode_boxes(deltas, ANCHOR), [-4.4, -4.2, 16.6, 15.8])


def test_decode_nonzero_model_garden():
    # No +1: ha 10, wa 20, centre (5, 10); yc = 1 + 5 = 6; xc = -4 + 10 = 6; h = 20; w = 20.
    deltas = torch.tensor([0.1, -0.2, math.log(2), 0.0])
    _close(decode_boxes(deltas, ANCHOR, "model_garden"), [-4.0, -4.0, 16.0, 16.0])


def test_decode_clips_dh_dw():
    assert abs(BBOX_XFORM_CLIP - 4.135166556742356) < 1e-12  # log(1000/16)
    # tpu, anchor [0, 0, 15, 15]: ha = wa = 16, centre 8. dh = dw = 10 -> exp(log 62.5)·16 = 1000.
    # ymin = 8 - 500 = -492; ymax = -492 + 1000 - 1 = 507.
    anchor = torch.tensor([0.0, 0.0, 15.0, 15.0])
    _close(decode_boxes(torch.tensor([0.0, 0.0, 10.0, 10.0]), anchor), [-492.0, -492.0, 507.0, 507.0], atol=1e-3)
    # Only from above: dh = -10 is kept (h = 16·e^-10).
    small = decode_boxes(torch.tensor([0.0, 0.0, -10.0, 0.0]), anchor)
    _close(small[2] - small[0] + 1, 16 * math.exp(-10))
    # model_garden: ha = 15 -> h = 937.5, centre 7.5 -> [-461.25, 476.25].
    mg = decode_boxes(torch.tensor([0.0, 0.0, 10.0, 10.0]), anchor, "model_garden")
    _close(mg, [-461.25, -461.25, 476.25, 476.25], atol=1e-3)


def test_model_garden_round_trip():
    g = torch.Generator().manual_seed(0)
    anchors = torch.rand(50, 4, generator=g) * 300
    anchors[:, 2:] = anchors[:, :2] + 8 + torch.rand(50, 2, generator=g) * 200
    boxes = torch.rand(50, 4, generator=g) * 300
    boxes[:, 2:] = boxes[:, :2] + 4 + torch.rand(50, 2, generator=g) * 200
    torch.testing.assert_close(decode_boxes(encode_boxes(boxes, anchors), anchors, "model_garden"), boxes,
                               rtol=0, atol=1e-3)
    # The tpu decoder is deliberately not the encoder's inverse (+1 convention): off by ~0.5 px here.
    tpu = decode_boxes(encode_boxes(boxes, anchors), anchors, "tpu")
    assert (tpu - boxes).abs().max() > 0.1


def test_broadcasting_and_inputs_untouched():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 20.0], [5.0, 5.0, 9.0, 9.0]])  # (N=2, 4)
    deltas = torch.zeros(3, 2, 4)  # (B=3, N=2, 4)
    deltas_copy, anchors_copy = deltas.clone(), anchors.clone()
    out = decode_boxes(deltas, anchors)
    assert out.shape == (3, 2, 4)
    _close(out[2], anchors.tolist())
    assert torch.equal(deltas, deltas_copy) and torch.equal(anchors, anchors_copy)
    assert encode_boxes(anchors.expand(3, 2, 4), anchors).shape == (3, 2, 4)


def test_clip_boxes():
    boxes = torch.tensor([[-5.0, 3.0, 700.0, 650.0], [10.0, -1.0, 20.0, 30.0]])
    hw = torch.tensor([640.0, 480.0])
    _close(clip_boxes(boxes, hw), [[0.0, 3.0, 639.0, 479.0], [10.0, 0.0, 20.0, 30.0]])  # [0, size - 1]
    _close(clip_boxes(boxes, hw, "model_garden"), [[0.0, 3.0, 640.0, 480.0], [10.0, 0.0, 20.0, 30.0]])


def test_clip_boxes_per_image():
    boxes = torch.full((2, 3, 4), 1000.0)  # (B, N, 4)
    hw = torch.tensor([[[640.0, 480.0]], [[100.0, 200.0]]])  # (B, 1, 2)
    out = clip_boxes(boxes, hw)
    _close(out[0, 2], [639.0, 479.0, 639.0, 479.0])
    _close(out[1, 0], [99.0, 199.0, 99.0, 199.0])


def test_unknown_convention():
    with pytest.raises(ValueError, match="valid: tpu, model_garden"):
        decode_boxes(torch.zeros(4), ANCHOR, "tf2")
    with pytest.raises(ValueError, match="valid: tpu, model_garden"):
        clip_boxes(ANCHOR, torch.tensor([1.0, 1.0]), "tf2")
