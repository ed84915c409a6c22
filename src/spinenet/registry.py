"""Registry of the SpineNet RetinaNet variants: ``create_model(name, **overrides)``, ``list_models()``.

Each variant is its reference YAML plus metadata. Published numbers are from the reference's MODEL_ZOO.md
(COCO val2017, swish + stochastic depth recipe; ``shared/spec/spinenet-reference.md`` §7.1); parameter counts
are trainable parameters at 91 classes as the reference code builds them (§2.8; 49S/49 exact from Model Garden).

SpineNet-Mobile (``*_mobile``): Model Garden's ``retinanet_mobile_coco`` recipes (their YAMLs transcribed in
``configs/spinenet{49,49S,49XS}_mobile_retinanet.yaml``). Published figures: Mobile-49 from
``official/vision/MODEL_GARDEN.md`` ("Mobile-size RetinaNet": 1.0 B FLOPs, 28.1 AP); Mobile-49S's AP is the
comment of ``coco_spinenet49s_mobile_tpu.yaml`` (23.5); Model Garden publishes no FLOPs for 49S/49XS and no AP
for 49XS (``None``). 600 epochs: 277200 steps x 256 images over COCO train2017's 118287. Parameter counts equal
Model Garden's and TF1's own builds (``tools/mobile_param_counts.py``; ``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

from spinenet.config import ExperimentConfig, load_config


@dataclass(frozen=True)
class ModelInfo:
    name: str
    model_id: str
    config_file: str  # packaged under spinenet/configs/
    input_size: int
    published_ap: float | None  # COCO val2017 box AP, MODEL_ZOO.md (None: not published)
    epochs: int
    num_params: int  # trainable, 91 classes
    gflops: float | None  # MODEL_ZOO.md multiply-adds (B) (None: not published)


_MODELS = {
    m.name: m for m in [
        ModelInfo("retinanet_spinenet49s", "49S", "spinenet49S_retinanet.yaml", 640, 41.5, 500, 11_265_942, 33.8),
        ModelInfo("retinanet_spinenet49", "49", "spinenet49_retinanet.yaml", 640, 44.3, 500, 28_543_383, 85.4),
        ModelInfo("retinanet_spinenet96", "96", "spinenet96_retinanet.yaml", 1024, 48.5, 500, 42_974_871, 265.4),
        ModelInfo("retinanet_spinenet143", "143", "spinenet143_retinanet.yaml", 1280, 50.6, 500, 66_959_511, 524.0),
        ModelInfo("retinanet_spinenet190", "190", "spinenet190_retinanet.yaml", 1280, 52.0, 400, 163_637_351,
                  1885.0),
        ModelInfo("retinanet_spinenet49_mobile", "49", "spinenet49_mobile_retinanet.yaml", 384, 28.1, 600,
                  2_337_579, 1.0),
        ModelInfo("retinanet_spinenet49s_mobile", "49S", "spinenet49S_mobile_retinanet.yaml", 384, 23.5, 600,
                  1_030_653, None),
        ModelInfo("retinanet_spinenet49xs_mobile", "49XS", "spinenet49XS_mobile_retinanet.yaml", 256, None, 600,
                  872_711, None),
    ]
}

# Short keyword overrides accepted by create_model / get_config, and the config key each one sets.
OVERRIDE_ALIASES = {
    "num_classes": "architecture.num_classes",
    "min_level": "architecture.min_level",
    "max_level": "architecture.max_level",
    "convention": "architecture.convention",
    "activation": "batch_norm_activation.activation",
    "init_drop_connect_rate": "spinenet.init_drop_connect_rate",  # spinenet_mbconv.* for the *_mobile models
    "head_num_filters": "retinanet_head.num_filters",
    "head_num_convs": "retinanet_head.num_convs",
    "anchor_size": "anchor.anchor_size",
    "aspect_ratios": "anchor.aspect_ratios",
    "image_size": "retinanet_parser.output_size",
}


def list_models() -> list[str]:
    return list(_MODELS)


def normalize_name(name: str) -> str:
    """Accept ``retinanet_spinenet49s``, ``spinenet49S``, ``49S`` and the like."""
    key = name.strip().lower()
    for prefix in ("retinanet_", "spinenet", "spinenet-", "-", "_"):
        key = key.removeprefix(prefix)
    return f"retinanet_spinenet{key}"


def get_model_info(name: str) -> ModelInfo:
    info = _MODELS.get(normalize_name(name))
    if info is None:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(_MODELS)}")
    return info


def variant_for_config(cfg: ExperimentConfig) -> str:
    """The registry name of the variant ``cfg`` builds (its backbone family and model_id)."""
    if cfg.architecture.backbone == "spinenet_mbconv":
        return get_model_info(f"{cfg.spinenet_mbconv.model_id}_mobile").name
    return get_model_info(cfg.spinenet.model_id).name


def config_path(name: str):
    """Path (a Traversable) of the packaged reference YAML for a variant."""
    return resources.files("spinenet") / "configs" / get_model_info(name).config_file


def get_config(name: str, params_override: Any = None, overrides: list[str] | tuple[str, ...] = (),
               **kwargs: Any) -> ExperimentConfig:
    """The variant's resolved config; ``kwargs`` are short aliases (see ``OVERRIDE_ALIASES``)."""
    dotted = list(overrides)
    mobile = get_model_info(name).name.endswith("_mobile")
    for key, value in kwargs.items():
        if key not in OVERRIDE_ALIASES:
            raise ValueError(f"unknown override {key!r}; valid: {', '.join(OVERRIDE_ALIASES)} "
                             "(or pass dotted config keys through overrides=[...])")
        if key == "image_size" and isinstance(value, int):
            value = [value, value]
        target = OVERRIDE_ALIASES[key]
        if mobile and target.startswith("spinenet."):
            target = "spinenet_mbconv." + target.removeprefix("spinenet.")
        dotted.append(f"{target}={_yaml_scalar(value)}")
    with resources.as_file(config_path(name)) as path:
        return load_config(path, params_override=params_override, overrides=dotted)


def create_model(name: str, num_classes: int = 91, **overrides: Any):
    """Build a randomly initialised variant, e.g. ``create_model("retinanet_spinenet49s", num_classes=91)``."""
    from spinenet.modeling.factory import build_retinanet

    return build_retinanet(get_config(name, num_classes=num_classes, **overrides))


def _yaml_scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml_scalar(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)  # quoted, so "49" stays a string
    return str(value)
