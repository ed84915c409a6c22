"""The peer: torchvision's ``retinanet_resnet50_fpn`` on random weights (nothing is downloaded), for inference
(head made informative as this project's, :func:`.models.finish_predictors`) and for training (its reference
fine-tuning set-up and its own training step, whose anchor matching runs inside ``model(images, targets)``).
"""

from __future__ import annotations

import math
import statistics

import torch
from torch import nn

from .models import fan_in_normal_, finish_predictors, logit, make_images
from .timing import amp


@torch.no_grad()
def make_torchvision_informative(model, x, candidates_per_image: int) -> dict:
    """The same as :func:`.models.make_spinenet_informative` for torchvision's head (no norm layers in it;
    ReLU towers at He scale)."""
    model.eval()
    head = model.head
    feats = list(model.backbone(x).values())
    for sub, predict in ((head.classification_head, head.classification_head.cls_logits),
                         (head.regression_head, head.regression_head.bbox_reg)):
        for m in sub.conv.modules():
            if isinstance(m, nn.Conv2d):
                fan_in_normal_(m, math.sqrt(2.0))
        fan_in_normal_(predict)
    logits = head.classification_head(feats).flatten(1)
    info = finish_predictors(head.classification_head.cls_logits, head.regression_head.bbox_reg, logits,
                             head.regression_head(feats), candidates_per_image, model.score_thresh)
    logits = head.classification_head(feats).flatten(1)
    info["candidates_measured"] = float((logits > logit(model.score_thresh)).sum(1).float().mean())
    return info


def build_torchvision(args, device, calibration: dict | None = None):
    from torchvision.models.detection import retinanet_resnet50_fpn

    torch.manual_seed(args.seed)
    s = args.image_size
    # At most 100 detections per image, as this project and COCO's evaluation (torchvision's default is 300).
    model = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91, min_size=s, max_size=s,
                                   detections_per_img=100)
    model = model.to(device).eval()
    if args.candidates_per_image > 0:
        _, calib = make_images(4, s, device, args.seed)
        info = make_torchvision_informative(model, calib, args.candidates_per_image)
        if calibration is not None:
            calibration["torchvision"] = info
    return model.to(memory_format=torch.channels_last)


def torchvision_dets(out) -> dict:
    return {"detections_per_image": round(statistics.fmean(float(d["boxes"].shape[0]) for d in out), 2)}


def build_torchvision_for_training(image_size: int):
    """torchvision's reference fine-tuning set-up without the download: ResNet-50 with FrozenBatchNorm2d, stem
    and layer1 frozen (trainable_backbone_layers=3), FPN P3-P7; falls back to the public builder (all layers
    trainable, BatchNorm) if torchvision's internals moved. Returns (model, description)."""
    try:
        from torchvision.models import resnet50
        from torchvision.models.detection.retinanet import RetinaNet, _resnet_fpn_extractor
        from torchvision.ops.feature_pyramid_network import LastLevelP6P7
        from torchvision.ops.misc import FrozenBatchNorm2d

        backbone = resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
        backbone = _resnet_fpn_extractor(backbone, 3, returned_layers=[2, 3, 4],
                                         extra_blocks=LastLevelP6P7(256, 256))
        model = RetinaNet(backbone, 91, min_size=image_size, max_size=image_size)
        return model, "FrozenBatchNorm2d, trainable_backbone_layers=3 (torchvision's fine-tuning recipe)"
    except (ImportError, TypeError) as e:
        from torchvision.models.detection import retinanet_resnet50_fpn

        model = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91, min_size=image_size,
                                       max_size=image_size)
        return model, f"public builder, all layers trainable with BatchNorm ({type(e).__name__}: {e})"


class TorchvisionTraining:
    """torchvision's reference training step (``references/detection/engine.py``'s ``train_one_epoch``): the
    batch moved to the device, ``model(images, targets)`` under autocast (its transform, anchor matching and
    loss inside), backward, SGD momentum 0.9 with weight decay 1e-4."""

    def __init__(self, image_size: int, device, precision: str, channels_last: bool, seed: int):
        torch.manual_seed(seed)
        model, self.description = build_torchvision_for_training(image_size)
        model = model.to(device).train()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model, self.device, self.precision = model, device, precision
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(self.params, lr=0.01, momentum=0.9, weight_decay=1e-4)

    def step(self, images: list[torch.Tensor], targets: list[dict]) -> torch.Tensor:
        dev = self.device
        images = [im.to(dev, non_blocking=True) for im in images]
        targets = [{k: v.to(dev, non_blocking=True) for k, v in t.items()} for t in targets]
        with amp(dev, self.precision):
            losses = self.model(images, targets)
        loss = sum(losses.values())
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def own_bytes(self) -> int:
        """Weights and buffers, plus the momentum buffers of the trainable parameters."""
        from .timing import module_bytes

        return module_bytes(self.model) + sum(p.numel() * p.element_size() for p in self.params)
