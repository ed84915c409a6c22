"""Model Garden import against TensorFlow's own outputs, replayed from a committed recording.

`tests/fixtures/model_garden_tiny/` was made by `tools/model_garden_fixture.py --model_id tiny` with
tf-models-official 2.20: a real TF checkpoint of a width-reduced SpineNet RetinaNet (all 15 blocks, every
resampling path) with informative weights, plus TF's raw maps and detections for two 128x128 inputs.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from spinenet.convert.model_garden import (
    ConversionError,
    convert_model_garden,
    detect_layout,
    map_weights,
    object_graph_names,
)
from spinenet.convert.parity import check_against_reference, model_for_recording
from spinenet.convert.tf_checkpoint import TFCheckpointReader

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TINY = FIXTURES / "model_garden_tiny"


@pytest.fixture(scope="module")
def tiny():
    meta = json.loads((TINY / "variables.json").read_text())["metadata"]
    reader = TFCheckpointReader(TINY / "ckpt")
    model = model_for_recording(meta)
    model.load_state_dict(map_weights(reader, object_graph_names(reader), model), strict=True)
    return model, dict(np.load(TINY / "reference.npz"))


def test_raw_maps_match_tensorflow(tiny):
    model, ref = tiny
    report = check_against_reference(model, ref)
    print(report.table())
    assert report.max_map_diff <= 1e-3
    assert report.max_relative_map_diff <= 1e-4
    # the recording is informative: logits spread well away from the prior
    assert max(m.cls_scale for m in report.maps) > 2.0


def test_detections_match_tensorflow(tiny):
    model, ref = tiny
    report = check_against_reference(model, ref)
    assert report.detections_agree
    assert all(d.matched >= 90 for d in report.detections)  # 100 per image in the recording
    assert max(d.max_box_diff for d in report.detections) <= 0.5


def test_anchors_match_tensorflow(tiny):
    model, ref = tiny
    anchors = model.anchors((128, 128)).numpy()
    ours = np.concatenate([ref[f"anchors_{lvl}"].reshape(-1, 4) for lvl in range(3, 8)])
    np.testing.assert_allclose(anchors, ours, atol=1e-4)


def test_every_tensor_is_used_exactly_once(tiny):
    reader = TFCheckpointReader(TINY / "ckpt")
    model = model_for_recording(json.loads((TINY / "variables.json").read_text())["metadata"])
    state = map_weights(reader, object_graph_names(reader), model)
    tf_values = sum(1 for k in reader.keys() if k.startswith("model/"))
    ours = sum(1 for k in state if not k.endswith("num_batches_tracked"))
    assert ours == tf_values


def test_layout_detection():
    assert detect_layout(TFCheckpointReader(TINY / "ckpt")) == "model-garden"


def test_width_reduced_checkpoint_is_not_mistaken_for_a_registry_variant(tmp_path):
    with pytest.raises(ConversionError, match="match no SpineNet variant.*--model_id"):
        convert_model_garden(TINY / "ckpt", tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_forcing_another_variant_names_the_shape_mismatch(tmp_path):
    with pytest.raises(ConversionError, match="shape .* needs .*another variant"):
        convert_model_garden(TINY / "ckpt", tmp_path / "x.pt", model_id="49S")
    assert not (tmp_path / "x.pt").exists()


def test_truncated_data_file_names_the_file(tmp_path):
    for f in TINY.glob("ckpt.*"):
        shutil.copy(f, tmp_path / f.name)
    data = tmp_path / "ckpt.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:1000])
    with pytest.raises(ValueError, match="truncated"):
        convert_model_garden(tmp_path / "ckpt", tmp_path / "x.pt", model_id="49S")
    assert not (tmp_path / "x.pt").exists()
