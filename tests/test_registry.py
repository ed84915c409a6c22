"""The registry: names, metadata checked against the built models, overrides, and errors."""

import pytest

from spinenet import create_model, get_config, get_model_info, list_models
from spinenet.registry import normalize_name


def test_list_models_has_the_five_variants():
    assert list_models() == ["retinanet_spinenet49s", "retinanet_spinenet49", "retinanet_spinenet96",
                             "retinanet_spinenet143", "retinanet_spinenet190"]


@pytest.mark.parametrize("name", ["retinanet_spinenet49s", "retinanet_spinenet49", "retinanet_spinenet96"])
def test_metadata_matches_the_built_model(name):
    info = get_model_info(name)
    model = create_model(name)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == info.num_params
    cfg = get_config(name)
    assert cfg.spinenet.model_id == info.model_id
    assert cfg.retinanet_parser.output_size == [info.input_size, info.input_size]


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
