"""SpineNet-Mobile (SpineNet-MBConv) weights in TF1 and Model Garden checkpoints: which variant, and where each
tensor goes in :class:`~spinenet.modeling.spinenet_mobile.SpineNetMobile` + the separable RetinaNet head.

TF1 (``tensorflow/tpu`` ``modeling/architecture/spinenet_mbconv.py``): every backbone variable sits in scope
``spinenet_mbconv`` and is auto-named by ``tf.layers`` per scope and layer type in creation order (``conv2d_k``,
``depthwise_conv2d_k``, ``batch_normalization_k``): the stem conv and the two stem block groups in the root scope,
block *i*'s resamplings in ``sub_policy{i}/resample_with_sepconv_resample_{i}_{0|1}`` (one depthwise conv + BN per
stride-2 step, then the 1x1 conv + BN), its MBConv group in ``sub_policy{i}/scale_permuted_block_{i+2}``, the
endpoints back in the root. An MBConv creates expand conv, BN, depthwise, BN, SE reduce and expand (convs with
bias, ``nn_ops.py:squeeze_excitation``), project conv, BN. :func:`tf1_mobile_layout` regenerates those names.

Model Garden (``official/vision/modeling/backbones/spinenet_mobile.py``): ``tf.train.Checkpoint(model=model)``
with backbone layers ``model/_backbone/layer_with_weights-N`` in Keras' topological order; as for SpineNet
(:mod:`spinenet.convert.model_garden`), each layer's Keras name (``depthwise_conv2d_4``,
``inverted_bottleneck_block_3``) from the object graph gives its *construction* rank within its type, which
:func:`mobile_construction_order` regenerates. Inside a block the attribute paths name the parts (``_conv0``,
``_norm0``: expand; ``_conv1``/``_norm1``: depthwise; ``_squeeze_excitation/_se_{reduce,expand}``; ``_conv2``/
``_norm2``: project).

Anchor order: the references differ ([1, 2, 0.5] in TF1, [0.5, 1, 2] in Model Garden), and as for SpineNet the
converted model keeps the source's order (its config states it), so predictor channels move unpermuted.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from spinenet.convert.model_garden import (
    BACKBONE,
    BN_FIELDS,
    HEAD,
    SUFFIX,
    ConversionError,
    _Assigner,
    _layer_rank_key,
    map_head,
    pair_backbone_layers,
)
from spinenet.convert.tf_checkpoint import TFCheckpointReader
from spinenet.convert.tpu_layout import LayoutEntry, _Scopes, tf1_head_layout
from spinenet.modeling.spinenet_mobile import MOBILE_SCALING_MAP, SpineNetMobile, mobile_filters

TF1_ROOT = "spinenet_mbconv"
MG_BLOCK = "inverted_bottleneck_block"


# ---------------------------------------------------------------------------------------------------------
# Which variant: the same facts from either reference.
# ---------------------------------------------------------------------------------------------------------


def mobile_candidates(stem: tuple[int, int, int], endpoints: int, block_repeats: int) -> list[str]:
    """Variants whose level-0/1/2 widths (``stem``), endpoint width and repeats match."""
    return [mid for mid, sc in MOBILE_SCALING_MAP.items()
            if tuple(mobile_filters(lvl, sc.filter_size_scale) for lvl in range(3)) == stem
            and sc.endpoints_num_filters == endpoints and sc.block_repeats == block_repeats]


def _arch(num_classes_x_anchors: int, box_channels: int, head_kernel: tuple[int, ...], num_convs: int,
          stem: tuple[int, int, int], endpoints: int, repeats: int, source: str) -> dict[str, Any]:
    num_anchors = box_channels // 4
    if box_channels % 4 or not num_anchors or num_classes_x_anchors % num_anchors:
        raise ConversionError(f"{source}: class predictor has {num_classes_x_anchors} channels and box predictor "
                              f"{box_channels}: not anchors x classes and anchors x 4")
    return dict(num_classes=num_classes_x_anchors // num_anchors, num_anchors=num_anchors,
                head_num_filters=head_kernel[3], head_num_convs=num_convs,
                candidates=mobile_candidates(stem, endpoints, repeats),
                summary=f"SpineNet-Mobile: level 0/1/2 widths {stem}, endpoints {endpoints}, {repeats} block(s) per "
                        f"group, separable head {num_convs}x{head_kernel[3]}, {num_anchors} anchors")


# ---------------------------------------------------------------------------------------------------------
# TF1.
# ---------------------------------------------------------------------------------------------------------


def is_tf1_mobile(names: list[str]) -> bool:
    return any(n.startswith(TF1_ROOT + "/") for n in names)


def _mbconv_tf1(s: _Scopes, scope: str, blk: nn.Module) -> None:
    if blk.expand is not None:
        s.unit(scope, blk.expand)
    s.unit(scope, blk.depthwise)
    if blk.se is not None:
        s.conv_bias(scope, blk.se.reduce)
        s.conv_bias(scope, blk.se.expand)
    s.unit(scope, blk.project)


def tf1_mobile_layout(model: nn.Module) -> list[LayoutEntry]:
    """Every conv/BN of a SpineNet-Mobile RetinaNet with its TF1 variable prefix, in TF1 creation order."""
    backbone: SpineNetMobile = model.backbone
    s = _Scopes()
    s.unit(TF1_ROOT, backbone.stem)
    for group in backbone.stem_blocks:  # stem_block_0/1: tf.identity names only, no variable scope
        for blk in group:
            _mbconv_tf1(s, TF1_ROOT, blk)
    for i, block in enumerate(backbone.blocks):
        for j, r in enumerate(block.resample):
            scope = f"{TF1_ROOT}/sub_policy{i}/resample_with_sepconv_resample_{i}_{j}"
            for step in r.down:
                s.unit(scope, step)
            s.unit(scope, r.proj)
        for blk in block.group:
            _mbconv_tf1(s, f"{TF1_ROOT}/sub_policy{i}/scale_permuted_block_{i + 2}", blk)
    for lvl in range(backbone.min_level, backbone.max_level + 1):
        s.unit(TF1_ROOT, backbone.endpoints[str(lvl)])
    return s.entries + tf1_head_layout(model.head)


def infer_tf1_mobile(w) -> dict[str, Any]:
    """Variant, class count and head shape of a TF1 SpineNet-MBConv RetinaNet, read off tensor shapes."""
    names = set(w.names())

    def shape(name: str) -> tuple[int, ...]:
        if name not in names:
            raise ConversionError(f"{w.source}: no {name} in this {w.kind}, so it is not a TF1 SpineNet-MBConv "
                                  "RetinaNet with a separable head")
        return w.shape(name)

    cls = shape("retinanet/class_net/class-predict/bias")[0]
    box = shape("retinanet/box_net/box-predict/bias")[0]
    head = shape("retinanet/class_net/class-0/pointwise_kernel")
    num_convs = sum(1 for n in names if re.fullmatch(r"retinanet/class_net/class-\d+/pointwise_kernel", n))
    proj = shape(f"{TF1_ROOT}/sub_policy0/resample_with_sepconv_resample_0_0/conv2d/kernel")  # level 1 -> 2
    stem = (shape(f"{TF1_ROOT}/conv2d/kernel")[3], proj[2], proj[3])
    group0 = f"{TF1_ROOT}/sub_policy0/scale_permuted_block_2/"
    repeats = sum(1 for n in names if n.startswith(group0) and n.endswith("/depthwise_kernel"))
    return _arch(cls, box, head, num_convs, stem, head[2], repeats, w.source)


# ---------------------------------------------------------------------------------------------------------
# Model Garden.
# ---------------------------------------------------------------------------------------------------------


def is_model_garden_mobile(names: dict[str, str]) -> bool:
    return any(full.startswith(MG_BLOCK) for key, full in names.items() if key.startswith(BACKBONE))


def mobile_construction_order(backbone: SpineNetMobile) -> Iterator[tuple[str, nn.Module]]:
    """(Keras layer type, our module) in the order ``SpineNetMobile.__init__`` creates its top-level layers."""

    def unit(u) -> Iterator[tuple[str, nn.Module]]:
        yield ("depthwise_conv2d" if u.conv.groups > 1 else "conv2d"), u.conv
        yield "batch_normalization", u.norm

    yield from unit(backbone.stem)
    for group in backbone.stem_blocks:
        for blk in group:
            yield MG_BLOCK, blk
    for block in backbone.blocks:
        for r in block.resample:
            for step in r.down:
                yield from unit(step)
            yield from unit(r.proj)
        for blk in block.group:
            yield MG_BLOCK, blk
    for lvl in range(backbone.min_level, backbone.max_level + 1):
        yield from unit(backbone.endpoints[str(lvl)])


def _mbconv_mg(a: _Assigner, reader: TFCheckpointReader, attrs: dict[str, str], blk: nn.Module, where: str) -> None:
    def get(path: str):
        if path not in attrs:
            raise ConversionError(f"{reader.prefix}: {where} has no {path} (is this another variant?)")
        return reader.get_tensor(attrs[path])

    def bn(norm: nn.Module, attr: str) -> None:
        a.bn(norm, {f: get(f"{attr}/{f}") for f in BN_FIELDS}, f"{where}/{attr}")

    if blk.expand is not None:
        a.conv(blk.expand.conv, get("_conv0/kernel"), None, f"{where}/_conv0")
        bn(blk.expand.norm, "_norm0")
    a.depthwise(blk.depthwise.conv, get("_conv1/depthwise_kernel"), f"{where}/_conv1")
    bn(blk.depthwise.norm, "_norm1")
    if blk.se is not None:
        for attr, conv in (("_se_reduce", blk.se.reduce), ("_se_expand", blk.se.expand)):
            k = f"_squeeze_excitation/{attr}"
            a.conv(conv, get(f"{k}/kernel"), get(f"{k}/bias"), f"{where}/{k}")
    a.conv(blk.project.conv, get("_conv2/kernel"), None, f"{where}/_conv2")
    bn(blk.project.norm, "_norm2")


def map_model_garden_mobile(reader: TFCheckpointReader, names: dict[str, str], model: nn.Module,
                            provenance: dict[str, str] | None = None) -> dict[str, torch.Tensor]:
    """Model Garden SpineNet-Mobile tensors -> our state dict, strictly: every tensor of the model is covered and
    every tensor under ``model/_backbone/`` and ``model/_head/`` is used."""
    src = str(reader.prefix)
    a = _Assigner(model, src)
    reader = _Recording(reader)
    for kind, layer, attrs, module in pair_backbone_layers(reader, names, mobile_construction_order(model.backbone),
                                                            src, f"SpineNet-Mobile-{model.backbone.model_id}"):
        where = f"{BACKBONE}{layer}"
        if kind == MG_BLOCK:
            _mbconv_mg(a, reader, attrs, module, where)
        elif kind == "batch_normalization":
            a.bn(module, {f: reader.get_tensor(attrs[f]) for f in BN_FIELDS if f in attrs}, where)
        elif kind == "depthwise_conv2d":
            a.depthwise(module, reader.get_tensor(attrs["depthwise_kernel"]), where)
        else:
            a.conv(module, reader.get_tensor(attrs["kernel"]), None, where)
    map_head(a, reader, model.head)
    unused = sorted(k for k in reader.keys() if k.startswith((BACKBONE, HEAD)) and k.endswith(SUFFIX)
                    and ".OPTIMIZER_SLOT/" not in k and k not in reader.read)  # optimizer slots: training state
    if unused:
        raise ConversionError(f"{src}: {len(unused)} tensors of the checkpoint have no place in SpineNet-Mobile-"
                              f"{model.backbone.model_id} (e.g. {', '.join(unused[:3])}); is it another architecture?")
    if provenance is not None:
        provenance.update(a.provenance)
    return a.finish()


class _Recording:
    """A checkpoint reader that notes which tensors were read (so that none is silently left out)."""

    def __init__(self, reader) -> None:
        self.reader, self.prefix, self.read = reader, reader.prefix, set()

    def keys(self) -> list[str]:
        return self.reader.keys()

    def get_tensor(self, name: str):
        value = self.reader.get_tensor(name)
        self.read.add(name)
        return value


def infer_model_garden_mobile(reader: TFCheckpointReader, names: dict[str, str]) -> dict[str, Any]:
    """Variant, class count and head shape of a Model Garden SpineNet-Mobile RetinaNet from tensor shapes."""
    src = str(reader.prefix)
    try:
        cls = reader.shape(f"{HEAD}_classifier/bias{SUFFIX}")[0]
        box = reader.shape(f"{HEAD}_box_regressor/bias{SUFFIX}")[0]
        head = reader.shape(f"{HEAD}_cls_convs/0/pointwise_kernel{SUFFIX}")
    except KeyError as e:
        raise ConversionError(f"{src}: not a Model Garden SpineNet-Mobile RetinaNet with a separable head "
                              f"(missing {e})") from None
    num_convs = sum(1 for k in reader.keys() if re.fullmatch(rf"{HEAD}_cls_convs/\d+/pointwise_kernel{SUFFIX}", k))
    # Stem: the first inverted bottleneck block maps level-0 width f0 -> 6 f0 -> f1; the second f1 -> f2.
    block_keys: dict[str, dict[str, str]] = defaultdict(dict)
    for key, full in names.items():
        if key.startswith(BACKBONE) and full.startswith(MG_BLOCK) and key.endswith(SUFFIX):
            block_keys[full.split("/")[0]][key[len(BACKBONE):-len(SUFFIX)].partition("/")[2]] = key
    ranked = sorted(block_keys, key=_layer_rank_key)
    if len(ranked) < 2:
        raise ConversionError(f"{src}: {len(ranked)} inverted bottleneck blocks; not a SpineNet-Mobile backbone")
    first, second = (reader.shape(block_keys[b]["_conv2/kernel"]) for b in ranked[:2])
    stem = (reader.shape(block_keys[ranked[0]]["_conv0/kernel"])[2], first[3], second[3])
    blocks_per_spec = len(ranked) / 18  # 2 stem groups + 16 scale-permuted groups
    repeats = int(blocks_per_spec) if blocks_per_spec.is_integer() else -1
    return _arch(cls, box, head, num_convs, stem, head[2], repeats, src)
