"""CocoDetection: what gets skipped (and counted), targets in the network frame, collate, bad JSON errors."""

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from spinenet.config import default_config
from spinenet.data.coco import CocoDetection, SkippedImage, collate_detection, load_coco_json
from spinenet.data.synthetic import make_synthetic_dataset
from spinenet.data.transforms import EvalTransform, TrainTransform

CATEGORIES = [{"id": 1, "name": "one"}, {"id": 2, "name": "two"}, {"id": 3, "name": "three"}]


def _rgb(w, h, value=100):
    return Image.fromarray(np.full((h, w, 3), value, dtype=np.uint8))


@pytest.fixture
def coco(tmp_path):
    """A small COCO set with one of each problem; returns (ann_file, image_dir)."""
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    _rgb(48, 32).save(img_dir / "a.jpg")
    (img_dir / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg at all" * 3)
    Image.new("L", (20, 10), 77).save(img_dir / "gray.png")
    Image.new("RGBA", (16, 16), (10, 20, 30, 0)).save(img_dir / "rgba.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to display, so the shown image is 20 wide, 40 high
    _rgb(40, 20).save(img_dir / "exif.jpg", exif=exif)
    _rgb(40, 20).save(img_dir / "exif_raw.jpg", exif=exif)
    _rgb(10, 10).save(img_dir / "wrong_size.jpg")
    images = [("a.jpg", 48, 32), ("missing.jpg", 30, 30), ("corrupt.jpg", 30, 30), ("gray.png", 20, 10),
              ("rgba.png", 16, 16), ("exif.jpg", 20, 40), ("exif_raw.jpg", 40, 20), ("wrong_size.jpg", 12, 12)]
    anns = [(1, [4.0, 2.0, 10.0, 8.0], 1, 0),    # kept
            (1, [20.0, 10.0, 8.0, 8.0], 2, 1),   # crowd
            (1, [5.0, 5.0, 0.0, 4.0], 1, 0),     # degenerate: w = 0
            (1, [60.0, 5.0, 4.0, 4.0], 1, 0),    # degenerate: entirely right of the image
            (1, [40.0, 20.0, 10.0, 5.0], 1, 0),  # out of bounds: x + w = 50 > 48
            (1, [1.0, 1.0, 2.0, 2.0], 9, 0),     # unknown category
            (999, [1.0, 1.0, 2.0, 2.0], 1, 0),   # unknown image
            (2, [1.0, 1.0, 5.0, 5.0], 1, 0), (3, [1.0, 1.0, 5.0, 5.0], 1, 0),
            (5, [2.0, 2.0, 4.0, 4.0], 3, 0), (6, [0.0, 0.0, 10.0, 20.0], 2, 0), (7, [0.0, 0.0, 10.0, 5.0], 2, 0),
            (8, [1.0, 1.0, 5.0, 5.0], 1, 0)]
    doc = {"images": [{"id": i + 1, "file_name": f, "width": w, "height": h} for i, (f, w, h) in enumerate(images)],
           "annotations": [{"id": k + 1, "image_id": iid, "bbox": b, "category_id": c, "iscrowd": z, "area": 1.0}
                           for k, (iid, b, c, z) in enumerate(anns)],
           "categories": CATEGORIES}
    ann_file = tmp_path / "instances.json"
    ann_file.write_text(json.dumps(doc))
    return ann_file, img_dir


def _by_name(ds):
    return {rec.file_name: i for i, rec in enumerate(ds.records)}


def test_training_mode_skips_and_counts(coco, caplog):
    ds = CocoDetection(*coco, TrainTransform((64, 64), aug_rand_hflip=False, size_divisor=64), is_training=True)
    assert len(ds) == 8 and ds.num_classes == 4 and ds.label_map() == {1: "one", 2: "two", 3: "three"}
    idx = _by_name(ds)
    image, target = ds[idx["a.jpg"]]
    assert image.shape == (3, 64, 64) and target["classes"].tolist() == [1]  # crowd, bad boxes: gone
    # 32 x 48 into 64: scale = min(2, 4/3) -> size round([32, 48] * 4/3) = [43, 64].
    sy, sx = 43 / 32, 64 / 48
    torch.testing.assert_close(target["image_info"], torch.tensor([[32, 48], [64, 64], [sy, sx], [0, 0]]))
    torch.testing.assert_close(target["boxes"], torch.tensor([[2 * sy, 4 * sx, 10 * sy, 14 * sx]]))
    assert target["image_id"] == 1 and target["orig_size"] == (32, 48) and target["is_crowd"].tolist() == [False]

    with caplog.at_level(logging.WARNING, logger="spinenet.data.coco"):
        for name, reason in (("missing.jpg", "missing_image"), ("corrupt.jpg", "corrupt_image"),
                             ("wrong_size.jpg", "size_mismatch"), ("missing.jpg", "missing_image")):
            skipped = ds[idx[name]]
            assert isinstance(skipped, SkippedImage) and (skipped.file_name, skipped.reason) == (name, reason)
    assert sum("missing.jpg" in r.getMessage() for r in caplog.records) == 1  # warned once per file

    stats = ds.stats()
    assert stats["skipped"] == {"degenerate_box": 2, "out_of_bounds_box": 1, "crowd": 1, "unknown_category": 1,
                                "unknown_image": 1, "missing_image": 1, "corrupt_image": 1, "size_mismatch": 1}
    assert stats["annotations"] == 13 and stats["annotations_kept"] == 7  # 13 - 6 annotation-level skips
    report = ds.report()
    for name in ("missing.jpg", "corrupt.jpg", "wrong_size.jpg", "a.jpg (annotation 3)"):
        assert name in report


def test_eval_mode_keeps_crowd_and_odd_images(coco):
    ds = CocoDetection(*coco, EvalTransform((64, 64), size_divisor=64))
    idx = _by_name(ds)
    _, target = ds[idx["a.jpg"]]
    assert target["classes"].tolist() == [1, 2] and target["is_crowd"].tolist() == [False, True]
    assert ds.stats()["skipped"]["crowd"] == 0
    image, empty = ds[idx["gray.png"]]  # grayscale, no annotations: kept with empty targets
    assert image.shape == (3, 64, 64) and empty["boxes"].shape == (0, 4) and empty["classes"].shape == (0,)
    assert ds[idx["rgba.png"]][0].shape == (3, 64, 64)
    _, rotated = ds[idx["exif.jpg"]]  # EXIF applied: 40 x 20 stored, shown (and annotated) 20 wide x 40 high
    assert rotated["image_info"][0].tolist() == [40, 20]
    _, raw = ds[idx["exif_raw.jpg"]]  # the JSON describes the stored pixels: used as stored, noted
    assert raw["image_info"][0].tolist() == [20, 40] and ds.stats()["exif_ignored"] == 1


def test_validate_scans_every_image(coco):
    ds = CocoDetection(*coco, EvalTransform((64, 64), size_divisor=64))
    stats = ds.validate()
    assert (stats["skipped"]["missing_image"], stats["skipped"]["corrupt_image"]) == (1, 1)
    assert any("corrupt.jpg" in d for d in stats["details"]["corrupt_image"])


def test_collate_drops_skipped_items(coco):
    ds = CocoDetection(*coco, EvalTransform((64, 64), size_divisor=64))
    idx = _by_name(ds)
    images, targets, info = collate_detection([ds[idx["a.jpg"]], ds[idx["missing.jpg"]], ds[idx["gray.png"]]])
    assert images.shape == (2, 3, 64, 64) and info.shape == (2, 4, 2) and len(targets) == 2
    assert [t["file_name"] for t in targets] == ["a.jpg", "gray.png"]
    assert collate_detection([None, None]) is None
    batches = list(DataLoader(ds, batch_size=4, collate_fn=collate_detection))
    assert sum(b[0].shape[0] for b in batches if b is not None) == 5  # 8 images, 3 unusable


def test_num_classes_and_from_config(coco):
    assert CocoDetection(*coco, num_classes=10).num_classes == 10
    with pytest.raises(ValueError, match="num_classes >= 4"):
        CocoDetection(*coco, num_classes=3)
    ds = CocoDetection.from_config(default_config(), *coco, is_training=True)
    assert ds.num_classes == 91 and isinstance(ds.transform, TrainTransform) and ds.transform.output_size == (640, 640)


@pytest.mark.parametrize("content, message", [
    ({"images": [], "annotations": []}, r"missing key\(s\) \['categories'\]"),
    ({"images": [], "annotations": [{"image_id": 1, "category_id": 1}], "categories": []},
     r"annotations\[0\] lacks \['bbox'\]"),
    ({"images": [{"id": 1, "file_name": "x.jpg"}], "annotations": [], "categories": []},
     r"images\[0\] lacks \['width', 'height'\]"),
    ({"images": [], "annotations": [{"image_id": 1, "category_id": 1, "bbox": [1, 2]}], "categories": []},
     r"annotations\[0\]\.bbox must be \[x, y, w, h\]"),
    ([1, 2, 3], "got a JSON list"),
    ("{not json", "not a valid JSON file"),
])
def test_bad_annotation_file_names_the_file(tmp_path, content, message):
    path = tmp_path / "bad_instances.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ValueError, match=message) as err:
        load_coco_json(path)
    assert "bad_instances.json" in str(err.value)
    with pytest.raises(ValueError, match="bad_instances.json"):
        CocoDetection(path, tmp_path)


def test_missing_files_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_coco_json(tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError, match="image folder"):
        CocoDetection(tmp_path / "nope.json", tmp_path / "no_images")


def test_synthetic_dataset_round_trip(tmp_path):
    make_synthetic_dataset(tmp_path, 3, 1, image_size=64, seed=2, progress=False)
    ds = CocoDetection(tmp_path / "annotations" / "instances_train.json", tmp_path / "train",
                       EvalTransform((64, 64), size_divisor=64))
    doc = json.loads((tmp_path / "annotations" / "instances_train.json").read_text())
    assert ds.label_map() == {c["id"]: c["name"] for c in doc["categories"]}
    for i in range(len(ds)):
        _, target = ds[i]
        anns = [a for a in doc["annotations"] if a["image_id"] == target["image_id"]]
        sy, sx = target["image_info"][2].tolist()
        expected = [[y * sy, x * sx, (y + h) * sy, (x + w) * sx] for x, y, w, h in (a["bbox"] for a in anns)]
        torch.testing.assert_close(target["boxes"], torch.tensor(expected).clamp(0, 63), atol=1e-4, rtol=0)
        assert target["classes"].tolist() == [a["category_id"] for a in anns]
    assert sum(ds.stats()["skipped"].values()) == 0


def test_get_with_generator_is_reproducible(tmp_path):
    make_synthetic_dataset(tmp_path, 2, 0, image_size=48, seed=1, progress=False)
    ds = CocoDetection(tmp_path / "annotations" / "instances_train.json", tmp_path / "train",
                       TrainTransform((32, 32), aug_scale_min=0.5, aug_scale_max=2.0, size_divisor=32),
                       is_training=True)
    a = ds.get(0, generator=torch.Generator().manual_seed(7))
    b = ds.get(0, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1]["image_info"], b[1]["image_info"])


def test_annotation_file_with_utf8_bom_is_read(tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"images": [], "annotations": [], "categories": []}).encode())
    assert load_coco_json(path)["images"] == []
