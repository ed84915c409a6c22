"""Import TF1 Cloud TPU (``tensorflow/tpu`` ``models/official/detection``) SpineNet RetinaNet weights.

Two sources, one mapping (``shared/spec/tf1-checkpoint.md``):

* a ``tf.compat.v1.train.Saver`` checkpoint (``model.ckpt-231500``), given as its prefix, its ``.index``, a
  folder holding one, or a published ``.tar.gz`` (extracted safely into a temporary folder);
* a frozen serving graph (``spinenet_tf_310.pb``), whose ``Const`` nodes carry the variables' values under the
  variables' own names (or, for graphs frozen through read ops, ``<var>/read`` / ``<var>/Read/ReadVariableOp``).

Variable names come from ``tf.layers`` auto-numbering (``conv2d``, ``conv2d_1``, …, ``batch_normalization_k``),
the counters restarting in every variable scope, in creation order. :func:`tf1_variable_layout` regenerates
them from our module tree: the stem and the two stem block groups in scope ``spinenet`` (in a block with a
projection the shortcut is created first), each scale-permuted block's two resamplings in
``spinenet/sub_policy{i}/resample_with_alpha_resample_{i}_{0|1}`` and its block group in
``spinenet/sub_policy{i}/scale_permuted_block_{i+2}``, then the endpoints back in ``spinenet``; the head's
shared convs ``retinanet/{class,box}_net/{class,box}-{i}``, its per-level BNs ``…-{i}-{level}`` and the
predictors ``…-predict``. The numbering is by creation order, so it is regenerated, never sorted as strings
(``conv2d_10`` sorts before ``conv2d_2``). Class-predict channels are ``anchor * num_classes + class`` in both
frameworks, so kernels only move from HWIO to OIHW. ``global_step`` and the optimizer's ``/Momentum`` slots
are ignored.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from spinenet.config import ExperimentConfig, load_config
from spinenet.convert.mobile_map import is_tf1_mobile, tf1_mobile_layout
from spinenet.convert.model_garden import (
    ConversionError,
    ConversionResult,
    _Assigner,
    detect_layout,
    save_converted,
)
from spinenet.convert.tf_checkpoint import TFCheckpointError
from spinenet.convert.tpu_layout import LayoutEntry, tf1_variable_layout
from spinenet.convert.tpu_sources import (
    CheckpointWeights,
    FrozenGraphWeights,
    TPUWeights,
    _ignored,
    open_tpu_checkpoint,
    open_tpu_frozen_graph,
)
from spinenet.modeling.spinenet import SCALING_MAP, level_filters
from spinenet.modeling.spinenet_mobile import SpineNetMobile

__all__ = ["TPUWeights", "CheckpointWeights", "FrozenGraphWeights", "TPUArchitecture", "LayoutEntry",
           "open_tpu_checkpoint", "open_tpu_frozen_graph", "tf1_variable_layout", "infer_tpu_architecture",
           "map_tpu_weights", "convert_tpu", "model_from_reference_metadata"]

SOURCES = {"tpu": "TF1 TPU checkpoint", "tpu-frozen-graph": "TF1 frozen graph"}
MODEL_SCOPES = ("spinenet/", "spinenet_mbconv/", "retinanet/")


# ---------------------------------------------------------------------------------------------------------
# Architecture from shapes.
# ---------------------------------------------------------------------------------------------------------


@dataclass
class TPUArchitecture:
    num_classes: int
    num_anchors: int
    head_num_filters: int
    head_num_convs: int
    endpoints_num_filters: int
    stem_filters: int  # level-2 block filters, int(64 * filter_size_scale)
    resample_filters: int  # first resampling's reduced width, int(stem_filters * resample_alpha)
    block_repeats: int
    candidates: list[str] = field(default_factory=list)

    @property
    def summary(self) -> str:
        return (f"endpoints {self.endpoints_num_filters}, level-2 filters {self.stem_filters}, resample width "
                f"{self.resample_filters}, {self.block_repeats} block(s) per group, head {self.head_num_convs}x"
                f"{self.head_num_filters}, {self.num_anchors} anchors x {self.num_classes} classes")


def _need_shape(w: TPUWeights, name: str) -> tuple[int, ...]:
    try:
        return w.shape(name)
    except KeyError:
        raise ConversionError(f"{w.source}: no {name} in this {w.kind}, so it is not a TF1 SpineNet RetinaNet "
                              f"({_what_it_holds(w)})") from None


def _what_it_holds(w: TPUWeights) -> str:
    names = [n for n in w.names() if not _ignored(n)]
    return f"{len(names)} tensors, e.g. {', '.join(names[:3])}" if names else "no tensors"


def infer_tpu_architecture(w: TPUWeights) -> TPUArchitecture:
    """Read the variant, head shape and class count off the tensor shapes."""
    names = set(w.names())
    cls_bias = _need_shape(w, "retinanet/class_net/class-predict/bias")[0]
    box_bias = _need_shape(w, "retinanet/box_net/box-predict/bias")[0]
    head0 = _need_shape(w, "retinanet/class_net/class-0/kernel")
    num_anchors = box_bias // 4
    if box_bias % 4 or not num_anchors or cls_bias % num_anchors:
        raise ConversionError(f"{w.source}: class-predict has {cls_bias} channels and box-predict {box_bias}: not "
                              "anchors x classes and anchors x 4")
    num_convs = sum(1 for n in names if re.fullmatch(r"retinanet/class_net/class-\d+/kernel", n))
    projection = _need_shape(w, "spinenet/conv2d_1/kernel")  # stem_block_1's projection shortcut, 64 -> 4f
    reduce = _need_shape(w, "spinenet/sub_policy0/resample_with_alpha_resample_0_0/conv2d/kernel")
    block0 = sum(1 for n in names if re.fullmatch(r"spinenet/sub_policy0/scale_permuted_block_2/conv2d(_\d+)?/kernel",
                                                  n))
    arch = TPUArchitecture(num_classes=cls_bias // num_anchors, num_anchors=num_anchors,
                           head_num_filters=head0[3], head_num_convs=num_convs, endpoints_num_filters=head0[2],
                           stem_filters=projection[3] // 4, resample_filters=reduce[3], block_repeats=block0 // 3)
    arch.candidates = [mid for mid, sc in SCALING_MAP.items()
                       if sc.endpoints_num_filters == arch.endpoints_num_filters
                       and level_filters(2, sc.filter_size_scale) == arch.stem_filters
                       and int(arch.stem_filters * sc.resample_alpha) == arch.resample_filters
                       and sc.block_repeats == arch.block_repeats]
    return arch


# ---------------------------------------------------------------------------------------------------------
# Mapping.
# ---------------------------------------------------------------------------------------------------------


def map_tpu_weights(w: TPUWeights, model: nn.Module, provenance: dict[str, str] | None = None,
                    notes: list[str] | None = None) -> dict[str, torch.Tensor]:
    """TF1 tensors -> ``model``'s state dict, strictly: every tensor of the model is assigned exactly once and
    every weight under ``spinenet/`` and ``retinanet/`` is used. Training state (``global_step``, ``/Momentum``)
    is skipped; other tensors outside the model's scopes are listed in ``notes``.
    """
    a = _Assigner(model, w.source)
    available = set(w.names())
    used: set[str] = set()
    layout = tf1_mobile_layout(model) if isinstance(model.backbone, SpineNetMobile) else tf1_variable_layout(model)
    for entry in layout:
        missing = [v for v in entry.variables() if v not in available]
        if missing:
            close = [n for n in available if n.startswith(entry.tf_name.rsplit("/", 1)[0] + "/")][:4]
            raise ConversionError(f"{w.source}: {w.kind} has no {missing[0]} (needed for "
                                  f"{type(entry.module).__name__}); is it another SpineNet variant or head size? "
                                  f"Tensors in that scope: {close or 'none'}")
        used.update(entry.variables())
        entry.assign(a, {v.rsplit("/", 1)[-1]: w.get(v) for v in entry.variables()})
    left = sorted(n for n in available - used if not _ignored(n))
    in_model = [n for n in left if n.startswith(MODEL_SCOPES)]
    if in_model:
        raise ConversionError(f"{w.source}: {len(in_model)} weights of the {w.kind} have no place in SpineNet-"
                              f"{model.backbone.model_id} (e.g. {', '.join(in_model[:4])}); is it a checkpoint of "
                              "another variant? Omit --model_id / --config_file to detect the variant from the weights")
    if left and notes is not None:
        notes.append(f"ignored {len(left)} tensors outside spinenet/ and retinanet/: {', '.join(left[:5])}")
    if provenance is not None:
        provenance.update(a.provenance)
    return a.finish()


def _graph_facts(w: FrozenGraphWeights) -> dict[str, Any]:
    """What a frozen graph tells beyond its weights: the activation and the input shape."""
    ops = w.graph.ops("spinenet/")
    activation = None
    if any("swish" in op.lower() for op in ops) or "Sigmoid" in ops:
        activation = "swish"
    elif "Relu" in ops:
        activation = "relu"
    inputs = [(n.name, n.shape(), n.dtype) for n in w.graph.placeholders()]
    return {"activation": activation, "inputs": inputs}


def _build_config(arch: TPUArchitecture, model_id: str, config_file: str | os.PathLike | None, params_override,
                  activation: str | None) -> ExperimentConfig:
    """The variant's YAML (or the user's), the user's override, then what the weights dictate."""
    from spinenet.registry import get_config, get_model_info

    from_weights: dict[str, Any] = {
        "spinenet": {"model_id": model_id},
        "architecture": {"num_classes": arch.num_classes, "convention": "tpu"},
        "retinanet_head": {"num_filters": arch.head_num_filters, "num_convs": arch.head_num_convs},
    }
    if activation is not None:
        from_weights["batch_norm_activation"] = {"activation": activation}
    overrides = [o for o in (params_override, from_weights) if o]
    if config_file is not None:
        return load_config(config_file, overrides)
    return get_config(get_model_info(model_id).name, params_override=overrides)


def _check_config_variant(config_file: str | os.PathLike | None, params_override, model_id: str,
                          arch: TPUArchitecture, source: str) -> None:
    """A --config_file naming another variant than the weights is an error, not a silent pick."""
    if config_file is None:
        return
    stated = load_config(config_file, [params_override] if params_override else None).spinenet.model_id
    if stated != model_id:
        from spinenet.registry import get_model_info

        raise ConversionError(f"{source} holds SpineNet-{model_id} weights ({arch.summary}), but {config_file} "
                              f"describes SpineNet-{stated}: pass the matching config "
                              f"({get_model_info(model_id).config_file}) or omit --config_file")


def convert_tpu(checkpoint: str | os.PathLike, output: str | os.PathLike, *, frozen_graph: bool = False,
                config_file: str | os.PathLike | None = None, params_override=None,
                label_map_file: str | os.PathLike | None = None, model_id: str | None = None) -> ConversionResult:
    """Convert a TF1 TPU checkpoint (or, with ``frozen_graph``, a frozen ``.pb``) to a spinenet ``.pt``."""
    if frozen_graph:
        return _convert(open_tpu_frozen_graph(checkpoint), output, "tpu-frozen-graph", config_file,
                        params_override, label_map_file, model_id)
    try:
        with open_tpu_checkpoint(checkpoint) as weights:
            return _convert(weights, output, "tpu", config_file, params_override, label_map_file, model_id)
    except TFCheckpointError as e:
        raise ConversionError(f"{e}. The checkpoint is damaged (an interrupted copy or download?); fetch it "
                              "again") from None


def _convert(w: TPUWeights, output: str | os.PathLike, fmt: str, config_file, params_override, label_map_file,
             model_id: str | None) -> ConversionResult:
    from spinenet.modeling.factory import build_retinanet

    _check_layout(w)
    if is_tf1_mobile(w.names()):
        from spinenet.convert.mobile_convert import convert_tf1_mobile

        return convert_tf1_mobile(w, output, fmt, config_file=config_file, params_override=params_override,
                                  label_map_file=label_map_file, model_id=model_id)
    arch = infer_tpu_architecture(w)
    notes: list[str] = []
    if model_id is None:
        if not arch.candidates:
            raise ConversionError(f"{w.source}: the weights ({arch.summary}) match no SpineNet variant "
                                  f"({', '.join(SCALING_MAP)}); a width-reduced or modified backbone can't be "
                                  "described by a config (--model_id forces a variant, if its shapes fit)")
        if len(arch.candidates) > 1:
            raise ConversionError(f"{w.source}: the weights ({arch.summary}) match SpineNet variants "
                                  f"{', '.join(arch.candidates)}; pass --model_id to choose")
        model_id = arch.candidates[0]
    _check_config_variant(config_file, params_override, model_id, arch, w.source)
    activation = None
    if isinstance(w, FrozenGraphWeights):
        facts = _graph_facts(w)
        activation = facts["activation"]
        for name, shape, _ in facts["inputs"]:
            if shape and len(shape) == 4:
                notes.append(f"the graph's input {name} is {'x'.join(str(d) for d in shape)}; export with "
                             f"--input_image_size {shape[1]},{shape[2]} for the same signature")
        if activation:
            notes.append(f"activation {activation}: read off the graph's ops")
    cfg = _build_config(arch, model_id, config_file, params_override, activation)
    if activation is None:
        notes.append(f"activation {cfg.batch_norm_activation.activation}: from the config (the weights can't tell "
                     "relu from swish; for a relu checkpoint add --params_override "
                     "'{batch_norm_activation: {activation: relu}}')")
    if cfg.anchor.num_scales * len(cfg.anchor.aspect_ratios) != arch.num_anchors:
        raise ConversionError(f"{w.source}: the head predicts {arch.num_anchors} anchors per location but the config "
                              f"has {cfg.anchor.num_scales} scales x {len(cfg.anchor.aspect_ratios)} aspect ratios")
    model = build_retinanet(cfg)
    state = map_tpu_weights(w, model, notes=notes)
    model.load_state_dict(state, strict=True)

    out, n_params = save_converted(model, cfg, model_id, output, label_map_file,
                                   {"format": fmt, "checkpoint": w.source})
    used = sum(1 for n in w.names() if not _ignored(n) and n.startswith(MODEL_SCOPES))
    return ConversionResult(out, model_id, cfg.architecture.num_classes, used, n_params, notes)


def _check_layout(w: TPUWeights) -> None:
    if isinstance(w, CheckpointWeights):
        layout = detect_layout(w.reader)
        if layout == "model-garden":
            raise ConversionError(f"{w.source} looks like a Model Garden checkpoint (variables under model/_backbone/ "
                                  "and model/_head/), not a TF1 TPU one: use --from model-garden")
    names = w.names()
    if (not any(n.startswith(("spinenet/", "spinenet_mbconv/")) for n in names)
            or not any(n.startswith("retinanet/") for n in names)):
        raise ConversionError(f"{w.source} is not a TF1 SpineNet RetinaNet {w.kind}: it has no spinenet/… (or "
                              f"spinenet_mbconv/…) and retinanet/… variables ({_what_it_holds(w)})")


# ---------------------------------------------------------------------------------------------------------
# Width-reduced reference models (test fixtures): the model a tools/tf1_reference.py recording describes.
# ---------------------------------------------------------------------------------------------------------


def model_from_reference_metadata(meta: dict) -> nn.Module:
    """The TF1-convention RetinaNet (eval mode) that ``tools/tf1_reference.py``'s ``variables.json`` metadata
    describes, width-reduced SCALING_MAP entries included."""
    from spinenet.convert.parity import reference_retinanet

    p = meta["params"]
    arch, bn, post = p["architecture"], p["batch_norm_activation"], p["postprocess"]
    mobile = meta.get("family") == "mobile"
    return reference_retinanet(
        str(p["spinenet_mbconv" if mobile else "spinenet"]["model_id"]), meta["scaling_map_entry"], "tpu",
        mobile=mobile,
        levels=(arch["min_level"], arch["max_level"]), num_classes=arch["num_classes"],
        head=(p["retinanet_head"]["num_convs"], p["retinanet_head"]["num_filters"]),
        bn=dict(activation=bn["activation"], bn_momentum=1.0 - bn["batch_norm_momentum"],
                bn_eps=bn["batch_norm_epsilon"]),
        anchor=p["anchor"],
        postprocess={k: post[k] for k in ("max_total_size", "nms_iou_threshold", "score_threshold",
                                          "pre_nms_num_boxes", "nms_version")})
