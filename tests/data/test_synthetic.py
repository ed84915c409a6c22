"""The synthetic shapes dataset: determinism, COCO validity, exact boxes, odd sizes, and the CLI."""

import argparse
import json

import numpy as np
import pytest
from PIL import Image

from spinenet.data.cli import add_synth_parser
from spinenet.data.label_map import read_label_map
from spinenet.data.synthetic import (
    ODD_SIZES,
    SHAPE_CLASSES,
    make_synthetic_dataset,
    render_image,
    synthesize_image,
)

SIZE = 96


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "ds"
    make_synthetic_dataset(root, 4, 2, image_size=SIZE, seed=5, odd_size_fraction=0.5, progress=False)
    return root


def test_same_seed_same_bytes_other_seed_differs(dataset, tmp_path):
    again = tmp_path / "again"
    make_synthetic_dataset(again, 4, 2, image_size=SIZE, seed=5, odd_size_fraction=0.5, progress=False)
    assert _files(again) == _files(dataset)
    other = tmp_path / "other"
    make_synthetic_dataset(other, 4, 2, image_size=SIZE, seed=6, odd_size_fraction=0.5, progress=False)
    a, b = _files(other), _files(dataset)
    assert a.keys() == b.keys() and a["train/000000000001.jpg"] != b["train/000000000001.jpg"]


def test_layout_and_valid_coco_json(dataset):
    for split, n in (("train", 4), ("val", 2)):
        doc = json.loads((dataset / "annotations" / f"instances_{split}.json").read_text())
        assert {"images", "annotations", "categories"} <= doc.keys()
        assert [(c["id"], c["name"]) for c in doc["categories"]] == list(SHAPE_CLASSES.items())
        assert all(c["supercategory"] for c in doc["categories"])
        assert len(doc["images"]) == n and len({i["id"] for i in doc["images"]}) == n
        sizes = {}
        for img in doc["images"]:
            with Image.open(dataset / split / img["file_name"]) as im:
                assert im.format == "JPEG" and im.mode == "RGB"
                assert im.size == (img["width"], img["height"])
            sizes[img["id"]] = (img["width"], img["height"])
        ann_ids = [a["id"] for a in doc["annotations"]]
        assert len(set(ann_ids)) == len(ann_ids) and ann_ids
        per_image = {}
        for a in doc["annotations"]:
            x, y, w, h = a["bbox"]
            W, H = sizes[a["image_id"]]
            assert all(isinstance(v, float) for v in a["bbox"])
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= W and y + h <= H
            assert a["category_id"] in SHAPE_CLASSES and a["iscrowd"] == 0 and 0 < a["area"] <= w * h
            per_image[a["image_id"]] = per_image.get(a["image_id"], 0) + 1
        assert all(1 <= k <= 8 for k in per_image.values())
    assert read_label_map(dataset / "labels.csv") == SHAPE_CLASSES


def test_boxes_are_tight_boxes_of_the_drawn_pixels():
    sizes = []
    for i in range(12):
        pixels, objects, labels = render_image(np.random.default_rng(i), 80 + 8 * i, 120 - 4 * i)
        assert objects and pixels.shape == (*labels.shape, 3)
        for k, obj in enumerate(objects):
            ys, xs = np.nonzero(labels == k + 1)
            x, y, w, h = obj.bbox
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + w, y + h)
            assert obj.area == len(xs)
            assert np.all(pixels[ys, xs] == obj.colour)  # visible pixels carry the object's colour
            sizes.append(max(w, h) / min(labels.shape))
    assert min(sizes) < 0.15 and max(sizes) > 0.35  # a spread of object sizes


def test_jpeg_box_borders_contain_object_colour(dataset):
    doc = json.loads((dataset / "annotations" / "instances_train.json").read_text())
    for img in doc["images"]:
        i = img["id"] - 1
        pixels, objects, labels = synthesize_image(5, "train", i, SIZE, odd_size_fraction=0.5)
        jpeg = np.asarray(Image.open(dataset / "train" / img["file_name"]), dtype=np.int16)
        anns = [a for a in doc["annotations"] if a["image_id"] == img["id"]]
        assert [a["bbox"] for a in anns] == [o.bbox for o in objects]  # the file is this rendering
        assert np.abs(jpeg - pixels).mean() < 12  # quality 90: close to the drawn pixels
        for k, obj in enumerate(objects):
            x, y, w, h = (int(v) for v in obj.bbox)
            own = labels == k + 1
            for sl in [np.s_[y, x:x + w], np.s_[y + h - 1, x:x + w], np.s_[y:y + h, x], np.s_[y:y + h, x + w - 1]]:
                assert own[sl].any()  # each border row / column holds a pixel of this object
                dist = np.abs(jpeg[sl][own[sl]] - np.array(obj.colour)).max(axis=-1)
                assert dist.min() < 64  # JPEG error on edge pixels (4:4:4, q90)


def test_odd_sizes_present(dataset):
    doc = json.loads((dataset / "annotations" / "instances_train.json").read_text())
    odd = {(round(w * SIZE / 640), round(h * SIZE / 640)) for w, h in ODD_SIZES}
    sizes = {(i["width"], i["height"]) for i in doc["images"]}
    assert sizes & odd and (SIZE, SIZE) in sizes
    pixels, _, _ = synthesize_image(0, "train", 0, SIZE, odd_size_fraction=1.0)
    assert pixels.shape[1::-1] in odd


def _run_cli(argv):
    parser = argparse.ArgumentParser(prog="spinenet")
    add_synth_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_writes_and_refuses_non_empty_folder(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["synth", "--output", str(out), "--num_train", "2", "--num_val", "1", "--image_size", "32", "--quiet"]
    assert _run_cli(argv) == 0
    assert "train: 2 images" in capsys.readouterr().out
    assert len(list((out / "train").glob("*.jpg"))) == 2
    with pytest.raises(ValueError, match=str(out)) as err:
        _run_cli(argv)
    assert isinstance(err.value, FileExistsError) and "--overwrite" in str(err.value)
    (out / "keep.txt").write_text("mine")
    assert _run_cli([*argv[:4], "1", *argv[5:], "--overwrite"]) == 0
    assert len(list((out / "train").glob("*.jpg"))) == 1 and (out / "keep.txt").read_text() == "mine"


def test_cli_help_and_bad_counts(capsys):
    with pytest.raises(SystemExit) as e:
        _run_cli(["synth", "--help"])
    assert e.value.code == 0 and "--num_train" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        _run_cli(["synth", "--output", "x", "--num_train", "-1"])
    with pytest.raises(ValueError, match="at least one image"):
        make_synthetic_dataset("unused", 0, 0)
