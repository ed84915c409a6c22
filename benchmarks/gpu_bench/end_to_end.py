"""End-to-end rows: a uint8 NHWC batch in, detections (NMS included) out; and the post-processing alone.

This project: :class:`spinenet.deploy.export.ExportWrapper` (normalisation, the model, the static-shape exact
NMS; no Python loop over classes); optionally the normalisation + ``model.detect`` (the reference
post-processing), and the ExportWrapper's post-processing alone on head outputs computed before. torchvision:
``model.eval()(list of images)`` (its own transform, decoding and batched NMS; at most 100 detections per
image, as this project, instead of torchvision's default 300). Each row records its detections per image.
"""

from __future__ import annotations

import torch

from .models import spinenet_detect_dets, spinenet_dets
from .peers import torchvision_dets
from .timing import amp, module_bytes


def _wrapper(bench, sn, batch: int):
    try:
        return sn.wrapper(batch)
    except Exception as e:  # noqa: BLE001 - reported; the other rows still run
        bench.note(f"spinenet ExportWrapper at batch {batch}: {type(e).__name__}: {e}")
        return None


def spinenet_end_to_end_row(bench, sn, batch: int, precision: str, u8) -> None:
    w = _wrapper(bench, sn, batch)
    if w is not None:
        bench.measure(lambda: sn.end_to_end(w, u8, precision), model="spinenet", what="end-to-end",
                      variant="eager ExportWrapper (uint8 in, static exact NMS)", batch=batch, precision=precision,
                      own_bytes=module_bytes(w), check=spinenet_dets)


def spinenet_postprocess_row(bench, sn, batch: int, precision: str, u8) -> None:
    dev = bench.device
    w = _wrapper(bench, sn, batch)
    if w is None:
        return
    try:
        with torch.no_grad(), amp(dev, precision):
            cls, box = w.model(w.preprocess(u8))
    except Exception as e:  # noqa: BLE001
        bench.note(f"spinenet postprocess row at batch {batch} {precision}: {type(e).__name__}: {e}")
        return

    def post():
        with torch.no_grad(), amp(dev, precision):
            return sn.postprocess(w, cls, box)

    bench.measure(post, model="spinenet", what="postprocess", variant="ExportWrapper post-processing alone",
                  batch=batch, precision=precision, own_bytes=0, check=spinenet_dets)


def spinenet_detect_row(bench, sn, batch: int, precision: str, u8) -> None:
    dev = bench.device
    w = _wrapper(bench, sn, batch)
    if w is None:
        return

    def detect():
        with torch.no_grad(), amp(dev, precision):
            return sn.fast.detect(w.preprocess(u8), w.image_info)

    bench.measure(detect, model="spinenet", what="end-to-end",
                  variant="eager model.detect (uint8 in, reference post-processing)", batch=batch,
                  precision=precision, own_bytes=module_bytes(sn.fast), check=spinenet_detect_dets)


def torchvision_end_to_end_row(bench, tv, batch: int, precision: str, u8) -> None:
    dev = bench.device

    def end_to_end():
        with torch.no_grad(), amp(dev, precision):
            images = list((u8.permute(0, 3, 1, 2).float() * (1.0 / 255.0)).unbind(0))
            return tv(images)

    bench.measure(end_to_end, model="torchvision", what="end-to-end",
                  variant="eager model(list of images): transform, decode, batched NMS", batch=batch,
                  precision=precision, own_bytes=module_bytes(tv), check=torchvision_dets)
