"""Multi-level RetinaNet anchors, in the reference's order (spec §4.1).

Boxes are ``[ymin, xmin, ymax, xmax]`` in pixels of the padded network input, never clipped. Order: levels
``min_level..max_level`` concatenated; within a level location-major (y outer, x inner); within a location
``for scale in range(num_scales)`` (outer) ``for aspect_ratio in aspect_ratios`` (inner). That is the order of
the head's channels (anchor index ``a = scale * len(aspect_ratios) + ratio_index``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType

import numpy as np
import torch
from torch import Tensor

CONVENTIONS = ("tpu", "model_garden")


def _centres_tpu(size: int, level: int) -> np.ndarray:
    # TF1 dataloader/anchor.py: ``tf.range(stride / 2, image_size, stride)`` in float32. Every value is a
    # multiple of 2^(level-1), so float32 holds it exactly.
    stride = 2**level
    return np.arange(stride / 2, size, stride, dtype=np.float64).astype(np.float32)


def _centres_model_garden(size: int, level: int) -> np.ndarray:
    # Model Garden official/vision/ops/anchor.py (Anchor._generate_multilevel_boxes):
    #   feat_size = math.ceil(image_size / 2**level)
    #   stride = tf.cast(image_size / feat_size, tf.float32)
    #   centres = tf.range(stride / 2, image_size, stride)
    # i.e. (i + 0.5) * stride, i = 0..feat_size-1. TF's Range kernel accumulates ``val += delta`` in float32,
    # which np.add.accumulate reproduces; for sizes that are multiples of 2^level it is exact and equals
    # the TF1 centres.
    feat = math.ceil(size / 2**level)
    stride = np.float32(size / feat)
    steps = np.full(feat, stride, dtype=np.float32)
    steps[0] = stride / np.float32(2)
    return np.add.accumulate(steps, dtype=np.float32)


def _half_sizes(level: int, num_scales: int, aspect_ratios: Sequence[float],
                anchor_size: float) -> tuple[Tensor, Tensor]:
    """(A,) float32 half heights and half widths, scale outer and aspect ratio inner."""
    half_h, half_w = [], []
    for scale in range(num_scales):
        for ratio in aspect_ratios:
            # The reference's exact float64 expressions; TF casts them to float32 before the subtraction.
            base = anchor_size * 2**level * 2 ** (scale / float(num_scales))
            half_w.append(base * ratio**0.5 / 2.0)
            half_h.append(base * ratio**-0.5 / 2.0)
    return torch.tensor(half_h, dtype=torch.float32), torch.tensor(half_w, dtype=torch.float32)


class Anchors:
    """Anchor boxes for one padded input size; read-only after construction.

    ``convention="tpu"`` is the TF1 reference and needs sizes divisible by ``2**max_level`` (its serving
    graph pads to a multiple of 128); ``"model_garden"`` also handles other sizes. The aspect-ratio order is
    the argument's: TF1 uses ``(1.0, 2.0, 0.5)``, Model Garden ``(0.5, 1.0, 2.0)``.
    """

    def __init__(self, image_size: tuple[int, int], min_level: int = 3, max_level: int = 7,
                 num_scales: int = 3, aspect_ratios: Sequence[float] = (1.0, 2.0, 0.5),
                 anchor_size: float = 3.0, convention: str = "tpu"):
        if len(image_size) != 2 or any(int(s) != s or s <= 0 for s in image_size):
            raise ValueError(f"image_size must be two positive integers (height, width), got {image_size!r}")
        if not (isinstance(min_level, int) and isinstance(max_level, int) and 1 <= min_level <= max_level):
            raise ValueError(f"need integer levels with 1 <= min_level <= max_level, got {min_level}, "
                             f"{max_level}")
        if not isinstance(num_scales, int) or num_scales < 1:
            raise ValueError(f"num_scales must be an integer >= 1, got {num_scales!r}")
        if len(aspect_ratios) == 0 or any(r <= 0 for r in aspect_ratios):
            raise ValueError(f"aspect_ratios must be a non-empty sequence of positive numbers, got "
                             f"{aspect_ratios!r}")
        if anchor_size <= 0:
            raise ValueError(f"anchor_size must be positive, got {anchor_size!r}")
        if convention not in CONVENTIONS:
            raise ValueError(f"convention {convention!r} is unknown; valid: {', '.join(CONVENTIONS)}")
        height, width = int(image_size[0]), int(image_size[1])
        if convention == "tpu" and (height % 2**max_level or width % 2**max_level):
            # TF1's range(stride/2, size, stride) would give fewer centres than the ceil(size/stride) feature
            # map for such sizes, so the reference never runs on them.
            raise ValueError(f"convention 'tpu' needs image_size divisible by 2**max_level = {2**max_level}, "
                             f"got {image_size!r}; pad the input (as the reference does) or use "
                             "convention='model_garden'")

        self._image_size = (height, width)
        self._min_level, self._max_level = min_level, max_level
        self._num_anchors_per_location = num_scales * len(aspect_ratios)
        centres = _centres_tpu if convention == "tpu" else _centres_model_garden
        level_boxes: dict[int, Tensor] = {}
        feature_sizes: dict[int, tuple[int, int]] = {}
        for level in range(min_level, max_level + 1):
            yc = torch.from_numpy(centres(height, level))  # (H_l,)
            xc = torch.from_numpy(centres(width, level))  # (W_l,)
            half_h, half_w = _half_sizes(level, num_scales, aspect_ratios, anchor_size)  # (A,) each
            yv = yc[:, None, None].expand(len(yc), len(xc), 1)  # (H_l, W_l, 1)
            xv = xc[None, :, None].expand(len(yc), len(xc), 1)  # (H_l, W_l, 1)
            # (H_l, W_l, 1) against (A,) -> (H_l, W_l, A, 4)
            boxes = torch.stack([yv - half_h, xv - half_w, yv + half_h, xv + half_w], dim=-1)
            level_boxes[level] = boxes.reshape(-1, 4)  # (H_l * W_l * A, 4)
            feature_sizes[level] = (len(yc), len(xc))
        self._level_boxes = MappingProxyType(level_boxes)
        self._feature_sizes = MappingProxyType(feature_sizes)
        self._boxes = torch.cat(list(level_boxes.values()), dim=0)  # (N, 4)

    @property
    def boxes(self) -> Tensor:
        """(N, 4) float32 yxyx, all levels concatenated."""
        return self._boxes

    @property
    def level_boxes(self) -> Mapping[int, Tensor]:
        """level -> (H_l * W_l * A, 4)."""
        return self._level_boxes

    @property
    def feature_sizes(self) -> Mapping[int, tuple[int, int]]:
        """level -> (H_l, W_l) = (ceil(H / 2^l), ceil(W / 2^l))."""
        return self._feature_sizes

    @property
    def num_anchors_per_location(self) -> int:
        return self._num_anchors_per_location

    @property
    def image_size(self) -> tuple[int, int]:
        return self._image_size

    def __len__(self) -> int:
        return self._boxes.shape[0]

    def __repr__(self) -> str:
        return (f"Anchors(image_size={self._image_size}, levels={self._min_level}..{self._max_level}, "
                f"per_location={self._num_anchors_per_location}, total={len(self)})")
