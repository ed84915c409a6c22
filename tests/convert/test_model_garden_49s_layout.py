"""The converter's layer mapping against the *full* SpineNet-49S Model Garden checkpoint layout.

`tests/fixtures/model_garden_49S_variables.json` (written by `tools/model_garden_fixture.py --model_id 49S`)
lists all 831 entries of a real 49S checkpoint with their shapes and Keras full names, plus the role of each
`layer_with_weights-N` as read off the live Keras layer objects. The converter derives its mapping from the full
names alone; here it must agree with those roles for every backbone tensor.
"""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from spinenet.convert.model_garden import infer_architecture, map_weights
from spinenet.registry import create_model

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "model_garden_49S_variables.json"


class NameListReader:
    """Stands in for TFCheckpointReader: the real names and shapes, zeros for values."""

    def __init__(self, variables):
        self.shapes = {v[0]: tuple(v[1]) for v in variables}
        self.prefix = FIXTURE.name

    def keys(self):
        return sorted(self.shapes)

    def __contains__(self, key):
        return key in self.shapes

    def shape(self, key):
        return self.shapes[key]

    def get_tensor(self, key):
        return np.zeros(self.shapes[key], dtype=np.float32)


def module_of_role(role: str) -> str:
    """Keras role (as the fixture script names them) -> our module path."""
    subs = [
        (r"stem/conv", "backbone.stem.conv"), (r"stem/bn", "backbone.stem.norm"),
        (r"stem_block_(\d)/(\d+)", lambda m: f"backbone.stem_blocks.{int(m[1]) - 1}.{m[2]}"),
        (r"block(\d+)/resample(\d)/(conv|bn)(1x1|3x3s2|_out)",
         lambda m: "backbone.blocks.{}.resample.{}.{}.{}".format(
             m[1], m[2], {"1x1": "reduce", "3x3s2": "down", "_out": "expand"}[m[4]],
             "conv" if m[3] == "conv" else "norm")),
        (r"block(\d+)/group/(\d+)", lambda m: f"backbone.blocks.{m[1]}.group.{m[2]}"),
        (r"endpoint(\d)/(conv|bn)", lambda m: f"backbone.endpoints.{m[1]}.{'conv' if m[2] == 'conv' else 'norm'}"),
    ]
    for pattern, repl in subs:
        m = re.fullmatch(pattern, role)
        if m:
            return repl if isinstance(repl, str) else repl(m)
    raise AssertionError(f"unknown role {role}")


@pytest.fixture(scope="module")
def layout():
    data = json.loads(FIXTURE.read_text())
    assert len(data["variables"]) == 831
    names = {v[0]: v[3] for v in data["variables"] if len(v) > 3 and v[3]}
    return data, NameListReader(data["variables"]), names


def test_variant_and_head_are_read_off_the_shapes(layout):
    _, reader, names = layout
    arch = infer_architecture(reader, names)
    assert arch["candidates"] == ["49S"]
    assert (arch["num_classes"], arch["head_num_filters"], arch["head_num_convs"]) == (91, 128, 4)


def test_every_backbone_tensor_comes_from_the_layer_keras_says(layout):
    data, reader, names = layout
    with torch.device("meta"):
        model = create_model("retinanet_spinenet49s", convention="model_garden")
    provenance: dict[str, str] = {}
    state = map_weights(reader, names, model, provenance)
    assert len([k for k in state if not k.endswith("num_batches_tracked")]) == sum(
        1 for v in data["variables"] if v[0].startswith("model/"))
    checked = 0
    for ours, key in provenance.items():
        m = re.match(r"model/_backbone/(layer_with_weights-\d+)", key)
        if not m:
            continue
        expected = module_of_role(data["backbone_layer_map"][m[1]])
        assert ours.startswith(expected + "."), f"{ours} <- {key} (Keras role {expected})"
        checked += 1
    assert checked > 600  # all 49S backbone tensors
