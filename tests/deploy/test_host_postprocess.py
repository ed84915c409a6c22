"""Host post-processing: a raw-maps export's outputs (BIN fp32/fp16, TXT, NPY) -> the same detections as the
in-graph path and as the eager reference."""

import json

import numpy as np
import onnx
import pytest
import torch

from spinenet.convert.parity import compare_detections
from spinenet.deploy.export import ExportWrapper, export_onnx
from spinenet.deploy.host_postprocess import (
    DetectionSource,
    detections_from_raw,
    postprocess_folder,
    read_model_info,
)
from spinenet.deploy.msame_format import write_output
from spinenet.deploy.runtimes import OnnxRuntimeSession

SIZE = 128


@pytest.fixture(scope="module")
def exported(small_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("host_pp")
    raw = export_onnx(small_model, folder / "raw.onnx", image_size=(SIZE, SIZE), postprocess="none",
                      conv_algorithm="direct")
    v1 = export_onnx(small_model, folder / "v1.onnx", image_size=(SIZE, SIZE), conv_algorithm="direct")
    return raw, v1


def _as_ref(d):
    return {"detection_boxes": np.asarray(d["DetectionBoxes"]), "detection_scores": np.asarray(d["DetectionScores"]),
            "detection_classes": np.asarray(d["DetectionClasses"])}


def _as_ours(d):
    return {k: torch.from_numpy(v) for k, v in _as_ref(d).items()}


def _write_raw(folder, name, maps, fmt, dtype=np.float32):
    folder.mkdir(parents=True, exist_ok=True)
    for k, a in enumerate(maps.values()):
        if fmt == "NPY":  # ais_bench naming and format
            np.save(folder / f"{name}_{k}.npy", a.astype(dtype))
        else:
            write_output(folder, name, k, a.astype(dtype), fmt)


@pytest.mark.parametrize("fmt", ["BIN", "TXT", "NPY"])
def test_raw_maps_give_the_in_graph_and_eager_detections(exported, small_model, random_images, tmp_path, fmt):
    raw, v1 = exported
    images = random_images(2, SIZE, seed=5)
    raw_sess, v1_sess = OnnxRuntimeSession(raw), OnnxRuntimeSession(v1)
    folder = tmp_path / "20220606_222003"
    for i in range(2):
        _write_raw(folder, f"{i:05d}", raw_sess.run(images[i:i + 1].numpy()), fmt)
    source = DetectionSource(folder, raw)
    assert source.info.raw and source.names() == {"00000", "00001"}
    wrapper = ExportWrapper(small_model, batch_size=1, image_size=(SIZE, SIZE))
    matched = 0
    for i in range(2):
        host = source.read(f"{i:05d}")
        assert host["NumDetections"].dtype == np.int32 and host["DetectionBoxes"].shape == (1, 100, 4)
        np.testing.assert_array_equal(host["ImageInfo"][0], [[SIZE, SIZE], [SIZE, SIZE], [1, 1], [0, 0]])
        in_graph = v1_sess.run(images[i:i + 1].numpy())
        with torch.no_grad():  # the eager reference: RetinaNet.detect (generate_detections)
            eager = small_model.detect(wrapper.preprocess(images[i:i + 1]))
        eager = {"DetectionBoxes": eager["detection_boxes"].numpy(), "DetectionScores":
                 eager["detection_scores"].numpy(), "DetectionClasses": eager["detection_classes"].numpy()}
        for ref in (in_graph, eager):  # TXT keeps 6 significant digits (msame's ostream): within the same bounds
            (d,) = compare_detections(_as_ours(host), _as_ref(ref), box_tol=0.01, score_tol=1e-4)
            assert d.unmatched_ref == 0 and d.unmatched_ours == 0, (fmt, i, d)
            matched += d.matched
    assert matched > 20, "the informative model should leave detections to compare"


def test_fp16_bin_maps(exported, random_images, tmp_path):
    """ATC --output_type=FP16: 2-byte BIN maps are read as float16 and post-processed in float32."""
    raw, _ = exported
    maps = OnnxRuntimeSession(raw).run(random_images(1, SIZE, seed=6).numpy())
    _write_raw(tmp_path / "run", "00000", maps, "BIN", np.float16)
    info = read_model_info(raw)
    host = DetectionSource(tmp_path / "run", raw).read("00000")
    expected = detections_from_raw({k: v.astype(np.float16) for k, v in maps.items()}, info)
    for k in expected:
        np.testing.assert_array_equal(host[k], expected[k])
    fp32 = detections_from_raw(maps, info)
    assert abs(int(host["NumDetections"][0]) - int(fp32["NumDetections"][0])) <= 3  # fp16 moves only a few


def test_model_info_errors(exported, tmp_path):
    raw, v1 = exported
    assert not read_model_info(v1).raw and read_model_info(raw).raw
    with pytest.raises(ValueError, match="give the .onnx that `spinenet export` wrote"):
        read_model_info(tmp_path / "model.pt")
    proto = onnx.load(str(raw))
    del proto.metadata_props[:]
    onnx.save(proto, tmp_path / "bare.onnx")
    with pytest.raises(ValueError, match="no spinenet metadata"):
        read_model_info(tmp_path / "bare.onnx")
    proto = onnx.load(str(raw))
    keep = [p for p in proto.metadata_props if p.key != "spinenet.detector"]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    onnx.save(proto, tmp_path / "old.onnx")
    with pytest.raises(ValueError, match="without the spinenet.detector metadata"):
        read_model_info(tmp_path / "old.onnx")


def test_postprocess_folder(exported, random_images, tmp_path):
    raw, v1 = exported
    maps = OnnxRuntimeSession(raw).run(random_images(1, SIZE, seed=7).numpy())
    _write_raw(tmp_path / "out" / "20220606_222003", "00000", maps, "BIN")
    folder, count = postprocess_folder(tmp_path / "out", raw, tmp_path / "dets", "BIN")
    assert count == 1 and sorted(p.name for p in folder.iterdir()) == [f"00000_output_{k}.bin" for k in range(5)]
    expected = detections_from_raw(maps, read_model_info(raw))
    back = DetectionSource(folder).read("00000")  # read as the seed's five outputs, no model needed
    for k in expected:
        np.testing.assert_array_equal(back[k], expected[k])
    with pytest.raises(ValueError, match="is not empty"):
        postprocess_folder(tmp_path / "out", raw, tmp_path / "dets")
    with pytest.raises(ValueError, match="is a detections export"):
        postprocess_folder(tmp_path / "out", v1, tmp_path / "dets2")
    assert not (tmp_path / "dets2").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left


def test_model_found_through_infers_summary(exported, random_images, tmp_path):
    """`spinenet infer` names its model in summary.json: report needs no --model for its raw maps."""
    raw, _ = exported
    maps = OnnxRuntimeSession(raw).run(random_images(1, SIZE, seed=8).numpy())
    run = tmp_path / "20220606_222003"
    _write_raw(run, "00000", maps, "BIN")
    (run / "summary.json").write_text(json.dumps({"model": str(raw)}))
    source = DetectionSource(run)
    assert source.info.raw and any(str(raw) in n for n in source.notes)
    np.testing.assert_array_equal(source.read("00000")["DetectionScores"],
                                  detections_from_raw(maps, read_model_info(raw))["DetectionScores"])
    bare = tmp_path / "bare.onnx"
    proto = onnx.load(str(raw))
    del proto.metadata_props[:]
    onnx.save(proto, bare)
    (run / "summary.json").write_text(json.dumps({"model": str(bare)}))
    with pytest.raises(ValueError, match="pass --model"):  # not usable: falls back to "no model", then refuses
        DetectionSource(run)
