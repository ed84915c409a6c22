"""Typed experiment config mirroring the TF1 reference's RetinaNet params (``tensorflow/tpu``,
``models/official/detection/configs/{base,detection,retinanet}_config.py`` at HEAD 7dc921f).

Every key a reference YAML or ``--params_override`` may set exists here under the same spelling, and each
default is written once, in the dataclass field. Resolution order in :func:`load_config`::

    dataclass defaults -> CONVENTION_PRESETS[architecture.convention] -> config file
                       -> params_override(s) -> dotted overrides -> validate()
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from spinenet.config_io import (
    ConfigError,
    dump_yaml,
    from_dict,
    load_mapping_file,
    merge_dicts,
    parse_dotted_overrides,
    parse_params_override,
    to_dict,
)

__all__ = [
    "CONVENTION_PRESETS", "ConfigError", "ExperimentConfig", "PACKAGED_CONFIG_DIR", "SPINENET_MODEL_IDS",
    "SPINENET_MBCONV_MODEL_IDS",
    "config_from_dict", "config_to_dict", "default_config", "dump_yaml", "load_config", "merge_dicts",
    "parse_dotted_overrides", "parse_params_override", "validate",
]

PACKAGED_CONFIG_DIR = Path(__file__).resolve().parent / "configs"
SPINENET_MODEL_IDS = ("49S", "49", "96", "143", "190")
SPINENET_MBCONV_MODEL_IDS = ("49", "49S", "49XS")  # SpineNet-Mobile (spinenet_mbconv.py SCALING_MAP)


# --- base_config.py ------------------------------------------------------------------------------------


@dataclass
class ArchitectureConfig:
    min_level: int = 3
    max_level: int = 7
    use_bfloat16: bool = True
    space_to_depth_block_size: int = 1
    pre_parser: str | None = None
    num_classes: int = 91  # detection_config.py; includes background 0, ids 1..90 are COCO category ids
    parser: str = "retinanet_parser"  # retinanet_config.py
    # Deliberate deviation: the reference RetinaNet defaults are 'resnet' / 'fpn'; this port builds only
    # SpineNet with identity features (every SpineNet YAML sets these), so default_config() is buildable.
    backbone: str = "spinenet"
    multilevel_features: str = "identity"
    output_flat_fpn_features: bool = False  # retinanet_config.py
    # Project extension: which reference's numerics to follow ("tpu" = TF1 TPU code, "model_garden" = TF2).
    convention: str = "tpu"


@dataclass
class OptimizerConfig:
    type: str = "momentum"  # tf.train.MomentumOptimizer, non-Nesterov
    momentum: float = 0.9


@dataclass
class LearningRateConfig:
    type: str = "step"
    warmup_learning_rate: float = 0.0067
    warmup_steps: int = 500
    init_learning_rate: float = 0.08
    learning_rate_levels: list[float] = field(default_factory=lambda: [0.008, 0.0008])
    learning_rate_steps: list[int] = field(default_factory=lambda: [15000, 20000])


@dataclass
class CheckpointConfig:
    path: str = ""
    prefix: str = ""
    skip_variables_regex: str = ""


@dataclass
class PreParserDatasetConfig:
    file_pattern: str = ""
    dataset_type: str = "tfrecord"


@dataclass
class TrainConfig:
    iterations_per_loop: int = 100
    train_batch_size: int = 64
    total_steps: int = 22500
    num_cores_per_replica: int | None = None
    input_partition_dims: list[int] | None = None
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    learning_rate: LearningRateConfig = field(default_factory=LearningRateConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    frozen_variable_prefix: str | None = None
    train_file_pattern: str = ""
    train_dataset_type: str = "tfrecord"
    transpose_input: bool = True
    regularization_variable_regex: str = r".*(kernel|weight):0$"
    l2_weight_decay: float = 0.0001
    gradient_clip_norm: float = 0.0
    space_to_depth_block_size: int = 1
    pre_parser_dataset: PreParserDatasetConfig = field(default_factory=PreParserDatasetConfig)


@dataclass
class EvalConfig:
    eval_batch_size: int = 8
    eval_samples: int | None = None  # base 5000, detection_config.py: None = the whole eval set
    min_eval_interval: int = 180
    eval_timeout: int | None = None
    num_steps_per_eval: int = 1000
    eval_file_pattern: str = ""
    eval_dataset_type: str = "tfrecord"
    skip_eval_loss: bool = False
    suffix: str = ""
    type: str = "box"  # detection_config.py from here on
    use_json_file: bool = True
    val_json_file: str = ""
    per_category_metrics: bool = False


@dataclass
class PredictConfig:
    predict_batch_size: int = 8


@dataclass
class BatchNormActivationConfig:
    batch_norm_momentum: float = 0.997  # TF convention; PyTorch momentum = 1 - this
    batch_norm_epsilon: float = 1e-4
    batch_norm_trainable: bool = True
    use_sync_bn: bool = False
    activation: str = "relu"


@dataclass
class DropblockConfig:
    dropblock_keep_prob: float | None = None
    dropblock_size: int | None = None


@dataclass
class ResnetConfig:
    resnet_depth: int = 50
    init_drop_connect_rate: float | None = None


@dataclass
class SpineNetConfig:
    model_id: str = "49"
    init_drop_connect_rate: float | None = None
    use_native_resize_op: bool = False


@dataclass
class SpineNetMBConvConfig:
    model_id: str = "49"
    se_ratio: float = 0.2
    init_drop_connect_rate: float | None = None
    use_native_resize_op: bool = False


@dataclass
class PlatformConfig:
    """Set by the reference ``main.py`` from its TPU flags; kept so dumped reference params load."""

    eval_master: str | None = None
    tpu: str | None = None
    tpu_zone: str | None = None
    gcp_project: str | None = None


# --- detection_config.py -------------------------------------------------------------------------------


@dataclass
class AnchorConfig:
    num_scales: int = 3
    aspect_ratios: list[float] = field(default_factory=lambda: [1.0, 2.0, 0.5])  # width / height
    anchor_size: float = 4.0


@dataclass
class FpnConfig:
    fpn_feat_dims: int = 256
    use_separable_conv: bool = False
    use_batch_norm: bool = True


@dataclass
class NasFpnConfig:
    fpn_feat_dims: int = 256
    num_repeats: int = 5
    use_separable_conv: bool = False
    init_drop_connect_rate: float | None = None
    block_fn: str = "conv"
    activation: str | None = None
    use_sum_for_combination: bool = False


@dataclass
class PostprocessConfig:
    apply_nms: bool = True
    use_batched_nms: bool = False  # deprecated in the reference in favour of nms_version
    nms_version: str = "v1"
    max_total_size: int = 100
    nms_iou_threshold: float = 0.5
    score_threshold: float = 0.05
    pre_nms_num_boxes: int = 5000
    apply_sigmoid: bool = True


# --- retinanet_config.py -------------------------------------------------------------------------------


@dataclass
class RetinanetParserConfig:
    output_size: list[int] = field(default_factory=lambda: [640, 640])
    match_threshold: float = 0.5
    unmatched_threshold: float = 0.5
    aug_rand_hflip: bool = True
    aug_scale_min: float = 1.0
    aug_scale_max: float = 1.0
    aug_policy: str = ""
    skip_crowd_during_training: bool = True
    max_num_instances: int = 100
    regenerate_source_id: bool = False


@dataclass
class RetinanetHeadConfig:
    anchors_per_location: int | None = None  # unused in the reference too: len(aspect_ratios) * num_scales
    num_convs: int = 4
    num_filters: int = 256
    use_separable_conv: bool = False
    use_batch_norm: bool = True


@dataclass
class RetinanetLossConfig:
    focal_loss_alpha: float = 0.25
    focal_loss_gamma: float = 1.5
    huber_loss_delta: float = 0.1
    box_loss_weight: float = 50.0
    normalizer_momentum: float = 0.0


@dataclass
class ExperimentConfig:
    """The whole experiment; field order follows the reference's config chain."""

    model_dir: str = ""
    use_tpu: bool = True
    isolate_session_state: bool = False
    architecture: ArchitectureConfig = field(default_factory=ArchitectureConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    batch_norm_activation: BatchNormActivationConfig = field(default_factory=BatchNormActivationConfig)
    dropblock: DropblockConfig = field(default_factory=DropblockConfig)
    resnet: ResnetConfig = field(default_factory=ResnetConfig)
    spinenet: SpineNetConfig = field(default_factory=SpineNetConfig)
    spinenet_mbconv: SpineNetMBConvConfig = field(default_factory=SpineNetMBConvConfig)
    enable_summary: bool = False
    anchor: AnchorConfig = field(default_factory=AnchorConfig)
    fpn: FpnConfig = field(default_factory=FpnConfig)
    nasfpn: NasFpnConfig = field(default_factory=NasFpnConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    type: str = "retinanet"
    retinanet_parser: RetinanetParserConfig = field(default_factory=RetinanetParserConfig)
    retinanet_head: RetinanetHeadConfig = field(default_factory=RetinanetHeadConfig)
    retinanet_loss: RetinanetLossConfig = field(default_factory=RetinanetLossConfig)
    platform: PlatformConfig = field(default_factory=PlatformConfig)  # main.py runtime additions
    tpu_job_name: str | None = None


# Config-visible differences of TF Model Garden (spec/model-garden-reference.md, "Conventions"). Applied under
# the user's layers, so explicit user values win. Stride-2 padding, anchor centres, box decoding, clipping,
# stochastic-depth schedule and input normalisation have no field: the model reads architecture.convention.
CONVENTION_PRESETS: dict[str, dict] = {
    "tpu": {},
    "model_garden": {
        "batch_norm_activation": {"batch_norm_momentum": 0.99, "batch_norm_epsilon": 1e-3},
        "anchor": {"aspect_ratios": [0.5, 1.0, 2.0]},
        "postprocess": {"nms_version": "v2"},
    },
}

_ACTIVATIONS = ("relu", "swish", "hard_swish")  # hard_swish: Model Garden's SpineNet-Mobile 49/49S YAMLs
_NMS_VERSIONS = ("v1", "v2", "batched")
_LR_TYPES = ("step", "cosine")
_OPTIMIZERS = ("momentum", "adam", "adadelta", "adagrad", "rmsprop")


def _one_of(key: str, value: str, valid: Sequence[str]) -> str | None:
    return None if value in valid else f"{key} {value!r} is unknown; valid: {', '.join(valid)}"


def validate(cfg: ExperimentConfig) -> None:
    """Check cross-field rules; raise one :class:`ConfigError` listing every problem found."""
    a, tr, lr, p = cfg.architecture, cfg.train, cfg.train.learning_rate, cfg.retinanet_parser
    bn, an, pp = cfg.batch_norm_activation, cfg.anchor, cfg.postprocess
    mobile = a.backbone == "spinenet_mbconv"
    rate = (cfg.spinenet_mbconv if mobile else cfg.spinenet).init_drop_connect_rate
    section = "spinenet_mbconv" if mobile else "spinenet"
    steps, stride = lr.learning_rate_steps, 2**a.max_level
    problems = [
        _one_of("architecture.convention", a.convention, list(CONVENTION_PRESETS)),
        (_one_of("spinenet_mbconv.model_id", cfg.spinenet_mbconv.model_id, SPINENET_MBCONV_MODEL_IDS) if mobile
         else _one_of("spinenet.model_id", cfg.spinenet.model_id, SPINENET_MODEL_IDS)),
        _one_of("batch_norm_activation.activation", bn.activation, _ACTIVATIONS),
        _one_of("postprocess.nms_version", pp.nms_version, _NMS_VERSIONS),
        _one_of("train.learning_rate.type", lr.type, _LR_TYPES),
        _one_of("train.optimizer.type", tr.optimizer.type, _OPTIMIZERS),
        # This port builds only SpineNet and SpineNet-Mobile with identity features (see ArchitectureConfig).
        _one_of("architecture.backbone", a.backbone, ["spinenet", "spinenet_mbconv"]),
        _one_of("architecture.multilevel_features", a.multilevel_features, ["identity"]),
    ]
    rules = [
        (1 <= a.min_level <= a.max_level,
         f"architecture.min_level ({a.min_level}) must be >= 1 and <= max_level ({a.max_level})"),
        (a.num_classes >= 2, f"architecture.num_classes must be >= 2 (background + 1), got {a.num_classes}"),
        (rate is None or 0.0 <= rate < 1.0,
         f"{section}.init_drop_connect_rate must be null or in [0, 1), got {rate}"),
        (len(p.output_size) == 2 and all(s > 0 and s % stride == 0 for s in p.output_size),
         f"retinanet_parser.output_size {p.output_size} must be [height, width], positive multiples of "
         f"2**max_level = {stride} (e.g. {[max(1, round(s / stride)) * stride for s in p.output_size[:2]]})"),
        (0 < p.aug_scale_min <= p.aug_scale_max,
         f"retinanet_parser.aug_scale_min ({p.aug_scale_min}) must be > 0 and <= "
         f"aug_scale_max ({p.aug_scale_max})"),
        (p.unmatched_threshold <= p.match_threshold,
         "retinanet_parser.unmatched_threshold must be <= match_threshold"),
        (len(lr.learning_rate_levels) == len(steps),
         f"train.learning_rate.learning_rate_levels ({len(lr.learning_rate_levels)} values) and "
         f"learning_rate_steps ({len(steps)} values) must have the same length"),
        (all(x < y for x, y in zip(steps, steps[1:], strict=False)),
         f"train.learning_rate.learning_rate_steps {steps} must be strictly increasing"),
        (lr.warmup_steps >= 0 and tr.total_steps >= 0,
         "train.total_steps and train.learning_rate.warmup_steps must be >= 0"),
        (tr.train_batch_size >= 1 and cfg.eval.eval_batch_size >= 1,
         "train.train_batch_size and eval.eval_batch_size must be >= 1"),
        (0.0 <= bn.batch_norm_momentum < 1.0 and bn.batch_norm_epsilon > 0,
         "batch_norm_activation.batch_norm_momentum must be in [0, 1) and batch_norm_epsilon > 0"),
        (an.num_scales >= 1 and an.anchor_size > 0 and an.aspect_ratios and min(an.aspect_ratios) > 0,
         "anchor: num_scales >= 1, anchor_size > 0 and non-empty, positive aspect_ratios are required"),
        (cfg.retinanet_head.num_convs >= 0 and cfg.retinanet_head.num_filters >= 1,
         "retinanet_head.num_convs must be >= 0 and num_filters >= 1"),
        (0.0 <= pp.nms_iou_threshold <= 1.0, "postprocess.nms_iou_threshold must be in [0, 1]"),
        (pp.max_total_size >= 1 and pp.pre_nms_num_boxes >= 1,
         "postprocess.max_total_size and pre_nms_num_boxes must be >= 1"),
        (0.0 <= cfg.retinanet_loss.focal_loss_alpha <= 1.0,
         "retinanet_loss.focal_loss_alpha must be in [0, 1]"),
    ]
    errors = [m for m in problems if m] + [msg for ok, msg in rules if not ok]
    if errors:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(errors))


def default_config() -> ExperimentConfig:
    """The reference defaults (the "tpu" convention, whose preset is empty)."""
    return ExperimentConfig()


def config_from_dict(d: Mapping) -> ExperimentConfig:
    """Strictly convert a (partial) nested mapping, then :func:`validate`.

    Unknown keys and wrong types raise :class:`ConfigError`. Missing keys take the dataclass defaults;
    convention presets are *not* applied here (a saved, resolved config already holds them).
    """
    cfg = from_dict(ExperimentConfig, d)
    validate(cfg)
    return cfg


def config_to_dict(cfg: ExperimentConfig) -> dict:
    """A plain, YAML/JSON-serialisable nested dict (what checkpoints store)."""
    return to_dict(cfg)


_Override = str | os.PathLike | Mapping


def load_config(
    config_file: str | os.PathLike | None = None,
    params_override: _Override | Sequence[_Override] | None = None,
    overrides: Sequence[str] = (),
) -> ExperimentConfig:
    """Resolve a config: defaults -> convention preset -> ``config_file`` -> ``params_override`` -> dotted.

    ``params_override`` is one override or a sequence of them, each as :func:`parse_params_override`
    accepts; ``overrides`` are ``"section.key=value"`` strings. The convention whose preset applies is the
    one the user's layers choose (default "tpu"); anything the user sets explicitly wins over the preset.
    """
    layers: list[dict] = []
    if config_file is not None:
        layers.append(load_mapping_file(config_file))
    if params_override is not None:
        many = not isinstance(params_override, (str, os.PathLike, Mapping))
        for item in params_override if many else [params_override]:
            layers.append(parse_params_override(item))
    layers.append(parse_dotted_overrides(overrides))

    def apply(base: dict) -> dict:
        for layer in layers:
            base = merge_dicts(base, layer)
        return base

    defaults = config_to_dict(default_config())
    convention = apply(defaults)["architecture"]["convention"]
    problem = _one_of("architecture.convention", convention, list(CONVENTION_PRESETS))
    if problem:
        raise ConfigError(problem)
    return config_from_dict(apply(merge_dicts(defaults, CONVENTION_PRESETS[convention])))
