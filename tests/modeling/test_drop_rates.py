"""Stochastic depth against the references: per-block drop rates of every variant, and the mask's statistics.

``tests/fixtures/tf1_training/drop_rates_{tf1,model_garden}.json`` were recorded by ``tools/drop_rate_reference.py``
from the reference codes themselves (the rate each block's drop connect / ``StochasticDepth`` is built with, in
creation order, each variant with its YAML's ``init_drop_connect_rate``). No TensorFlow is needed here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from spinenet.modeling.layers import DropConnect
from spinenet.modeling.spinenet import SCALING_MAP, SpineNet

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "tf1_training"


def _rates(model_id: str, init_rate: float, convention: str) -> list[float]:
    with torch.device("meta"):
        net = SpineNet(model_id, init_drop_connect_rate=init_rate, convention=convention)
    return [m.rate for m in net.modules() if isinstance(m, DropConnect) and m.rate > 0]


@pytest.mark.parametrize("model_id", ["49S", "49", "96", "143", "190"])
def test_drop_rates_match_tf1(model_id):
    ref = json.loads((FIXTURE / "drop_rates_tf1.json").read_text())["variants"][model_id]
    ours = _rates(model_id, ref["init_rate"], "tpu")
    assert len(ours) == len(ref["rates"]) == 15 * SCALING_MAP[model_id].block_repeats
    assert ours == pytest.approx(ref["rates"], rel=1e-12)
    assert ref["rates"][-1] == pytest.approx(ref["init_rate"])  # TF1 divides by its 15 blocks


@pytest.mark.parametrize("model_id", ["49S", "49", "96", "143", "190"])
def test_drop_rates_match_model_garden(model_id):
    """Model Garden builds 16 blocks (a level-2 output block, unused for levels 3-7) and divides by 16; ours
    builds the 15 that feed the outputs, with Model Garden's rates."""
    ref = json.loads((FIXTURE / "drop_rates_model_garden.json").read_text())["variants"][model_id]
    repeats = SCALING_MAP[model_id].block_repeats
    assert len(ref["rates"]) == 16 * repeats
    ours = _rates(model_id, ref["init_rate"], "model_garden")
    assert ours == pytest.approx(ref["rates"][:15 * repeats], rel=1e-6)  # Model Garden's rates are float32


def test_drop_connect_mask_statistics():
    """``nn_ops.drop_connect``: a per-sample Bernoulli(keep) mask, kept samples scaled by exactly 1/keep."""
    torch.manual_seed(0)
    rate, n = 0.2, 200_000
    x = torch.full((n, 2, 1, 1), 3.0)
    drop = DropConnect(rate).train()
    y = drop(x)
    kept = y[:, 0, 0, 0] != 0
    keep = 1.0 - rate
    sigma = math.sqrt(keep * rate / n)
    assert abs(kept.float().mean().item() - keep) < 5 * sigma
    assert torch.equal(y[kept], torch.full_like(y[kept], 3.0 / keep))
    assert torch.equal(y[:, 0], y[:, 1])  # one draw per sample, shared by its channels and pixels
    assert y.mean().item() == pytest.approx(3.0, abs=5 * 3.0 / keep * sigma)
    assert torch.equal(drop.eval()(x), x)
