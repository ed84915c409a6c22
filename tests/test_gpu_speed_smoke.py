"""benchmarks/gpu_speed.py runs end to end on the CPU (--smoke) and writes every row and ratio the GPU run needs.

The GPU benchmark itself is for a machine with a GPU; this only checks its plumbing, so that the one call a GPU
session gets is not spent on a typo.
"""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_speed.py"

pytest.importorskip("torchvision")


def _load():
    spec = importlib.util.spec_from_file_location("gpu_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_speed") / "tmp.json"
    threads = torch.get_num_threads()
    try:
        status = _load().main(["--device", "cpu", "--smoke", "--threads", "1", "--iters", "1",
                               "--output", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert status == 0
    return json.loads(out.read_text())


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_smoke_run_has_every_row_with_positive_numbers(smoke):
    rows = smoke["rows"]
    errors = [r for r in rows if "error" in r]
    assert not errors, errors
    have = {(r["model"], r["what"]) for r in rows}
    for model in ("spinenet", "torchvision"):
        for what in ("forward", "end-to-end", "train"):
            assert (model, what) in have, (model, what)
    assert {r["batch"] for r in rows if r["what"] != "train"} == {1, 2}
    assert {r["precision"] for r in rows if r["what"] != "train"} == {"fp32", "bf16"}
    for r in rows:
        for key in ("ms_median", "ms_p90", "images_per_s", "peak_mib"):
            assert _positive(r[key]), (key, r)
    # Both detectors' heads were made informative, so NMS has candidates to work on and returns detections.
    for r in rows:
        if r["what"] == "end-to-end":
            assert r["detections_per_image"] > 0, r
    assert smoke["env"]["torch"] == torch.__version__


def test_smoke_run_computes_the_done_when_ratios(smoke):
    ratios = {r["name"]: r for r in smoke["ratios"]}
    names = " | ".join(ratios)
    for needle in ("end-to-end latency at batch 1", "forward throughput", "end-to-end throughput",
                   "training throughput"):
        assert needle in names, (needle, names)
    for r in smoke["ratios"]:
        assert _positive(r["value"]), r
        assert r["met"] in (True, False), r
        assert r["comparison"] in ("<=", ">=") and _positive(r["target"]), r
