"""This project's detector for the inference rows: inputs, random weights made informative, the inference
rewrite, and the callables (ExportWrapper, post-processing) the rows time.

Random weights would make NMS trivial (every score sits at the prior 0.01, below the 0.05 threshold), so
both detectors' heads are first made informative in the same way (:func:`finish_predictors`, shared with
:mod:`.peers`): tower convolutions re-drawn, box deltas spread to a std of 0.4, and the class logits spread
and shifted so that ``--candidates_per_image`` (anchor, class) scores per image pass the score threshold.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .timing import amp


def make_images(batch: int, size: int, device, seed: int):
    """uint8 NHWC RGB noise (B, S, S, 3) on ``device`` and its normalised NCHW channels-last float32 twin."""
    from spinenet.deploy.export import MEAN_RGB, STDDEV_RGB

    g = torch.Generator(device=device).manual_seed(seed)
    u8 = torch.randint(0, 256, (batch, size, size, 3), generator=g, dtype=torch.uint8, device=device)
    mean = torch.tensor(MEAN_RGB, device=device).reshape(1, 3, 1, 1)
    std = torch.tensor(STDDEV_RGB, device=device).reshape(1, 3, 1, 1)
    x = (u8.permute(0, 3, 1, 2).float() * (1.0 / 255.0) - mean) / std
    return u8, x.contiguous(memory_format=torch.channels_last)


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def fan_in_normal_(conv: nn.Conv2d, gain: float = 1.0) -> None:
    nn.init.normal_(conv.weight, std=gain / math.sqrt(conv.weight[0].numel()))
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


@torch.no_grad()
def finish_predictors(cls_predict: nn.Conv2d, box_predict: nn.Conv2d, class_logits, box_deltas,
                      candidates_per_image: int, score_threshold: float) -> dict:
    """Scale the predictors (biases zero on entry) so that box deltas have std 0.4 and class logits std 1, and
    shift the class bias so that ``candidates_per_image`` scores per image pass ``score_threshold``.
    ``class_logits`` (B, M) foreground logits, ``box_deltas`` (any shape), both computed with these weights."""
    box_predict.weight.mul_(0.4 / float(box_deltas.float().std()))
    z = class_logits.float()
    scale = 1.0 / float(z.std())
    cls_predict.weight.mul_(scale)
    z = z * scale
    k = min(candidates_per_image, z.shape[1])
    kth = float(z.topk(k, dim=1).values[:, -1].mean())
    bias = logit(score_threshold) - kth + 1e-3
    cls_predict.bias.fill_(bias)
    return {"class_bias": round(bias, 4), "candidates_target": candidates_per_image}


def _fg_logits(model, x):
    cls, _ = model(x)
    a, k = model.head.num_anchors, model.num_classes
    return torch.cat([c.reshape(c.shape[0], a, k, -1)[:, :, 1:].reshape(c.shape[0], -1) for c in cls.values()], 1)


@torch.no_grad()
def make_spinenet_informative(model, x, candidates_per_image: int) -> dict:
    """Re-draw the head (towers at fan-in scale, per-level BN statistics from ``x``) and set the predictors with
    :func:`finish_predictors`; ``model`` in eval mode, ``x`` normalised NCHW."""
    model.eval()
    head = model.head
    feats = model.backbone(x)
    for subnet in (head.class_net, head.box_net):
        for conv in subnet.convs:
            fan_in_normal_(conv)
        fan_in_normal_(subnet.predict)
        for level, f in feats.items():
            h = f
            for conv, norm in zip(subnet.convs, subnet.norms[str(level)], strict=True):
                y = conv(h)
                norm.running_mean.fill_(float(y.mean()))
                norm.running_var.fill_(float(y.var()))
                h = subnet.act(norm(y))
    info = finish_predictors(head.class_net.predict, head.box_net.predict, _fg_logits(model, x),
                             torch.cat([b.flatten(1) for b in head(feats)[1].values()], 1),
                             candidates_per_image, model.params.postprocess.score_threshold)
    logits = _fg_logits(model, x)
    info["candidates_measured"] = float((logits > logit(model.params.postprocess.score_threshold)).sum(1)
                                        .float().mean())
    return info


def build_spinenet(args, device, calibration: dict | None = None):
    """This project's detector (91 classes) with an informative head, and its inference rewrite on ``device``."""
    from spinenet.deploy.optimize import optimize_for_inference
    from spinenet.registry import create_model

    torch.manual_seed(args.seed)
    model = create_model("retinanet_spinenet49s", num_classes=91).to(device).eval()
    if args.candidates_per_image > 0:
        _, calib = make_images(4, args.image_size, device, args.seed)  # the first images of every row's batch
        info = make_spinenet_informative(model, calib, args.candidates_per_image)
        if calibration is not None:
            calibration["spinenet"] = info
    fast = optimize_for_inference(model, conv_algorithm="direct").to(device).to(memory_format=torch.channels_last)
    return model, fast.eval()


class SpineNetRunners:
    """ExportWrappers per batch size (built lazily) and the callables the rows time."""

    def __init__(self, args, device, base, fast):
        self.args, self.device, self.base, self.fast = args, device, base, fast
        self.wrappers: dict[int, nn.Module] = {}

    def wrapper(self, batch: int):
        from spinenet.deploy.export import ExportWrapper

        if batch not in self.wrappers:
            s = self.args.image_size
            w = ExportWrapper(self.base, batch_size=batch, image_size=(s, s), conv_algorithm="direct")
            self.wrappers[batch] = w.to(self.device).to(memory_format=torch.channels_last).eval()
        return self.wrappers[batch]

    def postprocess(self, wrapper, cls_outputs, box_outputs, background_channel: bool | None = None):
        """The ExportWrapper's post-processing (static-shape exact NMS) on raw head maps."""
        from spinenet.deploy.postprocess_export import generate_detections_export

        if background_channel is None:
            background_channel = wrapper.model.head.background_channel
        # Factory calls without a device inside the post-processing land on ``self.device``.
        with torch.device(self.device):
            dets = generate_detections_export(cls_outputs, box_outputs, wrapper.anchors, wrapper.image_info,
                                              wrapper.model.params.postprocess, wrapper.pre_nms_topk,
                                              background_channel=background_channel)
        return (dets["num_detections"], dets["detection_boxes"], dets["detection_classes"],
                dets["detection_scores"])

    def reference_postprocess(self, wrapper, cls_outputs, box_outputs):
        """``model.detect``'s post-processing (:func:`spinenet.modeling.postprocess.generate_detections`) on raw
        maps that keep the background channel."""
        from spinenet.modeling.postprocess import generate_detections

        s = self.args.image_size
        return generate_detections(cls_outputs, box_outputs, self.fast.anchors((s, s), self.device),
                                   wrapper.image_info, self.fast.params.postprocess)

    def end_to_end(self, wrapper, u8, precision: str):
        with torch.no_grad(), amp(self.device, precision), torch.device(self.device):
            return wrapper(u8)


def spinenet_dets(out) -> dict:
    return {"detections_per_image": round(float(out[0].float().mean()), 2)}


def spinenet_detect_dets(out) -> dict:
    return {"detections_per_image": round(float(out["num_detections"].float().mean()), 2)}
