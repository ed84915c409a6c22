"""The reference input pipeline (spec §5.2-§5.3), with values worked out by hand."""

import pytest
import torch
import torch.nn.functional as F

from spinenet.config import default_config
from spinenet.data.transforms import (
    EvalTransform,
    TrainTransform,
    compute_padded_size,
    horizontal_flip,
    normalize_image,
    resize_and_crop,
    resize_bilinear_legacy,
)


def _exact(actual, expected):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), rtol=0, atol=1e-6)


def test_normalize_image_values_and_layout():
    img = torch.tensor([[[0, 128, 255]]], dtype=torch.uint8)  # (1, 1, 3)
    out = normalize_image(img)
    assert out.shape == (3, 1, 1) and out.dtype == torch.float32
    expected = [(0 / 255 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, (255 / 255 - 0.406) / 0.225]
    torch.testing.assert_close(out.flatten(), torch.tensor(expected), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="uint8"):
        normalize_image(torch.zeros(2, 2, 3))


def test_legacy_bilinear_upsample_2x2_to_4x4():
    img = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])  # (1, 2, 2)
    # Legacy TF sampling: src = dst * in/out = [0, 0.5, 1, 1.5]; lower = [0, 0, 1, 1], upper = min(ceil, 1),
    # lerp = [0, .5, 0, .5]. Rows: [0, .5, 1, 1] and [2, 2.5, 3, 3]; then the same along y.
    expected = [[0.0, 0.5, 1.0, 1.0],
                [1.0, 1.5, 2.0, 2.0],
                [2.0, 2.5, 3.0, 3.0],
                [2.0, 2.5, 3.0, 3.0]]
    out = resize_bilinear_legacy(img, (4, 4))
    _exact(out[0], expected)
    # torch's align_corners=False samples at half-pixel centres, which is a different resize.
    assert not torch.allclose(F.interpolate(img[None], size=(4, 4), mode="bilinear", align_corners=False)[0], out)


def test_legacy_bilinear_downsample_has_no_antialias_and_non_integer_ratio():
    img = torch.arange(16.0).view(1, 4, 4)
    _exact(resize_bilinear_legacy(img, (2, 2))[0], [[0.0, 2.0], [8.0, 10.0]])  # src = [0, 2]: plain picks
    row = torch.tensor([[[0.0, 10.0, 20.0]]])  # (1, 1, 3) -> width 2: scale 1.5, src = [0, 1.5]
    _exact(resize_bilinear_legacy(row, (1, 2))[0], [[0.0, 15.0]])
    assert resize_bilinear_legacy(img, (4, 4)) is img


def test_compute_padded_size():
    assert compute_padded_size((640, 640), 128) == (640, 640)
    assert compute_padded_size((100, 200), 32) == (128, 224)


def test_eval_resize_scale_2_and_bottom_padding():
    # H=160, W=320 into 640x640: scale = min(640/160, 640/320) = 2 -> 320 x 640, then 320 rows of padding.
    img = torch.randn(3, 160, 320)
    res = resize_and_crop(img, torch.tensor([[10.0, 20.0, 50.0, 300.0]]), (640, 640), (640, 640))
    assert res.image.shape == (3, 640, 640)
    _exact(res.image_info, [[160, 320], [640, 640], [2, 2], [0, 0]])
    assert torch.all(res.image[:, 320:] == 0)
    torch.testing.assert_close(res.image[:, :320], resize_bilinear_legacy(img, (320, 640)))
    _exact(res.boxes, [[20.0, 40.0, 100.0, 600.0]])
    _exact(res.keep, [0])


def test_eval_transform_on_uint8_image_has_zero_padding():
    img = torch.randint(0, 256, (320, 640, 3), dtype=torch.uint8)  # H=320, W=640 -> scale 1
    out = EvalTransform((640, 640))(img, torch.tensor([[0.0, 0.0, 0.5, 0.5]]), torch.tensor([3]))
    _exact(out.image_info, [[320, 640], [640, 640], [1, 1], [0, 0]])
    assert torch.all(out.image[:, 320:] == 0)  # padding after normalisation = the mean colour
    torch.testing.assert_close(out.image[:, :320], normalize_image(img))
    _exact(out.boxes, [[0.0, 0.0, 160.0, 320.0]])
    assert out.classes.tolist() == [3]


def test_image_info_rows_and_rounding():
    # 333 x 777 into 640: scale = 640/777; scaled = round([333, 777] * scale) = [274, 640].
    res = resize_and_crop(torch.zeros(3, 333, 777), torch.zeros(0, 4), (640, 640), (640, 640))
    info = res.image_info
    _exact(info[0], [333, 777])
    _exact(info[1], [640, 640])  # row 1 is the constant desired size, as the reference
    torch.testing.assert_close(info[2], torch.tensor([274 / 333, 640 / 777]), rtol=0, atol=1e-6)
    _exact(info[3], [0, 0])
    assert torch.all(res.image[:, 274:] == 0) and res.boxes.shape == (0, 4)


def test_jitter_offset_crop_clipping_and_dropped_boxes():
    # H=100, W=200, desired 64x64, r ~ U[1.5, 1.5) = 1.5: scaled = 96, scale = min(.96, .48) = .48,
    # size = [48, 96], max offset = [0, 32]; ox = int(32 * u_x).
    img = torch.randn(3, 100, 200)
    boxes = torch.tensor([[10.0, 20.0, 50.0, 150.0],    # inside: x 9.6..72 - ox, clipped at 63
                          [10.0, 0.0, 50.0, 8.0],       # x 0..3.84: left of the crop -> width 0 -> dropped
                          [90.0, 100.0, 100.0, 120.0]])  # y 43.2..48: kept (below 63)
    gen = torch.Generator().manual_seed(3)
    replay = torch.Generator().manual_seed(3)
    torch.rand((), generator=replay)  # the scale draw
    u = torch.rand(2, generator=replay)
    ox = int(32 * float(u[1]))
    assert ox >= 4, "seed chosen so the crop removes the second box"
    res = resize_and_crop(img, boxes, (64, 64), (64, 64), 1.5, 1.5, gen)
    _exact(res.image_info, [[100, 200], [64, 64], [0.48, 0.48], [0, ox]])
    scaled = resize_bilinear_legacy(img, (48, 96))
    torch.testing.assert_close(res.image[:, :48], scaled[:, :, ox:ox + 64], rtol=0, atol=0)
    assert torch.all(res.image[:, 48:] == 0)
    _exact(res.keep, [0, 2])
    expected = torch.tensor([[4.8, 9.6 - ox, 24.0, 72.0 - ox], [43.2, 48.0 - ox, 48.0, 57.6 - ox]])
    torch.testing.assert_close(res.boxes, expected.clamp(0, 63), rtol=0, atol=1e-4)


def test_jitter_upscale_offsets_within_range():
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        res = resize_and_crop(torch.zeros(3, 32, 32), torch.zeros(0, 4), (32, 32), (32, 32), 0.5, 2.0, gen)
        sy, oy = float(res.image_info[2, 0]), float(res.image_info[3, 0])
        assert 0.5 <= sy <= 2.0 and 0 <= oy <= max(32 * sy - 32, 0)
        assert res.image.shape == (3, 32, 32)


def test_horizontal_flip_normalised_boxes():
    img = torch.arange(6.0).view(1, 2, 3)
    flipped, boxes = horizontal_flip(img, torch.tensor([[0.1, 0.2, 0.5, 0.3]]))
    _exact(flipped[0], [[2.0, 1.0, 0.0], [5.0, 4.0, 3.0]])
    _exact(boxes, [[0.1, 0.7, 0.5, 0.8]])  # xmin' = 1 - xmax, xmax' = 1 - xmin


def _gen_with_first_draw(above: bool) -> torch.Generator:
    for seed in range(100):
        g = torch.Generator().manual_seed(seed)
        if (float(torch.rand((), generator=g)) > 0.5) == above:
            return torch.Generator().manual_seed(seed)
    raise AssertionError("unreachable")


def test_train_transform_flip_matches_flipped_eval():
    img = torch.randint(0, 256, (16, 32, 3), dtype=torch.uint8)
    boxes, classes = torch.tensor([[0.25, 0.125, 0.5, 0.375]]), torch.tensor([7])
    train = TrainTransform((32, 32), aug_rand_hflip=True, size_divisor=32)
    flipped = train(img, boxes, classes, generator=_gen_with_first_draw(True))
    ref = EvalTransform((32, 32), size_divisor=32)(img.flip(1), torch.tensor([[0.25, 0.625, 0.5, 0.875]]), classes)
    torch.testing.assert_close(flipped.image, ref.image)
    torch.testing.assert_close(flipped.boxes, ref.boxes)
    plain = train(img, boxes, classes, generator=_gen_with_first_draw(False))
    torch.testing.assert_close(plain.image, EvalTransform((32, 32), size_divisor=32)(img, boxes, classes).image)


def test_transforms_from_config():
    cfg = default_config()
    cfg.retinanet_parser.aug_scale_min, cfg.retinanet_parser.aug_scale_max = 0.8, 1.2
    train = TrainTransform.from_config(cfg)
    assert (train.output_size, train.padded_size) == ((640, 640), (640, 640))
    assert (train.aug_scale_min, train.aug_scale_max, train.aug_rand_hflip) == (0.8, 1.2, True)
    ev = EvalTransform.from_config(cfg)
    assert ev.output_size == (640, 640) and ev.max_num_instances == 100
    with pytest.raises(ValueError, match="aug_scale_min"):
        TrainTransform((64, 64), aug_scale_min=2.0, aug_scale_max=1.0)


def test_eval_transform_caps_instances():
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5]] * 5)
    out = EvalTransform((32, 32), max_num_instances=3, size_divisor=32)(
        torch.zeros(8, 8, 3, dtype=torch.uint8), boxes, torch.arange(5))
    assert out.boxes.shape == (3, 4) and out.classes.tolist() == [0, 1, 2] and out.keep.tolist() == [0, 1, 2]
