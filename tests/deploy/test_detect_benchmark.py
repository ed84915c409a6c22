"""spinenet detect and spinenet benchmark on a small exported model (the deploy conftest's informative model)."""

import json

import numpy as np
from PIL import Image

from spinenet.deploy.benchmark import run_benchmark
from spinenet.deploy.detect import detect_images
from spinenet.deploy.export import export_onnx


def test_detect_writes_annotated_images_and_json(small_model, tmp_path):
    onnx = export_onnx(small_model, tmp_path / "m.onnx", image_size=(128, 128))
    noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)  # what the model detects on
    Image.fromarray(noise).save(tmp_path / "a.png")  # letterboxed by 0.5 into 128x128
    (tmp_path / "b.jpg").write_bytes(b"not a jpeg")
    summary = detect_images([str(tmp_path / "a.png"), str(tmp_path / "b.jpg")], tmp_path / "out", model=str(onnx),
                            score_threshold=0.0, progress=False)
    assert (tmp_path / "out" / "a.png.jpg").exists()  # annotated copy (a non-JPEG keeps its name + .jpg)
    data = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert data == json.loads(json.dumps(summary))
    assert len(data["images"]) == 1 and data["skipped"][0]["image"].endswith("b.jpg")
    boxes = np.array([d["box_yxyx"] for d in data["images"][0]["detections"]])
    # boxes are in original pixels: inside the 256x256 image and reaching beyond the 128x128 network input
    assert len(boxes) > 0 and boxes.min() >= 0 and boxes.max() <= 256 and boxes.max() > 128


def test_benchmark_rows(small_model, tmp_path):
    onnx = export_onnx(small_model, tmp_path / "m.onnx", image_size=(128, 128))
    rows = run_benchmark(str(onnx), ["onnxruntime"], [1], warmup=1, runs=2, output=str(tmp_path / "b.json"))
    assert len(rows) == 1 and rows[0]["batch"] == 1 and rows[0]["precision"] == "fp32"
    assert rows[0]["images_per_s"] > 0 and rows[0]["ms_per_batch_p90"] >= rows[0]["ms_per_batch"]
    assert json.loads((tmp_path / "b.json").read_text())["rows"][0]["backend"] == "onnxruntime"
