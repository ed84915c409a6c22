"""msame's remaining flags on ``spinenet infer`` (spellings from Ascend/tools msame/src/main.cpp): each works or
refuses in one line, before any output folder is made."""

import json
import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from spinenet.cli import main
from spinenet.deploy.msame_flags import MsameOptions, parse_bool, resolve_device

SHAPE = [1, 8, 8, 3]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Placeholder uint8 [1, 8, 8, 3] -> out0 = float(x) * 2 (float [1, 8, 8, 3]), out1 = its sum over H (float
    [1, 8, 3]): two static outputs of known sizes (768 and 96 bytes)."""
    folder = tmp_path_factory.mktemp("tiny")
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    nodes = [helper.make_node("Cast", ["Placeholder"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["f", "two"], ["out0"]),
             helper.make_node("ReduceSum", ["out0", "axes"], ["out1"], keepdims=0)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("Placeholder", TensorProto.UINT8, SHAPE)],
                              [helper.make_tensor_value_info("out0", TensorProto.FLOAT, SHAPE),
                               helper.make_tensor_value_info("out1", TensorProto.FLOAT, [1, 8, 3])], [two, axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, folder / "tiny.onnx")
    bins = folder / "bins"
    bins.mkdir()
    for i in range(2):
        np.full(SHAPE, i + 1, np.uint8).tofile(bins / f"{i:05d}.bin")
    return folder / "tiny.onnx", bins


def infer(tiny, out, *flags):
    model, bins = tiny
    return main(["infer", "--model", str(model), "--input", str(bins), "--output", str(out), "--quiet", *flags])


def refused(tiny, out, capsys, *flags) -> str:
    """The last stderr line of a refused run (argparse's exit 2 or spinenet's return 1)."""
    try:
        assert infer(tiny, out, *flags) == 1
    except SystemExit as e:
        assert e.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_device_ids(tiny, tmp_path, capsys):
    assert resolve_device("cpu", "onnxruntime") == ("cpu", None)
    assert resolve_device("cuda:1", "onnxruntime") == ("cuda:1", None)
    with pytest.raises(ValueError, match="device id must be in 0..255"):
        resolve_device("256", "onnxruntime")
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        assert infer(tiny, tmp_path / "o", "--device", "0") == 0
        assert "msame's first NPU is this machine's CPU" in capsys.readouterr().out
        assert "no device 3 here" in refused(tiny, tmp_path / "o2", capsys, "--device", "3")
        assert not (tmp_path / "o2").exists()


def test_debug_prints_the_model_description(tiny, tmp_path, capsys):
    assert infer(tiny, tmp_path / "o", "--debug", "true") == 0
    out = capsys.readouterr().out
    assert "input[0] Placeholder: uint8 [1, 8, 8, 3] (192 bytes)" in out
    assert "output[0] out0: float [1, 8, 8, 3]" in out and "output[1] out1: float [1, 8, 3]" in out


def test_booleans_as_msame_and_ais_bench_spell_them(tiny, tmp_path, capsys):
    assert [parse_bool(v) for v in ("true", "false", "1", "0", "True")] == [True, False, True, False, True]
    assert "expected true or false, got 'maybe'" in refused(tiny, tmp_path / "o", capsys, "--debug", "maybe")


def test_profiler_writes_an_onnxruntime_trace(tiny, tmp_path, capsys):
    assert infer(tiny, tmp_path / "o", "--profiler", "true") == 0
    (trace,) = (tmp_path / "o" / "profiler").glob("*.json")
    events = json.loads(trace.read_text())
    assert any(e.get("name", "").endswith("kernel_time") for e in events)  # per-node timings
    run = next(p for p in (tmp_path / "o").iterdir() if p.name != "profiler")
    assert json.loads((run / "summary.json").read_text())["msame_flags"] == {"profiler": True}


def test_dump_saves_every_node_output(tiny, tmp_path):
    assert infer(tiny, tmp_path / "o", "--dump", "true") == 0
    (run_dump,) = (tmp_path / "o" / "dump").iterdir()
    for i in range(2):
        saved = {p.stem: np.load(p) for p in (run_dump / f"{i:05d}").glob("*.npy")}
        assert set(saved) == {"f", "out0", "out1"}
        np.testing.assert_array_equal(saved["f"], np.full(SHAPE, i + 1, np.float32))
        np.testing.assert_array_equal(saved["out1"], np.full([1, 8, 3], 16.0 * (i + 1), np.float32))


@pytest.mark.parametrize("flags, message", [
    (["--profiler", "true", "--dump", "true"], "--profiler and --dump can not both be true"),
    (["--dymBatch", "1", "--dymHW", "8,8"], "cannot be set at the same time"),
    (["--dymBatch", "4"], r"the model is static \(Placeholder \[1, 8, 8, 3\]"),
    (["--dymBatch", "4096"], "must be in 1..2048"),
    (["--dymHW", "16,16"], r"static \(Placeholder \[1, 8, 8, 3\].*--input_image_size 16,16"),
    (["--dymHW", "16"], "expected h,w"),
    (["--dymDims", "Placeholder:1,16,16,3"], r"static \(Placeholder \[1, 8, 8, 3\]"),
    (["--dymShape", "image:1,8,8,3"], "the model has one input, Placeholder"),
    (["--dymShape", "Placeholder"], "expected name:d1,d2"),
    (["--outputSize", "768"], "gives 1 size"),
    (["--outputSize", "768,95"], "--outputSize 95 for output out1 is smaller than its 96 bytes"),
    (["--dump", "true", "--backend", "openvino"], "use --backend onnxruntime"),
])
def test_refusals_are_one_line_and_write_nothing(tiny, tmp_path, capsys, flags, message):
    err = refused(tiny, tmp_path / "o", capsys, *flags)
    assert err.startswith("spinenet infer: error:")
    assert re.search(message, err), err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flags", [["--dymBatch", "1"], ["--dymHW", "8,8"], ["--dymDims", "Placeholder:1,8,8,3"],
                                   ["--dymShape", "Placeholder:1,8,8,3"], ["--outputSize", "768,96"]])
def test_values_matching_the_static_graph_run(tiny, tmp_path, capsys, flags):
    assert infer(tiny, tmp_path / "o", *flags) == 0
    assert f"[INFO] {flags[0]}" in capsys.readouterr().out
    (run,) = (tmp_path / "o").iterdir()
    assert len(list(run.glob("*_output_*.txt"))) == 4


def test_options_dataclass_checks():
    MsameOptions(dymBatch=2).check()
    with pytest.raises(ValueError, match="cannot be set at the same time"):
        MsameOptions(dymDims="a:1", dymShape="a:1").check()


def test_device_id_is_a_gpu_where_the_runtime_has_cuda(monkeypatch):
    import spinenet.deploy.msame_flags as flags

    monkeypatch.setattr(flags, "_has_cuda", lambda backend: True)
    assert resolve_device("2", "torch") == ("cuda:2", None)
    assert resolve_device("0", "onnxruntime") == ("cuda:0", None)
