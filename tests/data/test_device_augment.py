"""The device input path gives the CPU path's tensors: images bit for bit (flip, jitter 0.5-2, crop window only,
padding), box/class plans, and anchor labels (ties included) — here on the CPU; on CUDA the integer targets are
expected exact and the box targets within float32 tolerance (log on another device)."""

import numpy as np
import pytest
import torch

from spinenet.data.device_augment import plan_train_item, resize_crop_batch
from spinenet.data.transforms import TrainTransform
from spinenet.engine.device_input import collate_raw
from spinenet.modeling.anchors import Anchors
from spinenet.modeling.labeler import LabelerParams, label_batch, label_padded_batch

# Odd sizes on purpose: prime sides, portrait / landscape, smaller and larger than the output.
SIZES = [(37, 53), (128, 128), (97, 131), (200, 61), (64, 255), (129, 127)]


def _image(h, w, seed):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _boxes(n, seed):
    g = np.random.default_rng(seed)
    lo = g.uniform(0, 0.8, (n, 2))
    hi = lo + g.uniform(0.02, 0.5, (n, 2))
    return torch.tensor(np.concatenate([lo, np.minimum(hi, 1.0)], 1), dtype=torch.float32)


def _items(transform, count):
    """(pixels, boxes, classes, seed) per image, cycling through SIZES."""
    out = []
    for i in range(count):
        h, w = SIZES[i % len(SIZES)]
        out.append((_image(h, w, i), _boxes(1 + i % 5, 100 + i), torch.arange(1, 2 + i % 5), 1000 + i))
    return out


def _cpu(transform, item):
    pixels, boxes, classes, seed = item
    return transform(pixels, boxes, classes, generator=torch.Generator().manual_seed(seed))


def _device(transform, items):
    planned = [(p, plan_train_item(transform, p.shape[0], p.shape[1], b, c, torch.Generator().manual_seed(s)))
               for p, b, c, s in items]
    raw, skipped = collate_raw(planned)
    assert skipped == []
    return raw, resize_crop_batch(raw.images, raw.geometry, transform.output_size, transform.padded_size)


@pytest.mark.parametrize("output_size", [(128, 128), (120, 88)])  # (120, 88): a window smaller than the padding
def test_device_images_and_plans_equal_train_transform_bit_for_bit(output_size):
    transform = TrainTransform(output_size, aug_scale_min=0.5, aug_scale_max=2.0)
    items = _items(transform, 24)
    raw, images = _device(transform, items)
    flips = 0
    for i, item in enumerate(items):
        ref = _cpu(transform, item)
        assert images.shape[1:] == ref.image.shape == (3, 128, 128)
        assert torch.equal(images[i], ref.image), f"image {i} ({SIZES[i % len(SIZES)]}) differs"
        g = ref.boxes.shape[0]
        assert torch.equal(raw.boxes[i, :g], ref.boxes) and torch.equal(raw.classes[i, :g], ref.classes)
        assert (raw.classes[i, g:] == -1).all() and (raw.boxes[i, g:] == 0).all()
        # The geometry shipped is the image_info's: scaled size = image_size * scale, offset.
        info = ref.image_info
        assert raw.geometry[i, 4:6].tolist() == info[3].long().tolist()
        assert raw.geometry[i, 2:4].tolist() == torch.round(info[0] * info[2]).long().tolist()
        flips += int(raw.geometry[i, 6])
    assert 0 < flips < len(items)  # both branches exercised


def test_no_jitter_no_flip_is_a_plain_letterbox():
    transform = TrainTransform((128, 128), aug_rand_hflip=False)
    items = _items(transform, 6)
    _, images = _device(transform, items)
    for i, item in enumerate(items):
        assert torch.equal(images[i], _cpu(transform, item).image)


def test_channels_last_is_the_same_values():
    transform = TrainTransform((128, 128), aug_scale_min=0.5, aug_scale_max=2.0)
    raw, images = _device(transform, _items(transform, 4))
    nhwc = resize_crop_batch(raw.images, raw.geometry, (128, 128), (128, 128), channels_last=True)
    assert nhwc.is_contiguous(memory_format=torch.channels_last) and torch.equal(nhwc, images)


def test_bad_images_are_refused():
    with pytest.raises(ValueError, match="uint8 \\(B, H, W, 3\\)"):
        resize_crop_batch(torch.zeros(1, 8, 8, 3), torch.zeros(1, 7, dtype=torch.long), (8, 8), (8, 8))


def _anchors(size=128):
    return Anchors((size, size), 3, 7, 3, (1.0, 2.0, 0.5), 4.0).boxes


def _assert_labels_equal(gts, anchors, params=None):
    """Padded batch vs the per-image labeller: class targets and positives exact; box targets within float32
    tolerance (rtol 1e-6, atol 1e-6) — and on the CPU, where both run the same kernels, exact."""
    ref_cls, ref_box, ref_npos = label_batch(gts, anchors, params)
    g = max(b.shape[0] for b, _ in gts)
    boxes = torch.zeros(len(gts), g, 4)
    classes = torch.full((len(gts), g), -1, dtype=torch.long)
    for i, (b, c) in enumerate(gts):
        boxes[i, :b.shape[0]], classes[i, :c.shape[0]] = b, c
    cls_t, box_t, npos = label_padded_batch(boxes, classes, anchors, params, max_elements=3 * g * anchors.shape[0])
    assert torch.equal(cls_t, ref_cls) and torch.equal(npos, ref_npos)
    torch.testing.assert_close(box_t, ref_box, rtol=1e-6, atol=1e-6)
    assert torch.equal(box_t, ref_box)
    return cls_t


def test_padded_labels_equal_per_image_labels_with_ties():
    anchors = _anchors()
    a = anchors[100].clone()
    gts = [
        (torch.stack([a, a, a + 2.0]), torch.tensor([3, 1, 2])),  # identical GTs: every IoU ties; same best anchor
        (torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)),  # no box: all negative
        (anchors[[5, 5]].clone(), torch.tensor([4, 5])),  # two GTs equal to one anchor: the lower index claims it
        (torch.tensor([[10.0, 10.0, 60.0, 40.0]]), torch.tensor([2])),
        (torch.tensor([[0.0, 0.0, 127.0, 127.0], [30.0, 30.0, 31.0, 31.0]]), torch.tensor([1, 5])),  # a tiny box
    ]
    cls_t = _assert_labels_equal(gts, anchors)
    assert (cls_t[1] == -1).all()
    assert cls_t[2, 5] == 4  # tie: lowest GT index
    _assert_labels_equal(gts, anchors, LabelerParams(0.6, 0.4))  # an ignore band


def test_device_labels_equal_the_cpu_labeller_on_50_images():
    """The issue's check: 50 augmented images (odd sizes, jitter 0.5-2, flips), labelled both ways."""
    transform = TrainTransform((128, 128), aug_scale_min=0.5, aug_scale_max=2.0)
    items = _items(transform, 50)
    raw, _ = _device(transform, items)
    refs = [_cpu(transform, item) for item in items]
    anchors = _anchors()
    ref_cls, ref_box, ref_npos = label_batch([(r.boxes, r.classes) for r in refs], anchors)
    cls_t, box_t, npos = label_padded_batch(raw.boxes, raw.classes, anchors)
    assert torch.equal(cls_t, ref_cls) and torch.equal(npos, ref_npos)
    torch.testing.assert_close(box_t, ref_box, rtol=1e-6, atol=1e-6)
    assert torch.equal(box_t, ref_box)  # same kernels on the CPU: exact
    assert npos.sum() > 50
