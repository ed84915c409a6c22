"""`spinenet report --annotations`: a damaged annotation file is a one-line error naming it; no reported image
among the annotated ones is an error, some a note with the count; a label map other than the categories, a note
showing both (the checks `spinenet evaluate` makes, from spinenet.data)."""

import datetime as dt
import json

import numpy as np
import pytest
from PIL import Image

from spinenet.cli import main
from spinenet.deploy.msame_format import timeline_dirname, write_output

INFO = [[40, 60], [640, 640], [1, 1], [0, 0]]


@pytest.fixture
def run(tmp_path):
    """Two 60x40 images with one-detection outputs; returns the common CLI arguments."""
    images = tmp_path / "images"
    images.mkdir()
    folder = tmp_path / "out" / timeline_dirname(dt.datetime(2022, 6, 6, 22, 20, 3, 123456))
    folder.mkdir(parents=True)
    for i, name in enumerate(["a.jpg", "b.jpg"]):
        Image.new("RGB", (60, 40), (90, 120, 200)).save(images / name)
        boxes = np.zeros((1, 100, 4), np.float32)
        boxes[0, 0] = (10, 20, 30, 50)
        scores = np.full((1, 100), -1.0, np.float32)
        scores[0, 0] = 0.9
        classes = np.zeros((1, 100), np.int32)
        classes[0, 0] = 1
        for k, a in enumerate([np.array([1], np.int32), boxes, classes, scores, np.array([INFO], np.float32)]):
            write_output(folder, f"{i:05d}", k, a, "TXT")
    labels = tmp_path / "labels.csv"
    labels.write_text("1:person\n")
    return ["report", "--output", str(tmp_path / "out"), "--label_map_file", str(labels), "--image_file_pattern",
            str(images / "*.jpg"), "--output_html", str(tmp_path / "r.html"), "--no_progress"]


def annotations(names, categories=({"id": 1, "name": "person"},)):
    images = [{"id": i + 1, "file_name": n, "width": 60, "height": 40} for i, n in enumerate(names)]
    anns = [{"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [20, 10, 30, 20], "area": 600, "iscrowd": 0}
            for i in range(len(names))]
    return {"images": images, "annotations": anns, "categories": list(categories)}


def _damaged(kind):
    doc = annotations(["a.jpg", "b.jpg"])
    if kind == "no_images":
        del doc["images"]
    elif kind == "no_categories":
        del doc["categories"]
    elif kind == "no_bbox":
        del doc["annotations"][1]["bbox"]
    text = json.dumps(doc)
    return text[: len(text) // 2] if kind == "truncated" else text


@pytest.mark.parametrize("kind, says", [("no_images", r"missing key(s) ['images']"),
                                        ("no_categories", r"missing key(s) ['categories']"),
                                        ("no_bbox", "annotations[1] lacks ['bbox']"),
                                        ("truncated", "not a valid JSON file, truncated or damaged")])
def test_damaged_annotation_file_is_a_one_line_error_naming_it(run, tmp_path, capsys, kind, says):
    ann = tmp_path / f"instances_{kind}.json"
    ann.write_text(_damaged(kind))
    assert main([*run, "--annotations", str(ann)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("spinenet report: error:"), err
    assert str(ann) in err and says in err, err
    assert not (tmp_path / "r.html").exists()


def test_no_reported_image_annotated_is_an_error(run, tmp_path, capsys):
    ann = tmp_path / "other.json"
    ann.write_text(json.dumps(annotations(["x.jpg", "y.jpg", "z.jpg"])))
    assert main([*run, "--annotations", str(ann)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"none of the 3 images listed in {ann} was found in" in err, err
    assert not (tmp_path / "r.html").exists()


def test_some_annotated_images_not_reported_is_a_note_with_the_count(run, tmp_path, capsys):
    ann = tmp_path / "more.json"
    ann.write_text(json.dumps(annotations(["a.jpg", "b.jpg", "c.jpg", "d.jpg"])))
    assert main([*run, "--annotations", str(ann)]) == 0
    out = capsys.readouterr().out
    assert f"note: only 2 of the 4 images listed in {ann} were found" in out
    assert "COCO AP 1.0000" in out and "over 2 image(s)" in out


def test_label_map_other_than_the_categories_is_a_note_showing_both(run, tmp_path, capsys):
    ann = tmp_path / "renamed.json"
    ann.write_text(json.dumps(annotations(["a.jpg", "b.jpg"], [{"id": 1, "name": "pedestrian"}])))
    assert main([*run, "--annotations", str(ann)]) == 0
    out = capsys.readouterr().out
    assert "id 1: 'person' vs 'pedestrian'" in out and "--label_map_file" in out and str(ann) in out
    ann.write_text(json.dumps(annotations(["a.jpg", "b.jpg"])))
    assert main([*run, "--annotations", str(ann)]) == 0
    assert "label map" not in capsys.readouterr().out
