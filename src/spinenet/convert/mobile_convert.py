"""``spinenet convert`` for SpineNet-Mobile checkpoints: the variant from the weights, the config, the mapping
(:mod:`spinenet.convert.mobile_map`), the written ``.pt``. Reached from :func:`spinenet.convert.tpu.convert_tpu` and
:func:`spinenet.convert.model_garden.convert_model_garden` when the weights are a mobile backbone's.

The packaged ``*_mobile`` configs are Model Garden's recipes (convention ``model_garden``). A TF1 checkpoint gets
the TF1 code's values where those recipes differ, taken from this project's defaults (= TF1 ``base_config``):
convention ``tpu``, BN momentum/epsilon, anchor aspect-ratio order, post-processing, no stochastic depth, and the
activation of TF1's only SpineNet-MBConv YAML, ``spinenet-mbconv49_retinanet.yaml`` (swish; a frozen graph shows
relu instead when it was trained so).
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from spinenet.config import ExperimentConfig, config_to_dict, default_config, load_config
from spinenet.convert.mobile_map import (
    infer_model_garden_mobile,
    infer_tf1_mobile,
    map_model_garden_mobile,
)
from spinenet.convert.model_garden import ConversionError, ConversionResult, save_converted
from spinenet.modeling.spinenet_mobile import MOBILE_MODEL_IDS

TF1_MOBILE_ACTIVATION = "swish"  # tensorflow/tpu configs/spinenet/spinenet-mbconv49_retinanet.yaml


def registry_name(model_id: str) -> str:
    return f"retinanet_spinenet{model_id.lower()}_mobile"


def _pick_variant(arch: dict[str, Any], model_id: str | None, source: str) -> str:
    if model_id is not None:
        if model_id not in MOBILE_MODEL_IDS:
            raise ConversionError(f"{source} holds SpineNet-Mobile weights; --model_id {model_id} is not a mobile "
                                  f"variant (valid: {', '.join(MOBILE_MODEL_IDS)})")
        return model_id
    if len(arch["candidates"]) != 1:
        raise ConversionError(f"{source}: the weights ({arch['summary']}) match {arch['candidates'] or 'no'} "
                              f"SpineNet-Mobile variant(s) of {', '.join(MOBILE_MODEL_IDS)}; a width-reduced "
                              "backbone can't be described by a config (--model_id forces a variant if its shapes fit)")
    return arch["candidates"][0]


def tf1_differences() -> dict[str, Any]:
    """What a TF1-trained mobile model has instead of the Model Garden recipe: this project's TF1 defaults."""
    d = config_to_dict(default_config())
    return {"architecture": {"convention": "tpu"},
            "batch_norm_activation": {k: d["batch_norm_activation"][k]
                                      for k in ("batch_norm_momentum", "batch_norm_epsilon")},
            "anchor": {"aspect_ratios": d["anchor"]["aspect_ratios"]}, "postprocess": d["postprocess"],
            "spinenet_mbconv": {"init_drop_connect_rate": None}}


def mobile_config(arch: dict[str, Any], model_id: str, convention: str, config_file: str | os.PathLike | None,
                  params_override, activation: str | None) -> ExperimentConfig:
    """The variant's packaged config (or the user's file), the user's override, then what the weights dictate."""
    from spinenet.registry import get_config

    from_weights: dict[str, Any] = {
        "architecture": {"backbone": "spinenet_mbconv", "num_classes": arch["num_classes"],
                         "convention": convention},
        "spinenet_mbconv": {"model_id": model_id},
        "retinanet_head": {"num_filters": arch["head_num_filters"], "num_convs": arch["head_num_convs"],
                           "use_separable_conv": True},
    }
    if activation is not None:
        from_weights["batch_norm_activation"] = {"activation": activation}
    if config_file is not None:
        stated = load_config(config_file, [params_override] if params_override else None)
        if stated.architecture.backbone != "spinenet_mbconv" or stated.spinenet_mbconv.model_id != model_id:
            what = (f"Mobile-{stated.spinenet_mbconv.model_id}" if stated.architecture.backbone == "spinenet_mbconv"
                    else f"SpineNet-{stated.spinenet.model_id}")
            raise ConversionError(f"the weights are SpineNet-Mobile-{model_id}, but {config_file} describes {what}: "
                                  f"pass the matching config (configs/spinenet{model_id}_mobile_retinanet.yaml) or "
                                  "omit --config_file")
        return load_config(config_file, [o for o in (params_override, from_weights) if o])
    base = [tf1_differences()] if convention == "tpu" else []
    overrides = [o for o in (*base, params_override, from_weights) if o]
    return get_config(registry_name(model_id), params_override=overrides)


def _finish(model: nn.Module, state, cfg: ExperimentConfig, model_id: str, output, label_map_file, source: dict,
            num_tensors: int, notes: list[str]) -> ConversionResult:
    model.load_state_dict(state, strict=True)
    out, n_params = save_converted(model, cfg, registry_name(model_id), output, label_map_file, source)
    return ConversionResult(out, f"Mobile-{model_id}", cfg.architecture.num_classes, num_tensors, n_params, notes)


def convert_model_garden_mobile(reader, names: dict[str, str], output, *, config_file, params_override,
                                label_map_file, model_id: str | None) -> ConversionResult:
    from spinenet.modeling.factory import build_retinanet

    arch = infer_model_garden_mobile(reader, names)
    model_id = _pick_variant(arch, model_id, str(reader.prefix))
    cfg = mobile_config(arch, model_id, "model_garden", config_file, params_override, None)
    notes = [f"activation {cfg.batch_norm_activation.activation}: from the config (the weights can't tell "
             "hard_swish from swish or relu)"]
    model = build_retinanet(cfg)
    return _finish(model, map_model_garden_mobile(reader, names, model), cfg, model_id, output, label_map_file,
                   {"format": "model-garden", "checkpoint": str(reader.prefix)}, len(reader.keys()), notes)


def convert_tf1_mobile(w, output, fmt: str, *, config_file, params_override, label_map_file,
                       model_id: str | None) -> ConversionResult:
    from spinenet.convert.tpu import MODEL_SCOPES, FrozenGraphWeights, _ignored, map_tpu_weights
    from spinenet.modeling.factory import build_retinanet

    arch = infer_tf1_mobile(w)
    model_id = _pick_variant(arch, model_id, w.source)
    notes: list[str] = []
    activation = None
    if isinstance(w, FrozenGraphWeights):
        ops = w.graph.ops("spinenet_mbconv/")
        # The SE blocks use swish + sigmoid whatever the activation, so only Relu ops tell relu apart.
        activation = "relu" if "Relu" in ops else TF1_MOBILE_ACTIVATION
        notes.append(f"activation {activation}: read off the graph's ops")
        for node in w.graph.placeholders():
            shape = node.shape()
            if shape and len(shape) == 4:
                notes.append(f"the graph's input {node.name} is {'x'.join(str(d) for d in shape)}; export with "
                             f"--input_image_size {shape[1]},{shape[2]} for the same signature")
    elif config_file is None:
        activation = TF1_MOBILE_ACTIVATION
        notes.append("activation swish: TF1's SpineNet-MBConv YAML (the weights can't tell relu from swish; for a "
                     "relu checkpoint add --params_override '{batch_norm_activation: {activation: relu}}')")
    cfg = mobile_config(arch, model_id, "tpu", config_file, params_override, activation)
    if cfg.anchor.num_scales * len(cfg.anchor.aspect_ratios) != arch["num_anchors"]:
        raise ConversionError(f"{w.source}: the head predicts {arch['num_anchors']} anchors per location but the "
                              f"config has {cfg.anchor.num_scales} scales x {len(cfg.anchor.aspect_ratios)} ratios")
    model = build_retinanet(cfg)
    state = map_tpu_weights(w, model, notes=notes)
    used = sum(1 for n in w.names() if not _ignored(n) and n.startswith(MODEL_SCOPES))
    return _finish(model, state, cfg, model_id, output, label_map_file, {"format": fmt, "checkpoint": w.source},
                   used, notes)
