"""``spinenet detect`` never writes over a file it did not make, keeps same-named images apart, and draws the
degenerate boxes (ymax < ymin) the reference's decoder can produce instead of aborting.

The model is a stand-in session returning fixed detections: what is tested is where the outputs go.
"""

import json

import numpy as np
import pytest
from PIL import Image

import spinenet.deploy.detect as detect_mod
from spinenet.cli import main

SIZE = 64


class FixedSession:
    """The runtime-session interface with fixed outputs: one ordinary box and one with ymax < ymin."""

    input_shape = (1, SIZE, SIZE, 3)
    boxes = [[8.0, 8.0, 40.0, 40.0], [30.4, 10.0, 30.1, 50.0]]  # network pixels; the second is 0.3 px inverted

    def run(self, batch):
        assert batch.shape == self.input_shape
        boxes = np.zeros((1, 100, 4), np.float32)
        boxes[0, :2] = self.boxes
        scores = np.full((1, 100), -1.0, np.float32)
        scores[0, :2] = [0.9, 0.8]
        return {"NumDetections": np.array([2], np.int32), "DetectionBoxes": boxes,
                "DetectionClasses": np.ones((1, 100), np.int32), "DetectionScores": scores}


@pytest.fixture
def fixed_session(monkeypatch):
    monkeypatch.setattr(detect_mod, "open_session", lambda *a, **k: FixedSession())


def _image(path, colour):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (SIZE, SIZE), colour).save(path)
    return path


def test_same_names_in_several_folders_and_formats_stay_apart(tmp_path, fixed_session, capsys):
    images = [_image(tmp_path / "img/a/x.jpg", (255, 0, 0)), _image(tmp_path / "img/b/x.jpg", (0, 255, 0)),
              _image(tmp_path / "img/a/x.png", (0, 0, 255))]
    before = [p.read_bytes() for p in images]
    out = tmp_path / "out"
    assert main(["detect", *map(str, images), "--model", "m.onnx", "--output", str(out)]) == 0
    data = json.loads((out / "detections.json").read_text())
    annotated = [r["annotated"] for r in data["images"]]
    assert annotated == ["a/x.jpg", "b/x.jpg", "a/x.png.jpg"]  # relative to the JSON's folder, all different
    # each copy is its own image (the colours of the inputs survive drawing at the centre of the picture)
    centres = [np.asarray(Image.open(out / a))[SIZE // 2, 2] for a in annotated]
    assert [int(np.argmax(c)) for c in centres] == [0, 1, 2]
    assert [p.read_bytes() for p in images] == before
    printed = capsys.readouterr().out
    for a in annotated:
        assert f"-> {out / a}" in printed  # says where each went
    # a rerun into the same folder may replace its own earlier copies
    assert main(["detect", *map(str, images), "--model", "m.onnx", "--output", str(out)]) == 0


def test_output_in_the_images_folder_is_refused_before_any_write(tmp_path, fixed_session, capsys):
    images = [_image(tmp_path / "img/x.jpg", (255, 0, 0)), _image(tmp_path / "img/y.jpg", (0, 255, 0))]
    before = [p.read_bytes() for p in images]
    assert main(["detect", *map(str, images), "--model", "m.onnx", "--output", str(tmp_path / "img")]) == 1
    err = capsys.readouterr().err
    assert "would replace the input image" in err and "x.jpg" in err and len(err.strip().splitlines()) == 1
    assert [p.read_bytes() for p in images] == before
    assert sorted(p.name for p in (tmp_path / "img").iterdir()) == ["x.jpg", "y.jpg"]  # nothing written


def test_a_users_file_in_the_output_folder_is_not_replaced(tmp_path, fixed_session, capsys):
    image = _image(tmp_path / "img/x.png", (255, 0, 0))
    (tmp_path / "out").mkdir()
    mine = tmp_path / "out/x.png.jpg"
    mine.write_bytes(b"the user's own file")
    assert main(["detect", str(image), "--model", "m.onnx", "--output", str(tmp_path / "out")]) == 1
    assert "spinenet detect did not write" in capsys.readouterr().err
    assert mine.read_bytes() == b"the user's own file"


def test_degenerate_box_is_kept_and_drawn(tmp_path, fixed_session):
    image = _image(tmp_path / "x.jpg", (128, 128, 128))
    summary = detect_mod.detect_images([str(image)], tmp_path / "out", model="m.onnx", score_threshold=0.5,
                                       progress=False)
    boxes = [d["box_yxyx"] for d in summary["images"][0]["detections"]]
    assert boxes == [[8.0, 8.0, 40.0, 40.0], [30.4, 10.0, 30.1, 50.0]]  # kept as decoded, as the reference
    drawn = np.asarray(Image.open(tmp_path / "out/x.jpg")).astype(int)
    r, g, _ = drawn[30, 45]
    assert g - r > 40  # class 1's green line where the inverted box is (below its label, right of it)
