"""Inference rewrites of a trained RetinaNet: the same function, computed with less work.

:func:`optimize_for_inference` returns an eval-mode copy (the original is untouched) in which

* every BatchNorm that follows a backbone convolution is folded into that convolution's weights and bias;
* optionally (``drop_background=True``, for graphs that end in post-processing) the class predictor loses the
  background channel of each anchor, which the reference's post-processing never reads: 9 of 819 output
  channels for COCO; with Winograd, its maps on Winograd levels then come back in tile-major order
  ((B, 16, H/4, W/4, A*(K-1)), see :mod:`spinenet.deploy.winograd_head`), which the export's post-processing
  reads directly, skipping the reordering of the largest tensor in the graph;
* the backbone's channel counts are rounded up to multiples of ``channel_multiple`` (8) with zero filters
  (:func:`pad_backbone_channels`), and the 1x1 reductions that read the same feature run as one convolution
  (:class:`SharedReduceSpineNet`);
* 3x3 stride-1 convolutions run as Winograd F(4x4, 3x3) (:mod:`spinenet.deploy.winograd`) on feature maps of
  at least ``winograd_min_pixels`` pixels: all of the head's, chained in the tile domain from layer to layer
  (:class:`~spinenet.deploy.winograd_head.WinogradHead`), and the backbone's with at least
  ``backbone_winograd_min_channels`` (80) input channels; smaller maps and narrower backbone convolutions keep
  direct convolutions, which are faster there (see ``DEFAULT_WINOGRAD_MIN_PIXELS``).

Each is exact in real arithmetic; in float32 Winograd moves a layer's outputs by about 1e-5 of their largest
magnitude and folding by rounding only (the whole network then amplifies that as it amplifies any rounding;
``benchmarks/fast_path_accuracy.py`` checks the mAP). The copy is for running and exporting, not for training
or saving: its parameters are laid out differently from a checkpoint's.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from spinenet.deploy.winograd import SizeSwitchedConv, is_winograd_compatible
from spinenet.deploy.winograd_head import WinogradHead
from spinenet.modeling.head import RetinaNetHead, SeparableConv2d
from spinenet.modeling.layers import ConvNormAct, batchnorm_affine
from spinenet.modeling.retinanet import RetinaNet
from spinenet.modeling.spinenet import SpineNet
from spinenet.modeling.spinenet_mobile import SpineNetMobile

# Where Winograd pays, measured on the 2-core CPU (whole SpineNet-49S at 640x640, fp32, each placement against
# the others in the same process). ONNX Runtime: Winograd in the head on maps of 40x40 and more, 0.89x the time
# of all-direct convolutions; on maps of 20x20 and more, 0.96x of that; 10x10 and more, no further change;
# 80x80 only, 1.02x. OpenVINO: the same ranking (head from 10x10: 1.01x).
DEFAULT_WINOGRAD_MIN_PIXELS = 20 * 20
# In the backbone only the wide 3x3 convolutions gain: 49S's 88- and 168-channel ones (blocks on levels 3-5) at
# 20x20 and more. Its 48-channel ones on level 2 (160x160) lose, the transforms' memory traffic outweighing the
# products at that width (all of them: 1.09x in OpenVINO). Measured with the next constant, sessions interleaved
# run by run, sum over nodes of each node's fastest run: the backbone 0.88x in ONNX Runtime (161 -> 141 ms),
# 0.95x in OpenVINO; whole graph 0.94x and 0.96x (benchmarks/RESULTS.md).
BACKBONE_WINOGRAD_MIN_CHANNELS = 80
# Zero-padding the backbone's odd widths: multiples of 8 beat 16 (ONNX Runtime 0.98x, OpenVINO 1.00x; with the
# backbone Winograd above, 8 is the measured pair) and no padding (ONNX Runtime's blocked convolutions then need
# layout copies around every odd-width layer).
DEFAULT_CHANNEL_MULTIPLE = 8
CONV_ALGORITHMS = ("winograd", "direct")


@torch.no_grad()
def fold_batchnorm(block: ConvNormAct) -> None:
    """Fold ``block.norm`` (eval statistics) into ``block.conv``: conv gets the BN's scale and a bias."""
    conv, bn = block.conv, block.norm
    if not isinstance(bn, nn.BatchNorm2d):
        return
    scale, bias = batchnorm_affine(bn, conv.bias)
    conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
    conv.bias = nn.Parameter(bias.to(conv.weight.dtype))
    block.norm = nn.Identity()


@torch.no_grad()
def drop_background_channels(head: RetinaNetHead) -> None:
    """Remove channel ``a*K + 0`` (background) of every anchor from the class predictor, in place."""
    if not head.background_channel:
        return
    predict = head.class_net.predict
    a, k = head.num_anchors, head.num_classes
    # A separable predictor (SpineNet-Mobile) keeps its depthwise part; only the pointwise 1x1 loses rows.
    target = predict.pointwise if isinstance(predict, SeparableConv2d) else predict
    keep = torch.tensor([i * k + c for i in range(a) for c in range(1, k)], device=target.weight.device)
    slim = nn.Conv2d(target.in_channels, len(keep), target.kernel_size, padding=target.padding,
                     bias=target.bias is not None, device=target.weight.device, dtype=target.weight.dtype)
    slim.weight.copy_(target.weight[keep])
    if target.bias is not None:
        slim.bias.copy_(target.bias[keep])
    if isinstance(predict, SeparableConv2d):
        predict.pointwise = slim
    else:
        head.class_net.predict = slim
    head.background_channel = False


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@torch.no_grad()
def _pad_channels(conv: nn.Conv2d, *, out_channels: int | None = None, in_channels: int | None = None) -> None:
    """Grow ``conv`` in place with zero filters (extra outputs, bias 0) and zero taps (extra inputs)."""
    w = conv.weight
    o, i = w.shape[:2]
    out_channels, in_channels = out_channels or o, in_channels or i
    grown = w.new_zeros(out_channels, in_channels, *w.shape[2:])
    grown[:o, :i] = w
    conv.weight = nn.Parameter(grown)
    if conv.bias is not None:
        bias = conv.bias.new_zeros(out_channels)
        bias[:o] = conv.bias
        conv.bias = nn.Parameter(bias)
    conv.out_channels, conv.in_channels = out_channels, in_channels


def pad_backbone_channels(backbone: SpineNet, multiple: int) -> int:
    """Round every channel count inside ``backbone`` (SpineNet-49S's 41, 83, 166, 164, 332, 664, ...) up to
    ``multiple``, in place, with zero filters; BN must be folded first. The image input (3 channels) and the
    outputs (``endpoints_num_filters``) keep their widths. Returns how many convolutions changed.

    The same function exactly: a padded channel's filters and bias are zero, so it holds 0 everywhere, which
    activations (ReLU(0) = SiLU(0) = 0), sums, max-pooling and upsampling keep at 0, and the convolutions that
    read it do so with zero taps. What it buys is layout: ONNX Runtime's blocked (NCHWc) convolutions run a
    convolution whose width is not a multiple of 8 in plain NCHW, with a layout copy before and after it
    (``DEFAULT_CHANNEL_MULTIPLE`` says why 8 rather than its AVX-512 block of 16).
    """
    if any(not isinstance(m.norm, nn.Identity) for m in backbone.modules() if isinstance(m, ConvNormAct)):
        raise ValueError("pad_backbone_channels needs BN folded into the convolutions first (fold_batchnorm)")
    fixed_in = {id(backbone.stem.conv)}
    fixed_out = {id(m.conv) for m in backbone.endpoints.values()}
    count = 0
    for conv in backbone.modules():
        if not isinstance(conv, nn.Conv2d) or conv.groups != 1:
            continue
        out_ch = conv.out_channels if id(conv) in fixed_out else _round_up(conv.out_channels, multiple)
        in_ch = conv.in_channels if id(conv) in fixed_in else _round_up(conv.in_channels, multiple)
        if (out_ch, in_ch) != (conv.out_channels, conv.in_channels):
            _pad_channels(conv, out_channels=out_ch, in_channels=in_ch)
            count += 1
    return count


def optimize_for_inference(model: RetinaNet, *, conv_algorithm: str = "winograd",
                           winograd_min_pixels: int = DEFAULT_WINOGRAD_MIN_PIXELS,
                           drop_background: bool = False, channel_multiple: int = DEFAULT_CHANNEL_MULTIPLE,
                           backbone_winograd_min_channels: int = BACKBONE_WINOGRAD_MIN_CHANNELS) -> RetinaNet:
    """An eval-mode copy of ``model`` with BN folded and, for ``conv_algorithm="winograd"``, Winograd 3x3
    convolutions on maps of at least ``winograd_min_pixels`` pixels: the head's, and the backbone's with at least
    ``backbone_winograd_min_channels`` input channels after padding (see the module docstring). For SpineNet-Mobile
    only the folding and the background drop apply."""
    if conv_algorithm not in CONV_ALGORITHMS:
        raise ValueError(f"conv_algorithm {conv_algorithm!r} is unknown; valid: {', '.join(CONV_ALGORITHMS)}")
    fast = copy.deepcopy(model).eval()
    for module in fast.modules():
        if isinstance(module, ConvNormAct):
            fold_batchnorm(module)
    if drop_background:
        drop_background_channels(fast.head)
    if isinstance(fast.backbone, SpineNetMobile):
        # Depthwise and separable convolutions: channel padding, shared reductions and Winograd (all written
        # for SpineNet's dense convolutions) do not apply; BN folding and the background drop do.
        return fast
    if channel_multiple > 1:
        pad_backbone_channels(fast.backbone, channel_multiple)
    fast.backbone = SharedReduceSpineNet(fast.backbone)
    if conv_algorithm == "winograd":
        # Only post-processing reads the class maps when the background is dropped: it takes them tile-major.
        fast.head = WinogradHead(fast.head, winograd_min_pixels, tile_major_class=drop_background)
        # Large levels that are not whole 4x4 tiles (none at multiples of 256) keep layer-by-layer Winograd.
        _replace_3x3(fast.head, winograd_min_pixels)
        _replace_3x3(fast.backbone, winograd_min_pixels, backbone_winograd_min_channels)
    return fast


class SharedReduceSpineNet(nn.Module):
    """A SpineNet (eval mode, BN folded) whose resampling ``reduce`` convolutions (1x1 + activation) that read the
    same feature run as one convolution with their filters stacked, then split.

    Most SpineNet features feed two to four later blocks, each through its own 1x1 reduction to a narrow width
    (49S: 168 -> 24 channels on the 160x160 level-2 maps). Stacked, the feature is read once and the product is one
    wider matrix product instead of several narrow, memory-bound ones. Each output channel is the same dot product
    as before. ``forward`` is :class:`~spinenet.modeling.spinenet.SpineNet`'s.
    """

    def __init__(self, backbone: SpineNet):
        super().__init__()
        if any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules()):
            raise ValueError("SharedReduceSpineNet needs BN folded into the convolutions first (fold_batchnorm)")
        self.backbone = backbone
        readers: dict[int, list[tuple[int, int]]] = {}  # feature -> the (block, parent slot) reading it
        for i, block in enumerate(backbone.blocks):
            for r, j in enumerate(block.input_offsets):
                readers.setdefault(j, []).append((i, r))
        self.stacked = nn.ModuleDict()
        self.readers: dict[int, list[tuple[int, int]]] = {}
        self.widths: dict[int, list[int]] = {}
        for j, users in readers.items():
            reduces = [backbone.blocks[i].resample[r].reduce for i, r in users]
            if len(users) < 2 or len({type(m.act) for m in reduces}) > 1:
                continue
            convs = [m.conv for m in reduces]
            # On the source's device and in its dtype: a default nn.Conv2d is fp32 on the CPU, which would make
            # a bf16 or CUDA model's copy mix dtypes/devices (a runtime error in its first forward).
            stacked = nn.Conv2d(convs[0].in_channels, sum(c.out_channels for c in convs), 1,
                                device=convs[0].weight.device, dtype=convs[0].weight.dtype)
            with torch.no_grad():
                stacked.weight.copy_(torch.cat([c.weight for c in convs]))
                stacked.bias.copy_(torch.cat([c.bias for c in convs]))
            self.stacked[str(j)] = nn.Sequential(stacked, copy.deepcopy(reduces[0].act))
            self.readers[j], self.widths[j] = users, [c.out_channels for c in convs]

    def forward(self, images: torch.Tensor) -> dict[int, torch.Tensor]:
        feats: list[torch.Tensor] = []
        reduced: dict[tuple[int, int], torch.Tensor] = {}

        def add(feature: torch.Tensor) -> None:
            j = len(feats)
            feats.append(feature)
            if str(j) in self.stacked:
                parts = torch.split(self.stacked[str(j)](feature), self.widths[j], dim=1)
                reduced.update(zip(self.readers[j], parts, strict=True))

        for feature in self.backbone.stem_features(images):
            add(feature)
        for i, block in enumerate(self.backbone.blocks):
            add(block(feats, [reduced.pop((i, r), None) for r in range(2)]))
        return self.backbone.outputs(feats)


def _replace_3x3(root: nn.Module, min_pixels: int, min_channels: int = 0) -> None:
    for parent in list(root.modules()):
        for name, child in list(parent.named_children()):
            if is_winograd_compatible(child) and child.in_channels >= min_channels:
                setattr(parent, name, SizeSwitchedConv(child, min_pixels))
