"""The reference's RetinaNet input pipeline on torch tensors (spec §5.2-§5.3).

Order, as ``dataloader/retinanet_parser.py``: normalize -> (train: random horizontal flip) -> denormalize
boxes -> ``resize_and_crop_image`` (legacy TF1 bilinear, bottom/right zero padding) -> ``resize_and_crop_boxes``
-> drop empty boxes. Images enter as uint8 HWC RGB and leave as float32 CHW; boxes enter normalised
``[ymin, xmin, ymax, xmax]`` in [0, 1] (as the reference's tf.Example) and leave in network-input pixels.

All arithmetic is float32, as the TF graph's, so sizes round the same way (``torch.round`` and ``tf.round``
both round half to even).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

if TYPE_CHECKING:
    from spinenet.config import ExperimentConfig

__all__ = [
    "IMAGE_MEAN", "IMAGE_STD", "CropGeometry", "EvalTransform", "ResizeCropResult", "TrainTransform", "TransformOutput",
    "compute_padded_size", "crop_boxes", "crop_geometry", "horizontal_flip", "normalize_image", "resize_and_crop",
    "resize_bilinear_legacy",
]

IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)

_F32 = torch.float32


def normalize_image(image: Tensor) -> Tensor:
    """uint8 (H, W, 3) RGB -> float32 (3, H, W): ``(x / 255 - mean) / std`` (``input_utils.normalize_image``).

    ``tf.image.convert_image_dtype`` multiplies by float32(1/255) rather than dividing by 255; the two differ
    in the last bit for some values, so the multiply is kept.
    """
    image = torch.as_tensor(image)
    if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"normalize_image expects a uint8 (H, W, 3) RGB image, got {image.dtype} "
                         f"{tuple(image.shape)}")
    x = image.permute(2, 0, 1).to(_F32) * torch.tensor(1.0 / 255.0, dtype=_F32)  # (3, H, W)
    x = x - torch.tensor(IMAGE_MEAN, dtype=_F32).view(3, 1, 1)
    return x / torch.tensor(IMAGE_STD, dtype=_F32).view(3, 1, 1)


def _legacy_axis(in_size: int, out_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Source indices and weights of TF1's legacy bilinear resize along one axis (``resize_bilinear_op.cc``).

    ``src = dst * (in / out)`` in float32, no half-pixel offset; lower = floor(src), upper = min(ceil(src),
    in - 1), lerp = src - floor(src).
    """
    scale = torch.tensor(in_size, dtype=_F32) / torch.tensor(out_size, dtype=_F32)  # float32 division, as TF
    src = torch.arange(out_size, dtype=_F32) * scale
    floor = torch.floor(src)
    lower = floor.long().clamp(min=0)
    upper = torch.ceil(src).long().clamp(max=in_size - 1)
    return lower, upper, src - floor


def resize_bilinear_legacy(image: Tensor, size: Sequence[int]) -> Tensor:
    """Bilinear resize of a float (C, H, W) image to ``size = (h, w)`` as ``tf.image.resize_images`` (TF1).

    align_corners=False with the legacy (non half-pixel) sampling and no antialiasing; this is *not*
    ``F.interpolate(..., align_corners=False)``, which samples at half-pixel centres. Per output pixel:
    ``top = tl + (tr - tl) * xl; bottom = bl + (br - bl) * xl; out = top + (bottom - top) * yl`` — done
    separably (x on all rows, then y), which performs the same float operations in the same order.
    """
    out_h, out_w = int(size[0]), int(size[1])
    if image.ndim != 3:
        raise ValueError(f"expected a (C, H, W) image, got shape {tuple(image.shape)}")
    _, in_h, in_w = image.shape
    if (out_h, out_w) == (in_h, in_w):
        return image  # tf.image.resize_images returns the input unchanged in this case too
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"resize target must be positive, got {(out_h, out_w)}")
    x_lo, x_hi, x_lerp = _legacy_axis(in_w, out_w)
    y_lo, y_hi, y_lerp = _legacy_axis(in_h, out_h)
    left, right = image[:, :, x_lo], image[:, :, x_hi]  # (C, H, out_w)
    rows = left + (right - left) * x_lerp  # (C, H, out_w)
    top, bottom = rows[:, y_lo, :], rows[:, y_hi, :]  # (C, out_h, out_w)
    return top + (bottom - top) * y_lerp.view(1, -1, 1)


def compute_padded_size(desired_size: Sequence[int], stride: int) -> tuple[int, int]:
    """Smallest multiple of ``stride`` >= each side (``input_utils.compute_padded_size``)."""
    return tuple(int(math.ceil(d / stride) * stride) for d in desired_size)  # type: ignore[return-value]


class ResizeCropResult(NamedTuple):
    image: Tensor  # (C, padded_h, padded_w) float32; zero (= mean colour) padding at the bottom/right
    boxes: Tensor  # (G', 4) yxyx pixels in the network-input frame, float32
    image_info: Tensor  # (4, 2) float32: [[H, W], [desired_h, desired_w], [y_scale, x_scale], [y_off, x_off]]
    keep: Tensor  # (G',) long: indices into the input boxes that survived


class CropGeometry(NamedTuple):
    image_size: Tensor  # (2,) float32 [H, W] of the source
    desired: Tensor  # (2,) float32 [desired_h, desired_w]
    scaled: Tensor  # (2,) float32 [h, w] of the resized (jittered) image, whole numbers
    image_scale: Tensor  # (2,) float32 [y_scale, x_scale] = scaled / image_size
    offset: Tensor  # (2,) int64 [y, x]: top-left of the crop window in the resized image


def crop_geometry(in_h: int, in_w: int, desired_size: Sequence[int], scale_min: float = 1.0, scale_max: float = 1.0,
                  generator: torch.Generator | None = None) -> CropGeometry:
    """The scalar half of ``resize_and_crop_image``: jittered size and crop offset, in float32 as the TF graph.

    Jitter is on when either bound is not 1: r ~ U[min, max) (one draw), then the crop offset u ~ U[0, 1)^2 (a
    second draw), both from ``generator``. Shared by :func:`resize_and_crop` and the device input path
    (:mod:`spinenet.data.device_augment`), so both draw and round identically.
    """
    desired = torch.tensor([float(desired_size[0]), float(desired_size[1])], dtype=_F32)
    image_size = torch.tensor([float(in_h), float(in_w)], dtype=_F32)
    jitter = scale_min != 1.0 or scale_max != 1.0
    if jitter:
        r = scale_min + (scale_max - scale_min) * torch.rand((), generator=generator, dtype=_F32)
        scaled = torch.round(r * desired)
    else:
        scaled = desired
    scale = torch.minimum(scaled[0] / image_size[0], scaled[1] / image_size[1])
    scaled = torch.round(image_size * scale)
    image_scale = scaled / image_size  # (y_scale, x_scale)
    if jitter:
        max_offset = torch.clamp(scaled - desired, min=0.0)
        offset = (max_offset * torch.rand(2, generator=generator, dtype=_F32)).long()  # truncation, as tf.cast
    else:
        offset = torch.zeros(2, dtype=torch.long)
    return CropGeometry(image_size, desired, scaled, image_scale, offset)


def crop_boxes(boxes: Tensor, geo: CropGeometry, padded_size: Sequence[int]) -> tuple[Tensor, Tensor]:
    """``resize_and_crop_boxes`` + empty-box filtering: (G', 4) yxyx network-input pixels and the kept indices."""
    pad_h, pad_w = int(padded_size[0]), int(padded_size[1])
    boxes = torch.as_tensor(boxes, dtype=_F32).reshape(-1, 4)
    boxes = boxes * geo.image_scale.repeat(2) - geo.offset.to(_F32).repeat(2)
    limit = torch.tensor([pad_h - 1.0, pad_w - 1.0] * 2, dtype=_F32)
    boxes = torch.maximum(torch.minimum(boxes, limit), torch.zeros(()))
    keep = torch.nonzero((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).flatten()
    return boxes[keep], keep


def resize_and_crop(image: Tensor, boxes: Tensor, desired_size: Sequence[int], padded_size: Sequence[int],
                    scale_min: float = 1.0, scale_max: float = 1.0,
                    generator: torch.Generator | None = None) -> ResizeCropResult:
    """``resize_and_crop_image`` + ``resize_and_crop_boxes`` + empty-box filtering (spec §5.2 steps 6-7).

    Args:
        image: (C, H, W) float, already normalised.
        boxes: (G, 4) yxyx pixels in the original frame.
        desired_size / padded_size: (h, w); padded >= desired.
        scale_min / scale_max: jitter is on when either is not 1: r ~ U[min, max) (one draw), then the
            crop offset u ~ U[0, 1)^2 (a second draw), both from ``generator``.

    Boxes are clipped to ``[0, padded - 1]``: the reference parser passes the padded image's shape to
    ``clip_boxes``; that equals ``desired - 1`` whenever desired is a multiple of 2**max_level (every config).
    """
    _, in_h, in_w = image.shape
    pad_h, pad_w = int(padded_size[0]), int(padded_size[1])
    if pad_h < desired_size[0] or pad_w < desired_size[1]:
        raise ValueError(f"padded_size {tuple(padded_size)} must be >= desired_size {tuple(desired_size)}")
    geo = crop_geometry(in_h, in_w, desired_size, scale_min, scale_max, generator)
    image_size, desired, scaled, image_scale, offset = (geo.image_size, geo.desired, geo.scaled, geo.image_scale,
                                                        geo.offset)

    out = resize_bilinear_legacy(image, (int(scaled[0]), int(scaled[1])))
    oy, ox = int(offset[0]), int(offset[1])
    out = out[:, oy:oy + int(desired_size[0]), ox:ox + int(desired_size[1])]
    # Pad after normalisation, so the padding is 0 = the mean colour (pad_to_bounding_box at (0, 0)).
    out = torch.nn.functional.pad(out, (0, pad_w - out.shape[2], 0, pad_h - out.shape[1]))

    boxes, keep = crop_boxes(boxes, geo, padded_size)
    image_info = torch.stack([image_size, desired, image_scale, offset.to(_F32)])  # (4, 2)
    return ResizeCropResult(out, boxes, image_info, keep)


def horizontal_flip(image: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
    """Mirror a (C, H, W) image and its boxes, given **normalised** yxyx in [0, 1] (as the reference):
    ``xmin' = 1 - xmax``, ``xmax' = 1 - xmin``."""
    boxes = torch.as_tensor(boxes)
    flipped = torch.stack([boxes[:, 0], 1.0 - boxes[:, 3], boxes[:, 2], 1.0 - boxes[:, 1]], dim=1)
    return image.flip(-1), flipped


class TransformOutput(NamedTuple):
    image: Tensor  # (3, padded_h, padded_w) float32
    boxes: Tensor  # (G', 4) yxyx pixels in the network-input frame
    classes: Tensor  # (G',) long
    image_info: Tensor  # (4, 2) float32 (spec §5.3)
    keep: Tensor  # (G',) long: indices of the surviving input boxes (to gather other per-box fields)


def _check_size(output_size: Sequence[int]) -> tuple[int, int]:
    if len(output_size) != 2 or min(output_size) <= 0:
        raise ValueError(f"output_size must be [height, width] with positive sides, got {list(output_size)}")
    return int(output_size[0]), int(output_size[1])


class _Transform:
    def __init__(self, output_size: Sequence[int], size_divisor: int) -> None:
        self.output_size = _check_size(output_size)
        self.padded_size = compute_padded_size(self.output_size, size_divisor)

    def _run(self, image: Tensor, boxes: Tensor, classes: Tensor, flip: bool, scale_min: float,
             scale_max: float, generator: torch.Generator | None) -> TransformOutput:
        x = normalize_image(image)  # (3, H, W)
        boxes = torch.as_tensor(boxes, dtype=_F32).reshape(-1, 4)
        if flip:
            x, boxes = horizontal_flip(x, boxes)
        h, w = x.shape[1:]
        boxes = boxes * torch.tensor([float(h), float(w)] * 2, dtype=_F32)  # denormalize_boxes
        res = resize_and_crop(x, boxes, self.output_size, self.padded_size, scale_min, scale_max, generator)
        classes = torch.as_tensor(classes, dtype=torch.long).reshape(-1)[res.keep]
        return TransformOutput(res.image, res.boxes, classes, res.image_info, res.keep)


class TrainTransform(_Transform):
    """Training parse: normalise, random flip (p = 0.5), scale jitter + random crop, pad (spec §5.2).

    Call with ``(image uint8 (H, W, 3), boxes (G, 4) normalised yxyx, classes (G,))``; randomness comes
    from ``generator`` (default: torch's global RNG, which DataLoader seeds per worker). Draw order as the
    reference: flip, then scale, then crop offset.

    ``max_num_instances``: the reference caps only the *evaluation* ground truth, so training keeps every
    box by default (``None``); an int keeps the first N surviving boxes.
    """

    def __init__(self, output_size: Sequence[int] = (640, 640), aug_rand_hflip: bool = True,
                 aug_scale_min: float = 1.0, aug_scale_max: float = 1.0, max_num_instances: int | None = None,
                 size_divisor: int = 128) -> None:
        super().__init__(output_size, size_divisor)
        if not 0 < aug_scale_min <= aug_scale_max:
            raise ValueError(f"need 0 < aug_scale_min <= aug_scale_max, got {aug_scale_min}, {aug_scale_max}")
        self.aug_rand_hflip = aug_rand_hflip
        self.aug_scale_min = float(aug_scale_min)
        self.aug_scale_max = float(aug_scale_max)
        self.max_num_instances = max_num_instances

    @classmethod
    def from_config(cls, cfg: ExperimentConfig) -> TrainTransform:
        p = cfg.retinanet_parser
        return cls(p.output_size, p.aug_rand_hflip, p.aug_scale_min, p.aug_scale_max,
                   size_divisor=2 ** cfg.architecture.max_level)

    def __call__(self, image: Tensor, boxes: Tensor, classes: Tensor,
                 generator: torch.Generator | None = None) -> TransformOutput:
        # preprocessor.random_horizontal_flip: flip when U[0, 1) > 0.5.
        flip = self.aug_rand_hflip and bool(torch.rand((), generator=generator) > 0.5)
        out = self._run(image, boxes, classes, flip, self.aug_scale_min, self.aug_scale_max, generator)
        return _cap(out, self.max_num_instances)

    def __repr__(self) -> str:
        return (f"TrainTransform(output_size={list(self.output_size)}, aug_rand_hflip={self.aug_rand_hflip}, "
                f"aug_scale_min={self.aug_scale_min}, aug_scale_max={self.aug_scale_max}, "
                f"padded_size={list(self.padded_size)})")


class EvalTransform(_Transform):
    """Eval / predict parse: normalise, resize the longer side to fit ``output_size``, pad bottom/right.

    No flip, no jitter (offset 0). ``max_num_instances`` caps the boxes kept (first N), as the reference
    pads/caps its evaluation ground truth; ``None`` keeps all.
    """

    def __init__(self, output_size: Sequence[int] = (640, 640), max_num_instances: int | None = 100,
                 size_divisor: int = 128) -> None:
        super().__init__(output_size, size_divisor)
        self.max_num_instances = max_num_instances

    @classmethod
    def from_config(cls, cfg: ExperimentConfig) -> EvalTransform:
        p = cfg.retinanet_parser
        return cls(p.output_size, p.max_num_instances, size_divisor=2 ** cfg.architecture.max_level)

    def __call__(self, image: Tensor, boxes: Tensor, classes: Tensor,
                 generator: torch.Generator | None = None) -> TransformOutput:
        del generator  # deterministic; accepted so both transforms share one call signature
        return _cap(self._run(image, boxes, classes, False, 1.0, 1.0, None), self.max_num_instances)

    def __repr__(self) -> str:
        return (f"EvalTransform(output_size={list(self.output_size)}, max_num_instances={self.max_num_instances}"
                f", padded_size={list(self.padded_size)})")


def _cap(out: TransformOutput, n: int | None) -> TransformOutput:
    if n is None or out.boxes.shape[0] <= n:
        return out
    return out._replace(boxes=out.boxes[:n], classes=out.classes[:n], keep=out.keep[:n])
