"""Config schema, loading, overrides, strict errors and validation (spec §1, model-garden conventions)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from spinenet.config import (
    CONVENTION_PRESETS,
    PACKAGED_CONFIG_DIR,
    ConfigError,
    ExperimentConfig,
    config_from_dict,
    config_to_dict,
    default_config,
    dump_yaml,
    load_config,
    merge_dicts,
    parse_dotted_overrides,
    parse_params_override,
    validate,
)

SEED_OVERRIDE = "{ train: { total_steps : 231500, train_batch_size : 4}, eval: { eval_batch_size : 4 } }"
LABEL_MAP = Path(PACKAGED_CONFIG_DIR).parent / "data" / "coco_label_map.csv"

# Spec §1.1: the values every shipped YAML must resolve to (defaults included).
_COMMON = dict(train_batch_size=256, warmup_steps=2000, l2=0.00004, clip=10.0)
YAML_VALUES = {
    "49S": dict(steps=231500, lr=0.28, levels=[0.028, 0.0028], lr_steps=[217610, 226870], dc=0.2,
                filters=128, convs=4, anchor=3.0, size=[640, 640], aug=(0.5, 2.0), maps=("39.7%", "41.5%")),
    "49": dict(steps=231500, lr=0.28, levels=[0.028, 0.0028], lr_steps=[217610, 226870], dc=0.2,
               filters=256, convs=4, anchor=3.0, size=[640, 640], aug=(0.5, 2.0), maps=("42.8%", "44.3%")),
    "96": dict(steps=231500, lr=0.28, levels=[0.028, 0.0028], lr_steps=[217610, 226870], dc=0.2,
               filters=256, convs=4, anchor=3.0, size=[1024, 1024], aug=(0.5, 2.0), maps=("46.7%", "48.5%")),
    "143": dict(steps=231500, lr=0.28, levels=[0.028, 0.0028], lr_steps=[217610, 226870], dc=0.16,
                filters=256, convs=4, anchor=4.0, size=[1280, 1280], aug=(0.1, 1.9), maps=("48.0%", "50.6%")),
    "190": dict(steps=185200, lr=0.3, levels=[0.03, 0.003], lr_steps=[171310, 180570], dc=0.2,
                filters=512, convs=7, anchor=4.0, size=[1280, 1280], aug=(0.1, 1.9), maps=("52.0%",)),
}


def yaml_path(model_id: str) -> Path:
    return PACKAGED_CONFIG_DIR / f"spinenet{model_id}_retinanet.yaml"


@pytest.mark.parametrize("model_id", list(YAML_VALUES))
def test_reference_yaml_values(model_id: str) -> None:
    v, cfg = YAML_VALUES[model_id], load_config(yaml_path(model_id))
    lr = cfg.train.learning_rate
    assert (cfg.architecture.backbone, cfg.architecture.multilevel_features) == ("spinenet", "identity")
    assert cfg.train.total_steps == v["steps"] and cfg.train.train_batch_size == _COMMON["train_batch_size"]
    assert lr.warmup_steps == _COMMON["warmup_steps"] and lr.init_learning_rate == v["lr"]
    assert lr.learning_rate_levels == v["levels"] and lr.learning_rate_steps == v["lr_steps"]
    assert cfg.train.l2_weight_decay == _COMMON["l2"] and cfg.train.gradient_clip_norm == _COMMON["clip"]
    assert cfg.batch_norm_activation.use_sync_bn is True and cfg.batch_norm_activation.activation == "swish"
    assert cfg.spinenet.model_id == model_id and cfg.spinenet.init_drop_connect_rate == v["dc"]
    assert (cfg.retinanet_head.num_filters, cfg.retinanet_head.num_convs) == (v["filters"], v["convs"])
    assert cfg.anchor.anchor_size == v["anchor"]
    p = cfg.retinanet_parser
    assert p.output_size == v["size"] and (p.aug_scale_min, p.aug_scale_max) == v["aug"]
    # Inherited reference defaults (spec §1.2) stay untouched by the YAMLs.
    assert cfg.batch_norm_activation.batch_norm_momentum == 0.997
    assert cfg.batch_norm_activation.batch_norm_epsilon == 1e-4
    assert cfg.anchor.aspect_ratios == [1.0, 2.0, 0.5] and cfg.anchor.num_scales == 3
    assert cfg.postprocess.nms_version == "v1" and cfg.postprocess.pre_nms_num_boxes == 5000
    assert cfg.retinanet_loss.focal_loss_gamma == 1.5 and cfg.architecture.num_classes == 91
    header = yaml_path(model_id).read_text().split("architecture:")[0]
    assert all(m in header for m in v["maps"])


def test_reference_defaults() -> None:
    cfg = default_config()
    assert cfg.train.learning_rate.warmup_learning_rate == 0.0067
    assert (cfg.train.optimizer.type, cfg.train.optimizer.momentum) == ("momentum", 0.9)
    assert cfg.train.regularization_variable_regex == r".*(kernel|weight):0$"
    a = cfg.architecture
    assert (a.min_level, a.max_level, a.convention) == (3, 7, "tpu")
    pp = cfg.postprocess
    assert (pp.max_total_size, pp.nms_iou_threshold, pp.score_threshold) == (100, 0.5, 0.05)
    loss = cfg.retinanet_loss
    assert (loss.focal_loss_alpha, loss.huber_loss_delta, loss.box_loss_weight) == (0.25, 0.1, 50.0)
    assert (cfg.retinanet_parser.match_threshold, cfg.retinanet_parser.unmatched_threshold) == (0.5, 0.5)
    assert cfg.eval.eval_batch_size == 8 and cfg.eval.eval_samples is None and cfg.eval.type == "box"
    assert cfg.type == "retinanet" and cfg.dropblock.dropblock_keep_prob is None
    validate(cfg)


def test_seed_override_string() -> None:
    assert parse_params_override(SEED_OVERRIDE) == {
        "train": {"total_steps": 231500, "train_batch_size": 4}, "eval": {"eval_batch_size": 4}}
    cfg = load_config(yaml_path("49S"), params_override=SEED_OVERRIDE)
    assert (cfg.train.total_steps, cfg.train.train_batch_size, cfg.eval.eval_batch_size) == (231500, 4, 4)
    assert cfg.train.learning_rate.init_learning_rate == 0.28  # the rest of the YAML is kept


def test_params_override_forms(tmp_path: Path) -> None:
    assert parse_params_override('{"train": {"total_steps": 7}}') == {"train": {"total_steps": 7}}
    # The reference's comma-separated dotted form, with a list and a quoted comma.
    assert parse_params_override("train.total_steps=7, anchor.aspect_ratios=[1, 2], model_dir='a,b'") == {
        "train": {"total_steps": 7}, "anchor": {"aspect_ratios": [1, 2]}, "model_dir": "a,b"}
    assert parse_params_override("") == {} and parse_params_override({"a": 1}) == {"a": 1}
    with pytest.raises(ConfigError, match="cannot parse params_override"):
        parse_params_override("not an override")
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        parse_params_override(str(tmp_path / "missing.yaml"))


def test_override_files_and_order(tmp_path: Path) -> None:
    (tmp_path / "o.yaml").write_text("train:\n  total_steps: 100\n  l2_weight_decay: 1e-5\n")
    override = {"train": {"total_steps": 200}, "eval": {"eval_batch_size": 2}}
    (tmp_path / "o.json").write_text(json.dumps(override))
    cfg = load_config(yaml_path("49"), params_override=[str(tmp_path / "o.yaml"), tmp_path / "o.json"])
    assert cfg.train.total_steps == 200 and cfg.eval.eval_batch_size == 2
    assert cfg.train.l2_weight_decay == 1e-5  # '1e-5' is a float, as in the reference's YAML loader
    # Dotted overrides come last and win.
    cfg = load_config(yaml_path("49"), str(tmp_path / "o.yaml"), overrides=["train.total_steps=5"])
    assert cfg.train.total_steps == 5


def test_dotted_overrides() -> None:
    d = parse_dotted_overrides(["train.total_steps=100", "anchor.aspect_ratios=[1.0,2.0]",
                                "spinenet.init_drop_connect_rate=null", "spinenet.model_id='49S'",
                                "train.checkpoint.path=", "train.total_steps=300"])
    assert d == {"train": {"total_steps": 300, "checkpoint": {"path": ""}},
                 "anchor": {"aspect_ratios": [1.0, 2.0]}, "spinenet": {"init_drop_connect_rate": None,
                                                                       "model_id": "49S"}}
    cfg = load_config(overrides=["anchor.aspect_ratios=[1.0,2.0]",
                                 "batch_norm_activation.batch_norm_epsilon=1e-3"])
    assert cfg.anchor.aspect_ratios == [1.0, 2.0] and cfg.batch_norm_activation.batch_norm_epsilon == 1e-3
    for bad in ["train.total_steps", "=3", "train..x=1"]:
        with pytest.raises(ConfigError, match="section.key=value"):
            parse_dotted_overrides([bad])


def test_unknown_key_names_key_and_valid_keys() -> None:
    with pytest.raises(ConfigError) as e:
        load_config(overrides=["train.totl_steps=1"])
    msg = str(e.value)
    assert "'train.totl_steps'" in msg and "valid keys under 'train'" in msg
    assert "checkpoint" in msg and "total_steps" in msg and "did you mean 'train.total_steps'" in msg
    # The typo from the reference's own GETTING_STARTED.md.
    with pytest.raises(ConfigError, match=r"'train.learnin_rate'.*did you mean 'train.learning_rate'"):
        load_config(params_override="{ train: { learnin_rate: { init_learning_rate: 0.2 } } }")
    with pytest.raises(ConfigError, match="unknown config key 'bogus'; valid keys at the top level: anchor"):
        config_from_dict({"bogus": 1})
    with pytest.raises(ConfigError, match="'retinanet_head.retinanet_head_num_filters'"):
        config_from_dict({"retinanet_head": {"retinanet_head_num_filters": 128}})


@pytest.mark.parametrize(("d", "pattern"), [
    ({"train": {"total_steps": "abc"}}, "config key 'train.total_steps' expects int, got str 'abc'"),
    ({"train": {"total_steps": True}}, "'train.total_steps' expects int, got bool"),
    ({"train": {"total_steps": 1.5}}, "'train.total_steps' expects int, got float"),
    ({"train": {"total_steps": None}}, "'train.total_steps' expects int, got None"),
    ({"train": {"learning_rate": {"learning_rate_levels": [0.1, "x"]}}},
     r"'train.learning_rate.learning_rate_levels\[1\]' expects float, got str"),
    ({"anchor": {"aspect_ratios": 1.0}}, "'anchor.aspect_ratios' expects list\\[float\\], got float"),
    ({"spinenet": {"model_id": 49}}, "'spinenet.model_id' expects str, got int 49 \\(quote it"),
    ({"spinenet": {"init_drop_connect_rate": "x"}}, "expects float or None, got str"),
    ({"train": 5}, "'train' expects a mapping, got int 5"),
])
def test_wrong_type_names_key(d: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        config_from_dict(d)


def test_types_are_canonicalised() -> None:
    cfg = config_from_dict({"retinanet_loss": {"box_loss_weight": 50}, "anchor": {"aspect_ratios": [1, 2]},
                            "spinenet": {"init_drop_connect_rate": None}})
    assert isinstance(cfg.retinanet_loss.box_loss_weight, float)
    assert all(isinstance(r, float) for r in cfg.anchor.aspect_ratios)


@pytest.mark.parametrize(("override", "pattern"), [
    ("architecture.min_level=8", "min_level"),
    ("architecture.num_classes=1", "num_classes must be >= 2"),
    ("spinenet.model_id='50'", "spinenet.model_id '50' is unknown; valid: 49S, 49, 96, 143, 190"),
    ("retinanet_parser.output_size=[600,600]", r"multiples of 2\*\*max_level = 128 \(e.g. \[640, 640\]\)"),
    ("train.learning_rate.learning_rate_steps=[10]", "same length"),
    ("train.learning_rate.learning_rate_steps=[20,10]", "strictly increasing"),
    ("retinanet_parser.aug_scale_min=3.0", "aug_scale_min"),
    ("batch_norm_activation.activation='gelu'", "activation 'gelu' is unknown; valid: relu, swish"),
    ("postprocess.nms_version='v3'", "valid: v1, v2, batched"),
    ("architecture.convention='detectron'", "valid: tpu, model_garden"),
    ("architecture.backbone='resnet'", "architecture.backbone 'resnet' is unknown; valid: spinenet"),
])
def test_validation_errors(override: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        load_config(overrides=[override])


def test_validation_lists_every_problem() -> None:
    with pytest.raises(ConfigError) as e:
        config_from_dict({"architecture": {"num_classes": 1}, "postprocess": {"nms_version": "v9"}})
    assert "num_classes" in str(e.value) and "nms_version" in str(e.value)


def test_model_garden_preset_and_user_values_win(tmp_path: Path) -> None:
    cfg = load_config(yaml_path("49S"), overrides=["architecture.convention=model_garden"])
    bn = cfg.batch_norm_activation
    assert (bn.batch_norm_momentum, bn.batch_norm_epsilon) == (0.99, 1e-3)
    assert cfg.anchor.aspect_ratios == [0.5, 1.0, 2.0] and cfg.postprocess.nms_version == "v2"
    assert cfg.anchor.anchor_size == 3.0 and bn.activation == "swish"  # the YAML is still applied
    # The convention can come from the config file; explicit user values beat the preset at every layer.
    (tmp_path / "mg.yaml").write_text(
        "architecture: {convention: model_garden}\nbatch_norm_activation: {batch_norm_epsilon: 1e-4}\n")
    cfg = load_config(tmp_path / "mg.yaml", params_override="{postprocess: {nms_version: v1}}",
                      overrides=["anchor.aspect_ratios=[1.0, 2.0, 0.5]"])
    assert cfg.architecture.convention == "model_garden"
    assert cfg.batch_norm_activation.batch_norm_epsilon == 1e-4  # user's
    assert cfg.batch_norm_activation.batch_norm_momentum == 0.99  # preset's
    assert cfg.postprocess.nms_version == "v1" and cfg.anchor.aspect_ratios == [1.0, 2.0, 0.5]
    # Every preset only names real keys.
    for preset in CONVENTION_PRESETS.values():
        merge_dicts(config_to_dict(default_config()), preset)


def test_round_trip() -> None:
    cfg = load_config(yaml_path("190"), params_override=SEED_OVERRIDE,
                      overrides=["architecture.convention=model_garden"])
    d = config_to_dict(cfg)
    assert json.loads(json.dumps(d)) == d
    assert config_from_dict(d) == cfg
    assert config_from_dict(yaml.safe_load(dump_yaml(cfg))) == cfg
    assert isinstance(cfg, ExperimentConfig)


def test_dumped_full_config_loads_as_config_file(tmp_path: Path) -> None:
    # A fully resolved dump (as the reference saves params.yaml) loads back unchanged.
    cfg = load_config(yaml_path("96"))
    (tmp_path / "params.yaml").write_text(dump_yaml(cfg))
    assert load_config(tmp_path / "params.yaml") == cfg


def test_missing_config_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(missing)


def test_merge_dicts_strict_and_pure() -> None:
    base = {"a": {"b": 1, "c": [1]}, "d": 2}
    out = merge_dicts(base, {"a": {"c": [2, 3]}})
    assert out == {"a": {"b": 1, "c": [2, 3]}, "d": 2} and base["a"]["c"] == [1]
    with pytest.raises(ConfigError, match="unknown config key 'a.x'; valid keys under 'a': b, c"):
        merge_dicts(base, {"a": {"x": 1}})
    with pytest.raises(ConfigError, match="section 'a' expects a mapping"):
        merge_dicts(base, {"a": 3})


def test_coco_label_map() -> None:
    lines = LABEL_MAP.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 80
    ids = [int(line.split(":", 1)[0]) for line in lines]
    assert ids == sorted(ids) and ids[0] == 1 and ids[-1] == 90
    assert set(range(1, 91)) - set(ids) == {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
    names = dict(line.split(":", 1) for line in lines)
    assert (names["1"], names["10"], names["13"], names["90"]) == ("person", "traffic light", "stop sign",
                                                                   "toothbrush")
