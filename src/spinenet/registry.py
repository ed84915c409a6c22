"""Registry of the five SpineNet RetinaNet variants: ``create_model(name, **overrides)``, ``list_models()``.

Each variant is its reference YAML plus metadata. Published numbers are from the reference's MODEL_ZOO.md
(COCO val2017, swish + stochastic depth recipe; ``shared/spec/spinenet-reference.md`` §7.1); parameter counts
are trainable parameters at 91 classes as the reference code builds them (§2.8; 49S/49 exact from Model Garden).
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
    published_ap: float  # COCO val2017 box AP, MODEL_ZOO.md
    epochs: int
    num_params: int  # trainable, 91 classes
    gflops: float  # MODEL_ZOO.md multiply-adds (B)


_MODELS = {
    m.name: m for m in [
        ModelInfo("retinanet_spinenet49s", "49S", "spinenet49S_retinanet.yaml", 640, 41.5, 500, 11_265_942, 33.8),
        ModelInfo("retinanet_spinenet49", "49", "spinenet49_retinanet.yaml", 640, 44.3, 500, 28_543_383, 85.4),
        ModelInfo("retinanet_spinenet96", "96", "spinenet96_retinanet.yaml", 1024, 48.5, 500, 42_974_871, 265.4),
        ModelInfo("retinanet_spinenet143", "143", "spinenet143_retinanet.yaml", 1280, 50.6, 500, 66_959_511, 524.0),
        ModelInfo("retinanet_spinenet190", "190", "spinenet190_retinanet.yaml", 1280, 52.0, 400, 163_637_351,
                  1885.0),
    ]
}

# Short keyword overrides accepted by create_model / get_config, and the config key each one sets.
OVERRIDE_ALIASES = {
    "num_classes": "architecture.num_classes",
    "min_level": "architecture.min_level",
    "max_level": "architecture.max_level",
    "convention": "architecture.convention",
    "activation": "batch_norm_activation.activation",
    "init_drop_connect_rate": "spinenet.init_drop_connect_rate",
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


def config_path(name: str):
    """Path (a Traversable) of the packaged reference YAML for a variant."""
    return resources.files("spinenet") / "configs" / get_model_info(name).config_file


def get_config(name: str, params_override: Any = None, overrides: list[str] | tuple[str, ...] = (),
               **kwargs: Any) -> ExperimentConfig:
    """The variant's resolved config; ``kwargs`` are short aliases (see ``OVERRIDE_ALIASES``)."""
    dotted = list(overrides)
    for key, value in kwargs.items():
        if key not in OVERRIDE_ALIASES:
            raise ValueError(f"unknown override {key!r}; valid: {', '.join(OVERRIDE_ALIASES)} "
                             "(or pass dotted config keys through overrides=[...])")
        if key == "image_size" and isinstance(value, int):
            value = [value, value]
        dotted.append(f"{OVERRIDE_ALIASES[key]}={_yaml_scalar(value)}")
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
