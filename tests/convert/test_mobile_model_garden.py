"""Model Garden SpineNet-Mobile import against tf-models-official's own outputs, replayed from a recording.

``tests/fixtures/model_garden_mobile_tiny/`` (see its README) was made by ``tools/model_garden_mobile_fixture.py``:
Model Garden's ``spinenet_mobile`` backbone and separable RetinaNet head at reduced widths (all 16 blocks, every
resampling path, hard_swish with hard_sigmoid SE gates), informative weights, a real ``tf.train.Checkpoint``, and
TF's raw maps, anchors and detections for two 128x128 inputs. No TensorFlow is needed here.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from spinenet.convert.mobile_map import infer_model_garden_mobile, map_model_garden_mobile
from spinenet.convert.model_garden import ConversionError, convert_model_garden, detect_layout, object_graph_names
from spinenet.convert.parity import check_against_reference, model_for_recording
from spinenet.convert.tf_checkpoint import TFCheckpointReader

TINY = Path(__file__).resolve().parents[1] / "fixtures" / "model_garden_mobile_tiny"


@pytest.fixture(scope="module")
def recording():
    return json.loads((TINY / "variables.json").read_text())


@pytest.fixture(scope="module")
def reader():
    return TFCheckpointReader(TINY / "ckpt")


@pytest.fixture(scope="module")
def tiny(recording, reader):
    model = model_for_recording(recording["metadata"])
    model.load_state_dict(map_model_garden_mobile(reader, object_graph_names(reader), model), strict=True)
    return model, dict(np.load(TINY / "reference.npz"))


def test_raw_maps_match_model_garden(tiny):
    model, ref = tiny
    report = check_against_reference(model, ref)
    assert report.max_relative_map_diff <= 2.5e-4, report.table()
    assert max(m.cls_scale for m in report.maps) > 2.0  # informative recording


def test_detections_match_model_garden(tiny):
    model, ref = tiny
    report = check_against_reference(model, ref)
    assert report.detections_agree, report.table()
    assert all(d.matched >= 90 for d in report.detections)
    assert max(d.max_box_diff for d in report.detections) <= 0.5


def test_anchors_keep_model_gardens_aspect_ratio_order(tiny):
    model, ref = tiny
    theirs = np.concatenate([ref[f"anchors_{lvl}"].reshape(-1, 4) for lvl in range(3, 8)])
    np.testing.assert_allclose(model.anchors((128, 128)).numpy(), theirs, atol=1e-4)


def test_every_tensor_is_used_exactly_once(tiny, reader):
    model, _ = tiny
    provenance: dict[str, str] = {}
    map_model_garden_mobile(reader, object_graph_names(reader), model, provenance)
    assert len(provenance) == sum(1 for k in reader.keys() if k.startswith("model/"))
    # the recorded backbone layers, in Model Garden's topological order, are all mapped
    layers = {f"model/_backbone/{n}" for n, _, _ in json.loads((TINY / "variables.json").read_text())[
        "backbone_layers"]}
    assert layers == {"/".join(v.split("/")[:3]) for v in provenance.values() if v.startswith("model/_backbone/")}


def test_shapes_tell_the_family_but_no_published_variant(reader, tmp_path):
    assert detect_layout(reader) == "model-garden"
    arch = infer_model_garden_mobile(reader, object_graph_names(reader))
    assert (arch["num_classes"], arch["num_anchors"], arch["head_num_filters"], arch["head_num_convs"]) == (5, 9, 8, 4)
    assert arch["candidates"] == []
    with pytest.raises(ConversionError, match="match no SpineNet-Mobile variant"):
        convert_model_garden(TINY / "ckpt", tmp_path / "x.pt")
    with pytest.raises(ConversionError, match="not a mobile variant"):
        convert_model_garden(TINY / "ckpt", tmp_path / "x.pt", model_id="96")
    assert not (tmp_path / "x.pt").exists()


class _Without:
    """The fixture's reader with one tensor removed (as a truncated or edited checkpoint)."""

    def __init__(self, reader, drop):
        self.reader, self.drop, self.prefix = reader, drop, reader.prefix

    def keys(self):
        return [k for k in self.reader.keys() if k != self.drop]

    def get_tensor(self, name):
        if name == self.drop:
            raise KeyError(name)
        return self.reader.get_tensor(name)


def test_a_missing_tensor_is_refused(tiny, reader):
    model, _ = tiny
    names = object_graph_names(reader)
    drop = next(k for k in reader.keys() if "_squeeze_excitation/_se_expand/bias" in k)
    with pytest.raises(ConversionError, match="has no _squeeze_excitation/_se_expand/bias"):
        map_model_garden_mobile(_Without(reader, drop), names, model)


class _With(_Without):
    """The fixture's reader with one tensor more inside a block (a checkpoint of another architecture)."""

    EXTRA = "model/_backbone/layer_with_weights-4/_conv3/kernel/.ATTRIBUTES/VARIABLE_VALUE"

    def keys(self):
        return [*self.reader.keys(), self.EXTRA]

    def get_tensor(self, name):
        return np.zeros((1, 1, 6, 6), np.float32) if name == self.EXTRA else self.reader.get_tensor(name)


def test_an_unknown_tensor_is_refused(tiny, reader):
    model, _ = tiny
    names = {**object_graph_names(reader), _With.EXTRA: "inverted_bottleneck_block_1/conv2d_9/kernel"}
    with pytest.raises(ConversionError, match="1 tensors of the checkpoint have no place.*_conv3/kernel"):
        map_model_garden_mobile(_With(reader, None), names, model)


class _WithSlot(_With):
    """A training checkpoint: an optimizer slot under a model variable (training state, skipped)."""

    EXTRA = ("model/_backbone/layer_with_weights-4/_conv0/kernel/.OPTIMIZER_SLOT/optimizer/momentum/"
             ".ATTRIBUTES/VARIABLE_VALUE")


def test_optimizer_slots_are_skipped(tiny, reader):
    model, _ = tiny
    state = map_model_garden_mobile(_WithSlot(reader, None), object_graph_names(reader), model)
    assert state.keys() == model.state_dict().keys()
