"""benchmarks/node_profile.py runs on two small exports with both backends and prints a row per model."""

import importlib.util
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "node_profile.py"


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    from spinenet.deploy.export import export_onnx
    from spinenet.registry import create_model

    torch.manual_seed(0)
    model = create_model("retinanet_spinenet49s", num_classes=3).eval()
    out = tmp_path_factory.mktemp("node_profile")
    return [export_onnx(model, out / f"{alg}.onnx", image_size=(128, 128), conv_algorithm=alg, winograd_min_pixels=1)
            for alg in ("winograd", "direct")]


def _main(argv):
    spec = importlib.util.spec_from_file_location("node_profile", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_one_row_per_model_with_its_sections(exports, backend, capsys):
    assert _main([str(p) for p in exports] + ["--backend", backend, "--rounds", "1", "--threads", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in lines if line.endswith(tuple("0123456789"))
            and line.split()[0].endswith(".onnx")}
    assert set(rows) == {"winograd.onnx", "direct.onnx"}
    total, ratio, backbone, head, other = (float(v) for v in rows["winograd.onnx"][:5])
    assert ratio == 1.0 and backbone > 0 and head > 0 and other > 0
    assert total == pytest.approx(backbone + head + other, abs=0.2)
    assert float(rows["direct.onnx"][1]) == pytest.approx(float(rows["direct.onnx"][0]) / total, abs=2e-3)


def test_a_missing_file_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        _main([str(tmp_path / "nope.onnx")])
    assert "nope.onnx: no such file" in capsys.readouterr().err
