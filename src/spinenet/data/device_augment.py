"""The training augmentation split in two: scalar draws in the data workers, pixel work batched on the device.

:class:`~spinenet.data.transforms.TrainTransform` normalises the whole image, flips it, resizes it whole with
TF1's legacy bilinear kernel, crops the window it keeps and pads. Here a worker only decodes and draws (flip,
scale, crop offset: the same draws in the same order from the item's own generator, through the same
:func:`~spinenet.data.transforms.crop_geometry`) and moves the boxes — a few float32 ops per box, done by the
very code the CPU path runs, so the box targets are the same bits. The pixels travel as uint8 and
:func:`resize_crop_batch` makes the network input of a whole batch on the training device, computing **only
the output pixels of the crop window**: per output pixel it gathers the four source pixels the legacy kernel
reads (through the flip), normalises them and interpolates — the same float32 operations in the same order as
normalise -> flip -> resize -> crop, so the same values (tested bit for bit on the CPU), at a cost that depends
on the output size, not on the jittered size (a 2x jitter resizes 4x the pixels it keeps).

No host synchronisation: every per-image quantity is a device tensor; only the batch's shapes are host values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from spinenet.data.transforms import IMAGE_MEAN, IMAGE_STD, TrainTransform, crop_boxes, crop_geometry

__all__ = ["GEOMETRY_FIELDS", "ItemPlan", "plan_train_item", "resize_crop_batch"]

_F32 = torch.float32
# Columns of the (B, 7) int64 geometry a worker ships per image.
GEOMETRY_FIELDS = ("in_h", "in_w", "scaled_h", "scaled_w", "offset_y", "offset_x", "flip")


class ItemPlan(NamedTuple):
    geometry: Tensor  # (7,) int64, GEOMETRY_FIELDS
    boxes: Tensor  # (G', 4) float32 yxyx pixels of the network input (as TrainTransform's)
    classes: Tensor  # (G',) int64


def plan_train_item(transform: TrainTransform, in_h: int, in_w: int, boxes: Tensor, classes: Tensor,
                    generator: torch.Generator | None = None) -> ItemPlan:
    """Everything :class:`TrainTransform` decides for an ``in_h x in_w`` image, without touching its pixels.

    Same draws in the same order (flip, then scale, then offset) and the same box arithmetic as
    ``TrainTransform.__call__``; ``boxes`` are normalised yxyx, as there.
    """
    flip = transform.aug_rand_hflip and bool(torch.rand((), generator=generator) > 0.5)
    boxes = torch.as_tensor(boxes, dtype=_F32).reshape(-1, 4)
    if flip:  # horizontal_flip's box half, on normalised boxes
        boxes = torch.stack([boxes[:, 0], 1.0 - boxes[:, 3], boxes[:, 2], 1.0 - boxes[:, 1]], dim=1)
    boxes = boxes * torch.tensor([float(in_h), float(in_w)] * 2, dtype=_F32)  # denormalize_boxes
    geo = crop_geometry(in_h, in_w, transform.output_size, transform.aug_scale_min, transform.aug_scale_max,
                        generator)
    boxes, keep = crop_boxes(boxes, geo, transform.padded_size)
    classes = torch.as_tensor(classes, dtype=torch.long).reshape(-1)[keep]
    cap = transform.max_num_instances
    if cap is not None:
        boxes, classes = boxes[:cap], classes[:cap]
    geometry = torch.tensor([in_h, in_w, int(geo.scaled[0]), int(geo.scaled[1]), int(geo.offset[0]),
                             int(geo.offset[1]), int(flip)], dtype=torch.long)
    return ItemPlan(geometry, boxes, classes)


def _axis(in_size: Tensor, out_size: Tensor, offset: Tensor, length: int, keep: int
          ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Batched ``_legacy_axis`` restricted to the crop window: for output positions ``0..length-1`` of each image,
    the source indices (lower, upper), the lerp weight and whether the position holds a pixel (inside both the
    window of ``keep`` and the resized image) or padding. Float32 as ``transforms._legacy_axis``: scale = in /
    out, src = (offset + i) * scale, so the window's weights are the whole resize's, bit for bit."""
    scale = in_size.to(_F32) / out_size.to(_F32)  # (B,)
    pos = offset[:, None] + torch.arange(length, device=in_size.device)  # (B, L) position in the resized image
    valid = (pos < out_size[:, None]) & (torch.arange(length, device=in_size.device) < keep)[None, :]
    src = pos.to(_F32) * scale[:, None]
    floor = torch.floor(src)
    top = (in_size - 1)[:, None]
    # Padding positions may point past the image; clamped (their value is replaced by 0 anyway).
    lower = torch.minimum(floor.long().clamp(min=0), top)
    upper = torch.minimum(torch.ceil(src).long(), top)
    return lower, upper, src - floor, valid


_CONSTANTS: dict[torch.device, tuple[Tensor, Tensor]] = {}


def _normalised(pixels: Tensor) -> Tensor:
    """uint8 (..., 3) RGB -> float32, as ``normalize_image`` (multiply by float32(1/255), subtract, divide)."""
    if pixels.device not in _CONSTANTS:  # made once per device: no host-to-device copy per batch
        _CONSTANTS[pixels.device] = (torch.tensor(IMAGE_MEAN, dtype=_F32, device=pixels.device),
                                     torch.tensor(IMAGE_STD, dtype=_F32, device=pixels.device))
    mean, std = _CONSTANTS[pixels.device]
    x = pixels.to(_F32).mul_(torch.tensor(1.0 / 255.0, dtype=_F32))
    return x.sub_(mean).div_(std)


def resize_crop_batch(images: Tensor, geometry: Tensor, desired_size: Sequence[int], padded_size: Sequence[int],
                      channels_last: bool = False) -> Tensor:
    """Network inputs (B, 3, Hp, Wp) float32 of a batch of uint8 images, as :class:`TrainTransform` makes them.

    ``images`` (B, Hmax, Wmax, 3) uint8 RGB, each image at the top-left (its own size in ``geometry``, the rest
    unused); ``geometry`` (B, 7) int64 (:data:`GEOMETRY_FIELDS`, from :func:`plan_train_item`), on the same
    device. ``channels_last`` returns the NHWC-strided tensor the gathers produce, without a copy.
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"resize_crop_batch expects uint8 (B, H, W, 3) images, got {images.dtype} "
                         f"{tuple(images.shape)}")
    batch = images.shape[0]
    pad_h, pad_w = int(padded_size[0]), int(padded_size[1])
    in_h, in_w, scaled_h, scaled_w, off_y, off_x, flip = geometry.to(images.device).unbind(1)
    y_lo, y_hi, y_lerp, y_ok = _axis(in_h, scaled_h, off_y, pad_h, int(desired_size[0]))
    x_lo, x_hi, x_lerp, x_ok = _axis(in_w, scaled_w, off_x, pad_w, int(desired_size[1]))
    # The flipped image's column c is the source's column in_w - 1 - c (the weights are unchanged).
    mirror = (in_w - 1)[:, None]
    x_lo = torch.where(flip[:, None] > 0, mirror - x_lo, x_lo)
    x_hi = torch.where(flip[:, None] > 0, mirror - x_hi, x_hi)
    # Normalised once per source pixel (elementwise, so the same values as normalising the whole image first);
    # then the four corners (B, Hp, Wp, 3) by flat pixel index (index_select of 3-float rows: ~2x faster on the
    # CPU than a 3-tensor advanced index), resize_bilinear_legacy's x lerp on both rows, then its y lerp.
    height, width = images.shape[1:3]
    source = _normalised(images).view(-1, 3)
    index_dtype = torch.int32 if source.shape[0] < 2**31 else torch.long
    image_base = torch.arange(batch, device=images.device)[:, None] * height
    rows_lo = ((image_base + y_lo) * width).to(index_dtype)[:, :, None]  # (B, Hp, 1)
    rows_hi = ((image_base + y_hi) * width).to(index_dtype)[:, :, None]
    cols_lo, cols_hi = x_lo.to(index_dtype)[:, None, :], x_hi.to(index_dtype)[:, None, :]  # (B, 1, Wp)

    def corner(pixels: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
        return pixels.index_select(0, (rows + cols).view(-1)).view(batch, pad_h, pad_w, 3)

    top_left, top_right = corner(source, rows_lo, cols_lo), corner(source, rows_lo, cols_hi)
    xw = x_lerp[:, None, :, None]
    top = top_right.sub_(top_left).mul_(xw).add_(top_left)  # tl + (tr - tl) * xl (addition commutes exactly)
    del top_left
    bottom_left, bottom_right = corner(source, rows_hi, cols_lo), corner(source, rows_hi, cols_hi)
    del source
    bottom = bottom_right.sub_(bottom_left).mul_(xw).add_(bottom_left)
    del bottom_left
    out = bottom.sub_(top).mul_(y_lerp[:, :, None, None]).add_(top)  # top + (bottom - top) * yl
    # Bottom/right padding after normalisation: 0, the mean colour.
    out = out.masked_fill_(~(y_ok[:, :, None, None] & x_ok[:, None, :, None]), 0.0)
    out = out.permute(0, 3, 1, 2)  # (B, 3, Hp, Wp), channels_last strides
    return out if channels_last else out.contiguous()
