"""int8 exports (spinenet export --quantize int8): detections close to fp32's, the layer groups, the recipe in the
metadata, the accuracy-aware back-off, and the refusals of the export's flags."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from spinenet.deploy import quantize_search
from spinenet.deploy.quantize import calibration_images, fold_shared_batchnorm, layer_groups, quantize_int8

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "demo" / "shapes49s_fp16.pt"  # the committed demo detector: trained, so its detections mean something
SIZE = 128


@pytest.fixture(scope="module")
def demo_exports(tmp_path_factory):
    """The demo detector's fp32 direct-convolution export at 128x128, its int8 export calibrated on 8 synthetic
    images of one seed, and 4 held-out images of another (letterboxed uint8)."""
    from spinenet.data.synthetic import make_synthetic_dataset
    from spinenet.deploy.export import export_onnx
    from spinenet.engine.checkpoint import load_model

    work = tmp_path_factory.mktemp("int8")
    for name, seed, n in (("calib", 1, 8), ("held", 0, 4)):
        make_synthetic_dataset(work / name, num_train=n, num_val=0, image_size=SIZE, seed=seed,
                               size_range=(0.15, 0.6), progress=False)
    model, _ = load_model(DEMO)
    fp32 = export_onnx(model, work / "fp32.onnx", image_size=(SIZE, SIZE), conv_algorithm="direct")
    calib = calibration_images(work / "calib" / "annotations" / "instances_train.json", work / "calib" / "train",
                               (SIZE, SIZE), 8)
    int8 = quantize_int8(fp32, work / "int8.onnx", calib, float_groups=["predictors"])  # checks the float path
    held = calibration_images(work / "held" / "annotations" / "instances_train.json", work / "held" / "train",
                              (SIZE, SIZE), 4)
    return {"fp32": fp32, "int8": int8, "held": held, "work": work}


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two yxyx boxes."""
    h = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    w = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = h * w
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


# The sessions run in a child process: OpenVINO 2026.4.1 running the int8 export inside the pytest process left its
# heap corrupted (a segfault in CPython's code quickening minutes later, in an unrelated test; 3 runs of 3), which a
# standalone script running the same sessions did not reproduce. Kept out of the test process until understood.
CHILD = """
import json, sys
import numpy as np
from spinenet.deploy.runtimes import open_session
fp32_path, int8_path, backend, held_path = sys.argv[1:5]
held = np.load(held_path)
fp32, int8 = open_session(fp32_path, backend, threads=1), open_session(int8_path, backend, threads=1)
keys = ("DetectionBoxes", "DetectionClasses", "DetectionScores")
pairs = [[{k: r[k].tolist() for k in keys} for r in (fp32.run(im[None]), int8.run(im[None]))] for im in held]
print(json.dumps(pairs))
"""


def _run_in_child(exports: dict, backend: str) -> list[tuple[dict, dict]]:
    """(fp32 outputs, int8 outputs) per held-out image, computed by ``backend`` in a child process."""
    held = exports["work"] / "held.npy"
    np.save(held, np.stack(exports["held"]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    r = subprocess.run([sys.executable, "-c", CHILD, str(exports["fp32"]), str(exports["int8"]), backend, str(held)],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, f"{backend} child exited {r.returncode}: {r.stderr[-2000:]}"
    return [({k: np.asarray(v) for k, v in a.items()}, {k: np.asarray(v) for k, v in b.items()})
            for a, b in json.loads(r.stdout)]


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_int8_detections_match_fp32(demo_exports, backend):
    """Every fp32 detection above 0.5 has an int8 one of its class with IoU >= 0.9, and the other way round."""
    matched = 0
    for a, b in _run_in_child(demo_exports, backend):
        for ref, other in ((a, b), (b, a)):
            for box, cls, score in zip(ref["DetectionBoxes"][0], ref["DetectionClasses"][0],
                                       ref["DetectionScores"][0], strict=True):
                if score <= 0.5:
                    continue
                same = [o for o, c, s in zip(other["DetectionBoxes"][0], other["DetectionClasses"][0],
                                             other["DetectionScores"][0], strict=True) if c == cls and s > 0.3]
                best = max((_iou(box, o) for o in same), default=0.0)
                assert best >= 0.9, f"{backend}: a class-{cls} box of score {score:.2f} has IoU {best:.2f}"
                matched += 1
    assert matched >= 4  # the demo detector finds the shapes: the comparison is not vacuous


def test_int8_export_records_its_recipe(demo_exports):
    proto = onnx.load(demo_exports["int8"])
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["spinenet.quantize"] == "int8" and meta["spinenet.quantize.float_groups"] == "predictors"
    assert meta["spinenet.quantize.int8_convs"] == "153/163"  # 163 convolutions, 10 predictors (2 x 5 levels)
    assert meta["spinenet.quantize.calibration_images"] == "8"
    assert meta["spinenet.input_type"] == "image_tensor"  # the fp32 export's own metadata is kept
    # int8 weights for the quantized convolutions, none for the predictors, and no Q after any Conv
    producer = {o: n for n in proto.graph.node for o in n.output}
    inits = {i.name: i for i in proto.graph.initializer}
    for conv in (n for n in proto.graph.node if n.op_type == "Conv"):
        weight = producer.get(conv.input[1])
        quantized = weight is not None and weight.op_type == "DequantizeLinear"
        assert quantized != ("/predict" in conv.name), conv.name
        if quantized:
            assert inits[weight.input[0]].data_type == onnx.TensorProto.INT8
    assert not any(n.op_type == "QuantizeLinear" and producer.get(n.input[0]) is not None
                   and producer[n.input[0]].op_type == "Conv" for n in proto.graph.node)


def test_layer_groups_and_batchnorm_fold(demo_exports):
    import onnxruntime as ort

    proto = onnx.load(demo_exports["fp32"])
    groups = layer_groups(proto)
    assert groups["stem"] == ["/model/backbone/stem/conv/Conv"]
    assert len(groups["predictors"]) == 10 and len(groups["head.class"]) == len(groups["head.box"]) == 20
    assert sum(len(v) for v in groups.values()) == 163 and "other" not in groups and "backbone.other" not in groups
    assert len(groups["backbone.reductions"]) == 12 and len(groups["backbone.endpoints"]) == 5
    assert len([g for g in groups if g.startswith("backbone.blocks.")]) == 15
    assert fold_shared_batchnorm(proto) == 40  # 4 convolutions x 2 subnets x 5 levels
    assert not any(n.op_type == "BatchNormalization" for n in proto.graph.node)
    onnx.checker.check_model(proto)
    x = demo_exports["held"][0][None]
    ref = ort.InferenceSession(str(demo_exports["fp32"])).run(None, {"Placeholder": x})
    got = ort.InferenceSession(proto.SerializeToString()).run(None, {"Placeholder": x})
    np.testing.assert_allclose(got[1], ref[1], atol=1e-3)  # boxes in pixels of a 128x128 input


def test_accuracy_control_backs_off_most_sensitive_first(tmp_path, monkeypatch):
    """The loop with a measured AP replaced by a known one: each group float recovers a known amount."""
    groups = {"stem": ["a"], "backbone.blocks.0": ["b"], "backbone.blocks.1": ["c"], "head.class": ["d"],
              "predictors": ["e"]}
    loss = {"stem": 0.001, "backbone.blocks.0": 0.004, "backbone.blocks.1": 0.02, "head.class": 0.01,
            "predictors": 0.002}
    calls = []

    def fake_quantize(fp32, out, images, float_groups=(), metadata=None, calibration_cache=None):
        calls.append(list(float_groups))
        Path(out).write_text(",".join(float_groups))
        return Path(out)

    def fake_evaluate(path, *args, **kwargs):
        if Path(path).name == "fp32.onnx":
            return {"AP": 0.8}
        floats = set(filter(None, Path(path).read_text().split(",")))
        return {"AP": 0.8 - sum(v for g, v in loss.items() if g not in floats)}

    model = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
    onnx.save(model, tmp_path / "fp32.onnx")
    monkeypatch.setattr(quantize_search, "quantize_int8", fake_quantize)
    monkeypatch.setattr(quantize_search, "evaluate_onnx", fake_evaluate)
    monkeypatch.setattr(quantize_search, "layer_groups", lambda proto: groups)
    monkeypatch.setattr(onnx, "load", lambda path, **kw: model)  # the fake outputs are text, not ONNX
    monkeypatch.setattr(onnx, "save", lambda proto, path: Path(path).write_text(Path(tmp_path / "out.onnx")
                                                                                .read_text()))
    result = quantize_search.quantize_within_ap_drop(tmp_path / "fp32.onnx", tmp_path / "out.onnx", [], "a.json",
                                                     "img", 0.0055, start_float=["predictors"], log=lambda s: None)
    # start: predictors float (drop 0.035); then blocks.1 (0.015 left), head.class (0.005): within bound
    assert result["float_groups"] == ["predictors", "backbone.blocks.1", "head.class"]
    assert result["drop"] == pytest.approx(0.005)
    assert (tmp_path / "out.onnx").read_text() == "predictors,backbone.blocks.1,head.class"
    assert not list(tmp_path.glob(".*trial*"))
    assert len(calls) == 1 + 4 + 2  # start, one sensitivity run per int8 group, two back-off steps
    with pytest.raises(ValueError, match="max_ap_drop must be >= 0"):
        quantize_search.quantize_within_ap_drop(tmp_path / "fp32.onnx", tmp_path / "o.onnx", [], "a", "i", -0.1)


def _export_args(**kw) -> argparse.Namespace:
    base = dict(quantize="int8", calibration_data=["a.json", "img"], calibration_images=64, max_ap_drop=None,
                validation_data=None, target="onnxruntime", conv_algorithm=None, keep_dtype=None, postprocess="v1",
                int8_float="none")
    return argparse.Namespace(**{**base, **kw})


@pytest.mark.parametrize("kw, message", [
    ({"calibration_data": None}, "needs --calibration_data"),
    ({"target": "ascend"}, "--target onnxruntime"),
    ({"conv_algorithm": "winograd"}, "direct-convolution graph"),
    ({"calibration_images": 0}, "must be >= 1"),
    ({"max_ap_drop": 0.01, "postprocess": "none"}, "needs --postprocess v1"),
    ({"quantize": None, "calibration_data": ["a", "b"]}, "applies to --quantize int8 only"),
    ({"int8_float": "stem,neck"}, "group 'neck' is unknown"),
])
def test_export_refuses_bad_quantize_flags(kw, message):
    from spinenet.deploy.quantize_cli import check_quantize_request

    with pytest.raises(ValueError, match=message):
        check_quantize_request(_export_args(**kw))


def test_calibration_data_without_images_is_one_clear_error(tmp_path):
    (tmp_path / "ann.json").write_text('{"images": [{"id": 1, "file_name": "x.jpg", "width": 8, "height": 8}], '
                                       '"annotations": [], "categories": [{"id": 1, "name": "a"}]}')
    with pytest.raises(ValueError, match=r"--calibration_data .*ann\.json.*no readable image"):
        calibration_images(tmp_path / "ann.json", tmp_path, (SIZE, SIZE), 4)


@pytest.mark.slow
def test_benchmark_labels_int8_rows_with_the_isa(demo_exports):
    from spinenet.deploy.benchmark import run_benchmark

    rows = run_benchmark([str(demo_exports["fp32"]), str(demo_exports["int8"])], ["openvino"], [1], warmup=1,
                         runs=1, threads=1)
    assert [r["precision"] for r in rows] == ["fp32", "int8+fp32"]
    assert all(r["isa"] and r["postprocess"] for r in rows)


@pytest.mark.slow
def test_export_cli_quantizes_and_leaves_no_fp32_file(demo_exports, monkeypatch, capsys):
    """`spinenet export --quantize int8` end to end, with the fp32 export step replaced by a copy of the fixture's
    (the same graph; the export itself is tested elsewhere)."""
    import shutil

    from spinenet.cli import main
    from spinenet.deploy import export

    work = demo_exports["work"]
    monkeypatch.setattr(export, "export_onnx", lambda model, path, **kw: shutil.copy(demo_exports["fp32"], path))
    out = work / "cli"
    code = main(["export", "--checkpoint", str(DEMO), "--output", str(out), "--input_image_size", "128",
                 "--quantize", "int8", "--calibration_images", "4", "--calibration_data",
                 str(work / "calib" / "annotations" / "instances_train.json"), str(work / "calib" / "train")])
    assert code == 0
    assert [p.name for p in out.iterdir()] == ["retinanet_spinenet49s_int8.onnx"]  # no temporary fp32 file left
    meta = {p.key: p.value for p in onnx.load(out / "retinanet_spinenet49s_int8.onnx").metadata_props}
    assert meta["spinenet.quantize.float_groups"] == "none" and meta["spinenet.quantize.calibration_images"] == "4"
    assert "int8: " in capsys.readouterr().out
