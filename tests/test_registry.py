"""The registry: names, metadata checked against the built models, overrides, and errors."""

import pytest

from spinenet import create_model, get_config, get_model_info, list_models
from spinenet.registry import normalize_name

MOBILE = ["retinanet_spinenet49_mobile", "retinanet_spinenet49s_mobile", "retinanet_spinenet49xs_mobile"]


def test_list_models_has_the_eight_variants():
    assert list_models() == ["retinanet_spinenet49s", "retinanet_spinenet49", "retinanet_spinenet96",
                             "retinanet_spinenet143", "retinanet_spinenet190", *MOBILE]


@pytest.mark.parametrize("name", ["retinanet_spinenet49s", "retinanet_spinenet49", "retinanet_spinenet96", *MOBILE])
def test_metadata_matches_the_built_model(name):
    info = get_model_info(name)
    model = create_model(name)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == info.num_params
    cfg = get_config(name)
    section = cfg.spinenet_mbconv if name in MOBILE else cfg.spinenet
    assert section.model_id == info.model_id
    assert cfg.retinanet_parser.output_size == [info.input_size, info.input_size]


# Model Garden's YAMLs (tensorflow/models official/vision/configs/experiments/retinanet/
# coco_spinenet{49,49s,49xs}_mobile_tpu.yaml): input size, head width, activation; MODEL_GARDEN.md for 49's AP.
@pytest.mark.parametrize("name,size,head_filters,activation,ap", [
    ("retinanet_spinenet49_mobile", 384, 48, "hard_swish", 28.1),
    ("retinanet_spinenet49s_mobile", 384, 40, "hard_swish", 23.5),
    ("retinanet_spinenet49xs_mobile", 256, 24, "swish", None)])
def test_mobile_recipes_are_model_gardens(name, size, head_filters, activation, ap):
    cfg, info = get_config(name), get_model_info(name)
    assert (info.input_size, info.published_ap) == (size, ap)
    assert cfg.architecture.backbone == "spinenet_mbconv" and cfg.architecture.convention == "model_garden"
    assert cfg.retinanet_head.num_filters == head_filters and cfg.retinanet_head.use_separable_conv
    assert cfg.batch_norm_activation.activation == activation
    assert (cfg.batch_norm_activation.batch_norm_momentum, cfg.batch_norm_activation.batch_norm_epsilon) == (
        0.99, 1e-3)
    assert cfg.anchor.aspect_ratios == [0.5, 1.0, 2.0] and cfg.anchor.anchor_size == 3.0
    assert cfg.spinenet_mbconv.init_drop_connect_rate == 0.2 and cfg.train.l2_weight_decay == 3e-5
    lr = cfg.train.learning_rate
    assert (lr.init_learning_rate, lr.learning_rate_levels, lr.learning_rate_steps, cfg.train.total_steps) == (
        0.32, [0.032, 0.0032], [263340, 272580], 277200)


def test_mobile_overrides_reach_the_mbconv_section():
    model = create_model("spinenet49xs_mobile", num_classes=5, init_drop_connect_rate=0.1, convention="tpu")
    assert model.backbone.blocks[15].group[0].drop.rate == pytest.approx(0.1)
    assert type(model.backbone.blocks[0].group[0].se.gate).__name__ == "Sigmoid"
    assert model.head.class_net.predict.out_channels == 5 * 9


def test_create_model_overrides():
    model = create_model("retinanet_spinenet49s", num_classes=11, activation="relu", convention="model_garden")
    assert model.head.class_net.predict.out_channels == 11 * 9
    assert model.params.convention == "model_garden"
    assert model.params.anchor.aspect_ratios == (0.5, 1.0, 2.0)  # the Model Garden preset
    assert model.backbone.stem.norm.eps == pytest.approx(1e-3)
    assert type(model.backbone.stem.act).__name__ == "ReLU"


def test_defaults_follow_the_tf1_tpu_conventions():
    model = create_model("retinanet_spinenet49s")
    assert model.params.convention == "tpu"
    assert model.backbone.stem.norm.eps == pytest.approx(1e-4)
    assert model.backbone.stem.norm.momentum == pytest.approx(0.003)
    assert model.params.anchor.aspect_ratios == (1.0, 2.0, 0.5)
    assert model.params.anchor.anchor_size == 3.0


def test_name_aliases():
    assert normalize_name("spinenet49S") == "retinanet_spinenet49s"
    assert normalize_name("49S") == "retinanet_spinenet49s"
    assert get_model_info("SpineNet-190").model_id == "190"


def test_unknown_variant_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown model 'spinenet50'.*retinanet_spinenet49s.*retinanet_spinenet190"):
        create_model("spinenet50")


def test_unknown_override_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown override 'colour'.*num_classes"):
        create_model("retinanet_spinenet49s", colour="red")
