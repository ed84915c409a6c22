"""The detector: backbone + head, and the inference path (anchors + post-processing). It only composes."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from spinenet.modeling.anchors import Anchors
from spinenet.modeling.head import RetinaNetHead
from spinenet.modeling.postprocess import PostprocessParams, generate_detections
from spinenet.modeling.spinenet import SpineNet


@dataclass(frozen=True)
class AnchorParams:
    num_scales: int = 3
    aspect_ratios: tuple[float, ...] = (1.0, 2.0, 0.5)
    anchor_size: float = 3.0


@dataclass(frozen=True)
class DetectorParams:
    """Everything besides the weights that turns raw head outputs into detections."""

    min_level: int = 3
    max_level: int = 7
    convention: str = "tpu"
    anchor: AnchorParams = field(default_factory=AnchorParams)
    postprocess: PostprocessParams = field(default_factory=PostprocessParams)


class RetinaNet(nn.Module):
    """SpineNet + RetinaNet head.

    ``forward(images)`` takes normalised images ``(B, 3, H, W)`` (H, W multiples of 128) and returns raw maps
    ``(cls {level: (B, A*K, H/2^l, W/2^l)}, box {level: (B, A*4, H/2^l, W/2^l)})``. ``detect`` adds anchors and
    post-processing.
    """

    def __init__(self, backbone: SpineNet, head: RetinaNetHead, params: DetectorParams | None = None):
        super().__init__()
        self.backbone, self.head = backbone, head
        self.params = params or DetectorParams()
        self.num_classes = head.num_classes
        self._anchor_cache: dict[tuple[int, int, str], Tensor] = {}

    def forward(self, images: Tensor) -> tuple[dict[int, Tensor], dict[int, Tensor]]:
        return self.head(self.backbone(images))

    def anchors(self, image_size: tuple[int, int], device: torch.device | str = "cpu") -> Tensor:
        """(N, 4) yxyx anchors for a padded input of ``image_size`` (cached)."""
        key = (int(image_size[0]), int(image_size[1]), str(device))
        if key not in self._anchor_cache:
            p = self.params
            boxes = Anchors(key[:2], p.min_level, p.max_level, p.anchor.num_scales, p.anchor.aspect_ratios,
                            p.anchor.anchor_size, convention=p.convention).boxes
            self._anchor_cache[key] = boxes.to(device)
        return self._anchor_cache[key]

    @torch.no_grad()
    def detect(self, images: Tensor, image_info: Tensor | None = None) -> dict[str, Tensor]:
        """Detections for normalised, padded images ``(B, 3, H, W)``.

        ``image_info`` (B, 4, 2) as the reference builds it (§5.3); boxes come back in resized-input pixels
        ``[ymin, xmin, ymax, xmax]``. Without it the whole padded input is taken as the image.
        """
        cls_outputs, box_outputs = self(images)
        b, _, h, w = images.shape
        if image_info is None:
            image_info = default_image_info(b, h, w, images.device)
        return generate_detections(cls_outputs, box_outputs, self.anchors((h, w), images.device), image_info,
                                   self.params.postprocess)


def default_image_info(batch: int, height: int, width: int, device: torch.device | str = "cpu") -> Tensor:
    """(B, 4, 2) image_info of an unscaled, unpadded input: [[H, W], [H, W], [1, 1], [0, 0]]."""
    row = torch.tensor([[height, width], [height, width], [1.0, 1.0], [0.0, 0.0]], device=device)
    return row.expand(batch, 4, 2).clone()
