"""spinenet image2bin (letterbox, manifest, bad input) and spinenet infer (msame's folder, byte for byte)."""

import json
import re

import numpy as np
import pytest
from PIL import Image

from spinenet.deploy import infer as infer_mod
from spinenet.deploy.image2bin import MEAN_RGB_UINT8, image2bin, letterbox
from spinenet.deploy.infer import run_inference


def jpeg(path, w, h, color=(200, 30, 30)):
    Image.new("RGB", (w, h), color).save(path, quality=95)
    return path


def test_letterbox_keeps_aspect_and_pads_bottom_right_with_the_mean_colour():
    # 100 (h) x 50 (w) into 128x128: scale = min(128/100, 128/50) = 1.28 -> 128 x 64, padded on the right.
    img = np.full((100, 50, 3), 200, np.uint8)
    out, scale, resized = letterbox(img, (128, 128))
    assert out.shape == (128, 128, 3) and resized == (128, 64) and scale == (1.28, 1.28)
    assert (out[:, :64] == 200).all()
    assert (out[:, 64:] == MEAN_RGB_UINT8).all()


def test_image2bin_writes_exact_sizes_and_a_manifest(tmp_path):
    src = tmp_path / "img"
    src.mkdir()
    jpeg(src / "b.jpg", 640, 320)  # wide: scale 1 into 640x640, bottom half padded
    jpeg(src / "a.jpg", 64, 64)  # square, upscaled by 10
    Image.new("L", (30, 60), 128).save(src / "c.png")  # grayscale PNG -> RGB
    Image.new("RGBA", (60, 30), (10, 20, 30, 0)).save(src / "d.png")  # alpha dropped, not composited
    (src / "notes.txt").write_text("not an image")
    res = image2bin(str(src / "*"), tmp_path / "bins", 640, progress=False)
    assert [p.name for p in sorted((tmp_path / "bins").iterdir())] == [
        "00000.bin", "00001.bin", "00002.bin", "00003.bin", "manifest.json"]
    assert all((tmp_path / "bins" / f"0000{i}.bin").stat().st_size == 640 * 640 * 3 for i in range(4))
    m = json.loads((tmp_path / "bins" / "manifest.json").read_text())
    assert [e["source"].rsplit("/", 1)[-1] for e in m["images"]] == ["a.jpg", "b.jpg", "c.png", "d.png"]
    assert m["images"][0]["scale"] == [10.0, 10.0] and m["images"][1]["original_size"] == [320, 640]
    assert [s for s, _ in res.skipped] == [str(src / "notes.txt")]
    b = np.fromfile(tmp_path / "bins" / "00001.bin", np.uint8).reshape(640, 640, 3)
    assert (b[400:] == MEAN_RGB_UINT8).all() and abs(int(b[100, 100, 0]) - 200) <= 2
    d = np.fromfile(tmp_path / "bins" / "00003.bin", np.uint8).reshape(640, 640, 3)
    assert tuple(d[10, 10]) == (10, 20, 30)


def test_image2bin_applies_exif_orientation(tmp_path):
    img = Image.new("RGB", (80, 40), (0, 0, 255))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display: 80x40 stored -> 40 wide x 80 high shown
    img.save(tmp_path / "r.jpg", exif=exif)
    image2bin(str(tmp_path / "r.jpg"), tmp_path / "bins", 128, progress=False)
    m = json.loads((tmp_path / "bins" / "manifest.json").read_text())
    assert m["images"][0]["original_size"] == [80, 40]


def test_image2bin_never_overwrites_other_files_silently(tmp_path):
    jpeg(tmp_path / "a.jpg", 32, 32)
    out = tmp_path / "bins"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="already holds files.*--overwrite"):
        image2bin(str(tmp_path / "*.jpg"), out, 128, progress=False)
    image2bin(str(tmp_path / "*.jpg"), out, 128, overwrite=True, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["00000.bin", "keep.txt", "manifest.json"]


def test_image2bin_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no files match"):
        image2bin(str(tmp_path / "*.jpg"), tmp_path / "bins", 128)
    (tmp_path / "x.jpg").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="none of the 1 files"):
        image2bin(str(tmp_path / "*.jpg"), tmp_path / "bins", 128, progress=False)
    assert not (tmp_path / "bins").exists()  # nothing half-written


class FakeSession:
    """A model with msame-shaped outputs, so the folder can be compared with a hand-written one."""

    input_name, input_shape, input_dtype = "Placeholder", (1, 4, 4, 3), np.dtype(np.uint8)
    output_names = ["NumDetections", "DetectionBoxes", "DetectionClasses", "DetectionScores", "ImageInfo"]

    def run(self, x):
        return {"NumDetections": np.array([1], np.int32),
                "DetectionBoxes": np.array([[[1.5, 2.0, 3.25, 4.0], [0, 0, 0, 0]]], np.float32),
                "DetectionClasses": np.array([[3, 0]], np.int32),
                "DetectionScores": np.array([[0.875, -1.0]], np.float32),
                "ImageInfo": np.array([[[4, 4], [4, 4], [1, 1], [0, 0]]], np.float32)}


HAND_WRITTEN_MSAME = {  # what msame writes for these outputs (TXT): value + space, newline per last-dim row
    "00000_output_0.txt": "1 ",
    "00000_output_1.txt": "1.5 2 3.25 4 \n0 0 0 0 \n",
    "00000_output_2.txt": "3 0 \n",
    "00000_output_3.txt": "0.875 -1 \n",
    "00000_output_4.txt": "4 4 \n4 4 \n1 1 \n0 0 \n",
}


def test_infer_folder_matches_msame_byte_for_byte(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(infer_mod, "open_session", lambda *a, **k: FakeSession())
    (tmp_path / "in").mkdir()
    np.zeros((1, 4, 4, 3), np.uint8).tofile(tmp_path / "in" / "00000.bin")
    np.zeros(7, np.uint8).tofile(tmp_path / "in" / "00001.bin")  # wrong size
    (tmp_path / "in" / "manifest.json").write_text("{}")
    res = run_inference("m.onnx", tmp_path / "in", tmp_path / "out", progress=False)
    run = res.run_dir
    assert re.fullmatch(r"\d{8}_\d{6}", run.name)
    written = {p.name: p.read_text() for p in run.glob("*_output_*")}
    assert written == HAND_WRITTEN_MSAME
    out = capsys.readouterr().out
    assert re.search(r"^Inference time: [\d.]+ms$", out, re.M)
    assert "Inference average time : " in out
    assert [p for p, _ in res.skipped] == [str(tmp_path / "in" / "00001.bin")]
    assert "00001.bin: 7 bytes, but the model takes Placeholder [1, 4, 4, 3] uint8 = 48 bytes" in out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["time_ms"]["count"] == 1 and summary["skipped"][0]["file"].endswith("00001.bin")


def test_infer_bin_outputs_are_raw_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(infer_mod, "open_session", lambda *a, **k: FakeSession())
    (tmp_path / "in").mkdir()
    np.zeros((1, 4, 4, 3), np.uint8).tofile(tmp_path / "in" / "img7.bin")
    res = run_inference("m.onnx", tmp_path / "in", tmp_path / "out", outfmt="BIN", progress=False)
    assert (res.run_dir / "img7_output_3.bin").read_bytes() == np.array([0.875, -1.0], np.float32).tobytes()


def test_infer_unwritable_output_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(infer_mod, "open_session", lambda *a, **k: FakeSession())
    (tmp_path / "in").mkdir()
    np.zeros((1, 4, 4, 3), np.uint8).tofile(tmp_path / "in" / "a.bin")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="cannot create the output folder"):
        run_inference("m.onnx", tmp_path / "in", tmp_path / "file" / "out", progress=False)
