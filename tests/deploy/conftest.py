"""A small randomly initialised detector whose outputs are informative enough to give NMS real work."""

import math

import pytest
import torch

from spinenet.registry import create_model

SIZE = 128  # the smallest input SpineNet takes (2^max_level)
NUM_CLASSES = 6


@torch.no_grad()
def make_informative(model: torch.nn.Module, images: torch.Tensor) -> torch.nn.Module:
    """Re-initialise the head so that logits spread over ~[-8, 4] and box deltas over ~±1.

    A random SpineNet's features are tiny (std ~1e-3) and the head's reference init (std 0.01, predictor
    1e-5) keeps every logit at the prior -4.6, so no box would pass the score threshold. Each tower layer's
    BN statistics are set per level from ``images`` (normalised NCHW) with a scalar mean and variance, which
    stays well behaved on the 1x1 level-7 map.
    """
    model.eval()
    feats = model.backbone(images)
    for subnet, pred_std in ((model.head.class_net, 2.5), (model.head.box_net, 0.4)):
        for conv in subnet.convs:
            torch.nn.init.normal_(conv.weight, std=1.0 / math.sqrt(conv.weight[0].numel()))
        torch.nn.init.normal_(subnet.predict.weight, std=pred_std / math.sqrt(subnet.predict.weight[0].numel()))
        for level, x in feats.items():
            for conv, norm in zip(subnet.convs, subnet.norms[str(level)], strict=True):
                y = conv(x)
                norm.running_mean.fill_(y.mean().item())
                norm.running_var.fill_(y.var().item())
                x = subnet.act(norm(y))
    return model


def _random_images(batch: int, size: int = SIZE, seed: int = 0) -> torch.Tensor:
    """uint8 (B, H, W, 3) NHWC RGB noise."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, size, size, 3), generator=g, dtype=torch.uint8)


@pytest.fixture(scope="session")
def random_images():
    """``random_images(batch, size=128, seed=0)`` -> uint8 (B, H, W, 3) NHWC RGB noise."""
    return _random_images


@pytest.fixture(scope="session")
def small_model():
    """49S with 6 classes for 128x128 inputs, head re-initialised to be informative."""
    from spinenet.deploy.export import ExportWrapper

    torch.manual_seed(0)
    model = create_model("retinanet_spinenet49s", num_classes=NUM_CLASSES).eval()
    calib = ExportWrapper(model, batch_size=2, image_size=(SIZE, SIZE)).preprocess(_random_images(2, seed=123))
    return make_informative(model, calib)


@pytest.fixture(scope="session")
def small_onnx(small_model, tmp_path_factory):
    """``small_model`` exported once per session to a 128x128 ONNX file (the default post-processing)."""
    from spinenet.deploy.export import export_onnx

    return export_onnx(small_model, tmp_path_factory.mktemp("small_onnx") / "m.onnx", image_size=(SIZE, SIZE))
