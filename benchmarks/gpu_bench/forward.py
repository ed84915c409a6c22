"""Forward rows: backbone + head on a normalised NCHW channels-last tensor, raw head outputs.

This project: the eval-mode copy of :func:`spinenet.deploy.optimize.optimize_for_inference` (BN folded, direct
convolutions, channels padded to 16). torchvision: ``model.head(model.backbone(x))``.
"""

from __future__ import annotations

import torch

from .timing import amp, module_bytes


def spinenet_forward_row(bench, sn, batch: int, precision: str, x) -> None:
    dev = bench.device

    def forward():
        with torch.no_grad(), amp(dev, precision):
            return sn.fast(x)

    bench.measure(forward, model="spinenet", what="forward", variant="eager", batch=batch, precision=precision,
                  own_bytes=module_bytes(sn.fast))


def torchvision_forward_row(bench, tv, batch: int, precision: str, x) -> None:
    dev = bench.device

    def forward():
        with torch.no_grad(), amp(dev, precision):
            return tv.head(list(tv.backbone(x).values()))

    bench.measure(forward, model="torchvision", what="forward", variant="eager", batch=batch, precision=precision,
                  own_bytes=module_bytes(tv))
