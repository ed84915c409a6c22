"""fp16 as ATC compiles it (spinenet.deploy.precision): the rounding emulation, the --keep_dtype file and the
export flag, the demo detector's fp16 detections against fp32, and the large-box NMS failure that --keep_dtype
fixes."""

import argparse
import importlib.util
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from spinenet.deploy.cli import add_export_parser
from spinenet.deploy.precision import (
    ATC_PRECISION,
    emulate_fp16,
    export_postprocess_alone,
    postprocess_nodes,
    read_keep_dtype,
    write_keep_dtype,
)

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "demo" / "shapes49s_fp16.pt"


def _run(proto: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def _chain(names=("square", "scale")) -> onnx.ModelProto:
    """y = (x * x) * c: x * x overflows fp16 (max 65504) for |x| > 256, c = 1/300 brings it back."""
    nodes = [helper.make_node("Mul", ["x", "x"], ["sq"], name=names[0]),
             helper.make_node("Mul", ["sq", "c"], ["y"], name=names[1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
                              [numpy_helper.from_array(np.array([1 / 300, 1 / 300], np.float32), "c")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_emulation_rounds_every_node_and_keeps_the_named_ones():
    x = np.array([300.0, 1.001], np.float32)
    [fp32] = _run(_chain(), {"x": x})
    [fp16] = _run(emulate_fp16(_chain()), {"x": x})
    [kept] = _run(emulate_fp16(_chain(), keep_fp32=["square", "scale"]), {"x": x})
    # In fp16 300*300 = 90000 overflows to inf; 1.001 is 1.0009766 and its square rounds to 1.001953.
    half = np.float16
    expected = np.array([np.inf, float(half(float(half(half(1.001) * half(1.001))) * float(half(1 / 300))))])
    assert np.isinf(fp16[0]) and fp16[1] == pytest.approx(expected[1], abs=0)
    np.testing.assert_allclose(fp32, [300.0, 1.002001 / 300], rtol=1e-6)
    np.testing.assert_array_equal(kept, fp32)  # kept nodes read the original constant and round nothing


def test_emulation_keeps_io_dtypes_and_rejects_unknown_names():
    proto = emulate_fp16(_chain())
    assert [i.type.tensor_type.elem_type for i in proto.graph.input] == [TensorProto.FLOAT]
    assert [o.type.tensor_type.elem_type for o in proto.graph.output] == [TensorProto.FLOAT]
    with pytest.raises(ValueError, match="lacks"):
        emulate_fp16(_chain(), keep_fp32=["no_such_node"])


def test_keep_dtype_file_follows_atc_format(tmp_path):
    names = ["/TopK", "Loop_1354", "/model/head/Conv"]
    path = write_keep_dtype(names, tmp_path / "model.keep_dtype.cfg")
    lines = path.read_text().splitlines()
    assert lines == names  # one operator name per line, nothing else (ATC_PRECISION["keep_dtype_line"])
    assert all(re.match(ATC_PRECISION["keep_dtype_line"], ln) for ln in lines)
    assert read_keep_dtype(path) == names
    assert ATC_PRECISION["precision_mode_default"] in ATC_PRECISION["precision_mode_values"]
    with pytest.raises(ValueError, match="one name per line"):
        write_keep_dtype(["a b"], tmp_path / "bad.cfg")
    with pytest.raises(ValueError, match="letters, digits"):
        write_keep_dtype(["a"], tmp_path / "bad name.cfg")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keep_dtype.cfg"]  # nothing half-written


def _export_args(*argv):
    parser = argparse.ArgumentParser()
    add_export_parser(parser.add_subparsers())
    return parser.parse_args(["export", *argv])


@pytest.fixture(scope="module")
def demo_export(tmp_path_factory):
    """The demo detector's direct-convolution export at 128x128 with its --keep_dtype file, via the CLI."""
    out = tmp_path_factory.mktemp("fp16")
    args = _export_args("--checkpoint", str(DEMO), "--output", str(out / "model.onnx"), "--input_image_size", "128",
                        "--conv_algorithm", "direct", "--keep_dtype", str(out / "model.keep_dtype.cfg"))
    assert args.func(args) == 0
    return out / "model.onnx", out / "model.keep_dtype.cfg"


def test_export_writes_the_post_processing_keep_list(demo_export):
    path, cfg = demo_export
    proto = onnx.load(path)
    by_name = {n.name: n for n in proto.graph.node}
    names = read_keep_dtype(cfg)
    assert all(n.name for n in proto.graph.node)  # every node named, so ATC can find them
    assert names == postprocess_nodes(proto)
    kinds = {by_name[n].op_type for n in names}
    assert {"TopK", "Exp", "Loop", "Div"} <= kinds  # score top-k, box decoding, NMS loop, IoU
    assert "Conv" not in kinds and "Constant" not in kinds
    heads = [n.name for n in proto.graph.node if n.op_type == "Conv"]
    assert not set(heads) & set(names)


def test_export_refuses_keep_dtype_without_post_processing(tmp_path):
    args = _export_args("--checkpoint", str(DEMO), "--output", str(tmp_path / "raw.onnx"), "--input_image_size",
                        "128", "--postprocess", "none", "--keep_dtype", str(tmp_path / "k.cfg"))
    with pytest.raises(ValueError, match="no post-processing nodes"):
        args.func(args)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def held_out_bins(tmp_path_factory):
    from spinenet.data.synthetic import make_synthetic_dataset
    from spinenet.deploy.image2bin import image2bin

    root = tmp_path_factory.mktemp("held_out")
    make_synthetic_dataset(root, num_train=0, num_val=6, image_size=128, seed=0, size_range=(0.15, 0.6),
                           progress=False)
    image2bin(str(root / "val" / "*.jpg"), root / "bins", 128, progress=False)
    return [np.fromfile(p, np.uint8).reshape(1, 128, 128, 3) for p in sorted((root / "bins").glob("*.bin"))]


def test_demo_detector_in_fp16_stays_close_to_fp32(demo_export, held_out_bins):
    """Stated tolerance: every fp32 detection scoring >= 0.3 has an fp16 twin (same class, |Δscore| <= 0.01,
    every coordinate within 0.5 px at 128x128) and vice versa, with and without the keep list."""
    path, cfg = demo_export
    proto = onnx.load(path)
    variants = {"fp16": emulate_fp16(proto), "fp16 keep": emulate_fp16(proto, read_keep_dtype(cfg))}
    sessions = {k: ort.InferenceSession(v.SerializeToString(), providers=["CPUExecutionProvider"])
                for k, v in variants.items()}
    fp32 = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    strong = changed = 0
    for x in held_out_bins:
        _, rb, rc, rs, _ = fp32.run(None, {"Placeholder": x})
        for name, sess in sessions.items():
            _, b, c, s, _ = sess.run(None, {"Placeholder": x})
            changed += int(not np.array_equal(s, rs))
            for (b1, c1, s1), (b2, c2, s2) in (((rb, rc, rs), (b, c, s)), ((b, c, s), (rb, rc, rs))):
                for j in np.flatnonzero(s1[0] >= 0.3):
                    twin = (c2[0] == c1[0, j]) & (np.abs(s2[0] - s1[0, j]) <= 0.01) & \
                           (np.abs(b2[0] - b1[0, j]).max(axis=1) <= 0.5)
                    assert twin.any(), f"{name}: detection {j} (class {c1[0, j]}, score {s1[0, j]:.3f}) has no twin"
                    strong += 1
    assert strong >= 2 * 2 * len(held_out_bins)  # the demo detector finds objects in every image
    assert changed  # the emulation does round: scores differ from fp32 somewhere


def _large_box_maps():
    spec = importlib.util.spec_from_file_location("fp16_accuracy", ROOT / "benchmarks" / "fp16_accuracy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.large_box_maps


def test_fp16_nms_fails_on_large_boxes_and_keep_dtype_fixes_it(tmp_path):
    """Box areas above 65504 overflow fp16, so IoU = inf/inf and NMS keeps overlapping boxes; kept fp32, the
    post-processing gives the eager reference's detections again."""
    from spinenet.engine.checkpoint import load_model
    from spinenet.modeling.postprocess import generate_detections
    from spinenet.modeling.retinanet import default_image_info

    size = 384  # the smallest input whose clipped level-7 anchors reach an area of 256 x 256 > 65504
    model, _ = load_model(DEMO)
    proto = onnx.load(export_postprocess_alone(model, tmp_path / "post.onnx", (size, size)))
    maps = _large_box_maps()(model, size)
    levels = range(3, 8)
    ref = generate_detections({lvl: torch.from_numpy(maps[f"cls_{lvl}"]) for lvl in levels},
                              {lvl: torch.from_numpy(maps[f"box_{lvl}"]) for lvl in levels},
                              model.anchors((size, size)), default_image_info(1, size, size), model.params.postprocess)
    n = int(ref["num_detections"][0])
    assert 1 < n < 9  # NMS suppresses some of the nine overlapping boxes
    everything = [node.name for node in proto.graph.node if node.op_type != "Constant"]
    fp32 = _run(proto, maps)
    fp16 = _run(emulate_fp16(proto), maps)
    kept = _run(emulate_fp16(proto, everything), maps)
    assert int(fp32[0][0]) == n and int(kept[0][0]) == n
    np.testing.assert_allclose(kept[1][0, :n], ref["detection_boxes"][0, :n].numpy(), atol=0.01)
    assert int(fp16[0][0]) > n  # overlapping large boxes survive NMS in fp16
