"""``spinenet report``: msame folders -> HTML page (+ COCO mAP), on tiny hand-made images and outputs."""

import argparse
import datetime as dt
import json
import re

import numpy as np
import pytest
from PIL import Image

from spinenet.deploy.msame_format import current_time_dirname, timeline_dirname, write_output
from spinenet.deploy.report import boxes_to_original, effective_scale, write_report
from spinenet.deploy.report_cli import add_report_parser

H, W = 160, 320  # a non-square original: letterboxed into 640x640 its scale is min(640/160, 640/320) = 2
SEED_INFO = [[H, W], [640, 640], [2, 2], [0, 0]]  # the seed's graph fed the raw image (it resizes inside)
BIN_INFO = [[640, 640], [640, 640], [1, 1], [0, 0]]  # our graph fed a 640x640 letterboxed bin


def make_images(folder, names, size=(H, W)):
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.new("RGB", (size[1], size[0]), (40 * i, 120, 200)).save(folder / name, format="JPEG")
    return str(folder / "*")


def write_seed_outputs(folder, name, dets, image_info=SEED_INFO, fmt="TXT"):
    """``dets``: [(ymin, xmin, ymax, xmax) network pixels, class, score]; the rest padded as the seed pads."""
    folder.mkdir(parents=True, exist_ok=True)
    boxes = np.zeros((1, 100, 4), np.float32)
    classes = np.zeros((1, 100), np.int32)
    scores = np.full((1, 100), -1.0, np.float32)
    for i, (box, cls, score) in enumerate(dets):
        boxes[0, i], classes[0, i], scores[0, i] = box, cls, score
    arrays = [np.array([len(dets)], np.int32), boxes, classes, scores, np.array([image_info], np.float32)]
    for k, a in enumerate(arrays):
        write_output(folder, name, k, a, fmt)


@pytest.fixture
def label_map(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("1:person\n2:car\n")
    return path


def run_folder(tmp_path, fmt_name=timeline_dirname):
    return tmp_path / "out" / fmt_name(dt.datetime(2022, 6, 6, 22, 20, 3, 123456))


def report_data(html):
    """The page's data as the viewer reads it: index.js's settings and every image's record (data/NNNN.js)."""
    folder = html.with_name(f"{html.stem}_files")
    index = json.loads(re.fullmatch(r"window\.SPINENET_REPORT = (.*);\n", (folder / "index.js").read_text(), re.S)[1])
    records = []
    for f in sorted((folder / "data").glob("*.js")):
        n, chunk = json.loads("[" + re.fullmatch(r"SPINENET_REPORT_CHUNK\((.*)\);\n", f.read_text(), re.S)[1] + "]")
        assert [r["k"] for r in chunk] == list(range(n * 50, n * 50 + len(chunk)))
        records += chunk
    return index, records


def detail_rows(html):
    """Image name -> the rows of its detection table at the page's display threshold, formatted as the viewer
    formats them (class, score %, ymin, xmin, ymax, xmax; the browser test checks the rendered table)."""
    index, records = report_data(html)
    names = {int(k): v for k, v in index["classes"].items()}
    return {r["name"]: [[names[d[0]], f"{100 * d[1]:.1f}%", *(f"{v:.1f}" for v in d[2:6])]
                        for d in r["dets"] if d[1] >= index["threshold"]] for r in records}


def test_boxes_mapped_back_with_row2_not_row1():
    info = np.array(SEED_INFO, np.float32)
    scale, note = effective_scale(info, (H, W), None)
    assert note is None and scale.tolist() == [2, 2]
    np.testing.assert_allclose(boxes_to_original(np.array([[20, 40, 60, 100]]), scale, (H, W)), [[10, 20, 30, 50]])
    # The seed's row-1 mapping (box / 640 * original size) would give (5, 20, 15, 50) instead.
    assert not np.allclose(np.array([20, 40, 60, 100]) / 640 * [H, W, H, W], [10, 20, 30, 50])
    # A letterboxed bin: ImageInfo says scale 1; the manifest (or image2bin's rule, with a note) gives 2.
    bin_info = np.array(BIN_INFO, np.float32)
    scale, note = effective_scale(bin_info, (H, W), (2.0, 2.0))
    assert scale.tolist() == [2, 2] and note is None
    scale, note = effective_scale(bin_info, (H, W), None)
    assert scale.tolist() == [2, 2] and "--manifest" in note
    # Clipped to the original image.
    np.testing.assert_allclose(boxes_to_original(np.array([[-8, 600, 400, 700]]), scale, (H, W)), [[0, 300, 160, 320]])


@pytest.mark.parametrize("info,manifest", [(SEED_INFO, False), (BIN_INFO, True), (BIN_INFO, False)])
def test_report_maps_boxes_to_original_pixels(tmp_path, label_map, info, manifest):
    pattern = make_images(tmp_path / "images", ["a.jpg"])
    write_seed_outputs(run_folder(tmp_path), "00000", [((20, 40, 60, 100), 1, 0.87)], info)
    kwargs = {}
    if manifest:
        m = {"image_size": [640, 640],
             "images": [{"index": 0, "bin": "00000.bin", "source": str(tmp_path / "images/a.jpg"),
                         "original_size": [H, W], "scale": [2.0, 2.0], "resized_size": [320, 640]}]}
        (tmp_path / "manifest.json").write_text(json.dumps(m))
        kwargs = {"manifest": tmp_path / "manifest.json"}
    res = write_report(tmp_path / "out", label_map, tmp_path / "r.html", None if manifest else pattern, verbose=False,
                       **kwargs)
    (det,) = res.detections[str(tmp_path / "images/a.jpg")]
    assert det.box == pytest.approx((10, 20, 30, 50)) and det.name == "person"
    assert detail_rows(tmp_path / "r.html")["a.jpg"] == [["person", "87.0%", "10.0", "20.0", "30.0", "50.0"]]
    notes = report_data(tmp_path / "r.html")[1][0]["notes"]  # shown under the picture
    assert any("assumed a spinenet image2bin letterbox" in n for n in notes) == (info is BIN_INFO and not manifest)


@pytest.mark.parametrize("dirname", [timeline_dirname, current_time_dirname])
@pytest.mark.parametrize("fmt", ["TXT", "BIN"])
@pytest.mark.parametrize("give_parent", [True, False])
def test_folder_names_and_formats(tmp_path, label_map, dirname, fmt, give_parent):
    pattern = make_images(tmp_path / "images", ["a.jpg", "b.jpg"])
    folder = run_folder(tmp_path, dirname)
    for i in range(2):
        write_seed_outputs(folder, f"{i:05d}", [((20, 40, 60, 100), 2, 0.5)], fmt=fmt)
    res = write_report(folder.parent if give_parent else folder, label_map, tmp_path / "r.html", pattern,
                       verbose=False)
    assert res.run_folder == folder and res.num_images == 2 and res.num_drawn == 2 and not res.missing


def test_missing_outputs_and_non_image_files_are_counted(tmp_path, label_map, capsys):
    pattern = make_images(tmp_path / "images", ["a.jpg", "b.jpg", "d.jpg"])
    (tmp_path / "images" / "c.txt").write_text("not an image")  # sorted: a b c.txt d -> indices 0 1 - 2
    for i in (0, 2):  # image b (index 1) has no outputs
        write_seed_outputs(run_folder(tmp_path), f"{i:05d}", [((20, 40, 60, 100), 1, 0.9)])
    res = write_report(tmp_path / "out", label_map, tmp_path / "r.html", pattern, verbose=False)
    assert res.num_images == 2
    assert [m[0] for m in res.missing] == [str(tmp_path / "images/b.jpg")]
    assert [s[0] for s in res.skipped] == [str(tmp_path / "images/c.txt")]
    assert set(res.detections) == {str(tmp_path / "images/a.jpg"), str(tmp_path / "images/d.jpg")}
    page = (tmp_path / "r.html").read_text()
    assert "b.jpg" in page and "c.txt" in page and "00001_output_&lt;k&gt;" in page
    summary = res.summary()
    assert "1 image(s) without usable outputs" in summary and "b.jpg" in summary and "c.txt" in summary


def test_page_has_one_img_and_the_rows_per_image(tmp_path, label_map):
    pattern = make_images(tmp_path / "images", ["a.jpg", "b.jpg"])
    write_seed_outputs(run_folder(tmp_path), "00000", [((20, 40, 60, 100), 1, 0.9), ((0, 0, 40, 40), 2, 0.6),
                                                       ((0, 0, 10, 10), 2, 0.01)])  # below 0.05: not drawn
    write_seed_outputs(run_folder(tmp_path), "00001", [((100, 200, 300, 600), 7, 0.3)])  # id 7 not in the map
    res = write_report(tmp_path / "out", label_map, tmp_path / "r.html", pattern, verbose=False)
    index, records = report_data(tmp_path / "r.html")  # the index (built in the browser) lists both, in order
    assert [i[3] for i in index["images"]] == [r["name"] for r in records] == ["a.jpg", "b.jpg"]
    for k in range(2):  # the pictures are files beside the page
        with Image.open(tmp_path / f"r_files/img/{k:05d}.jpg") as im:
            assert im.format == "JPEG" and im.size == (W, H)
    rows = detail_rows(tmp_path / "r.html")
    assert [r[:2] for r in rows["a.jpg"]] == [["person", "90.0%"], ["car", "60.0%"]]  # not the 1% one
    assert rows["b.jpg"] == [["id 7", "30.0%", "50.0", "100.0", "150.0", "300.0"]]
    assert res.num_detections == 4 and res.num_drawn == 3


def test_max_boxes_to_draw(tmp_path, label_map):
    pattern = make_images(tmp_path / "images", ["a.jpg"])
    write_seed_outputs(run_folder(tmp_path), "00000", [((0, 0, 10 + i, 10 + i), 1, 0.9 - 0.1 * i) for i in range(5)])
    res = write_report(tmp_path / "out", label_map, tmp_path / "r.html", pattern, max_boxes_to_draw=2, verbose=False)
    assert res.num_drawn == 2 and res.num_detections == 5


def test_html_in_names_is_escaped(tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("1:<script>alert(1)</script>\n")
    pattern = make_images(tmp_path / "images", ["x<b>&y.jpg"])
    write_seed_outputs(run_folder(tmp_path), "00000", [((20, 40, 60, 100), 1, 0.9)])
    write_report(tmp_path / "out", labels, tmp_path / "r.html", pattern, verbose=False)
    page = (tmp_path / "r.html").read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # legend and class filter, escaped
    # the only scripts are the page's own two
    assert re.findall(r"<script[^>]*>", page) == ['<script src="r_files/index.js">', '<script src="r_files/viewer.js">']
    assert "<b>" not in page and "x<b>" not in page
    # the data scripts carry the names as JSON with <, > and & escaped: nothing in them can close a <script>
    data = [tmp_path / "r_files/index.js", *(tmp_path / "r_files/data").glob("*.js")]
    assert len(data) == 2 and not any(c in f.read_text() for f in data for c in "<>&")
    index, records = report_data(tmp_path / "r.html")
    assert index["classes"] == {"1": "<script>alert(1)</script>"} and records[0]["name"] == "x<b>&y.jpg"


def test_bad_label_map_line_is_named(tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("1:person\nbicycle\n")
    pattern = make_images(tmp_path / "images", ["a.jpg"])
    write_seed_outputs(run_folder(tmp_path), "00000", [])
    with pytest.raises(ValueError, match=re.escape(f"{labels}:2:")):
        write_report(tmp_path / "out", labels, tmp_path / "r.html", pattern, verbose=False)


def test_unwritable_html_folder_is_named(tmp_path, label_map):
    pattern = make_images(tmp_path / "images", ["a.jpg"])
    write_seed_outputs(run_folder(tmp_path), "00000", [])
    (tmp_path / "afile").write_text("")  # a file where the folder should be (root ignores permission bits)
    with pytest.raises(ValueError, match=r"the HTML report's folder .*afile is a file"):
        write_report(tmp_path / "out", label_map, tmp_path / "afile" / "r.html", pattern, verbose=False)


def test_nothing_to_report_names_folder_and_pattern(tmp_path, label_map):
    pattern = make_images(tmp_path / "images", ["a.jpg"])
    write_seed_outputs(run_folder(tmp_path), "00005", [])  # outputs, but none for image 0
    with pytest.raises(ValueError, match=r"nothing to report from .*out.*images/\*"):
        write_report(tmp_path / "out", label_map, tmp_path / "r.html", pattern, verbose=False)
    with pytest.raises(FileNotFoundError, match="no files match"):
        write_report(tmp_path / "out", label_map, tmp_path / "r.html", str(tmp_path / "none/*.jpg"), verbose=False)


def coco_annotations(path, names, extra_categories=()):
    """One 30x20 ``person`` per image at original xywh (20, 10, 30, 20) = yxyx (10, 20, 30, 50); the
    ``extra_categories`` (id, name) have no object."""
    images = [{"id": 10 + i, "file_name": f"val/{n}", "height": H, "width": W} for i, n in enumerate(names)]
    anns = [{"id": i + 1, "image_id": img["id"], "category_id": 1, "bbox": [20, 10, 30, 20], "area": 600,
             "iscrowd": 0} for i, img in enumerate(images)]
    categories = [{"id": 1, "name": "person"}] + [{"id": i, "name": n} for i, n in extra_categories]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
    return path


def _no_nan(constant: str):
    raise AssertionError(f"{constant} in a JSON file: not JSON, strict readers reject it")


@pytest.mark.parametrize("box,ap,ap50,ap75", [
    ((20, 40, 60, 100), 1.0, 1.0, 1.0),  # exactly the ground truth after dividing by the scale 2
    # Shifted right by 6 original pixels: IoU = 24*20 / (600 + 600 - 480) = 2/3, so it matches at the IoU
    # thresholds t <= 2/3 (0.50, 0.55, 0.60, 0.65: COCO's IoU >= t rule): AP = 4/10, AP50 = 1, AP75 = 0.
    ((20, 52, 60, 112), 0.4, 1.0, 0.0),
])
def test_map_with_annotations(tmp_path, label_map, box, ap, ap50, ap75):
    pattern = make_images(tmp_path / "images", ["a.jpg", "extra.jpg"])
    # extra.jpg is not annotated; no image holds a car (COCO's per-class AP: NaN)
    ann = coco_annotations(tmp_path / "instances.json", ["a.jpg"], extra_categories=[(2, "car")])
    for i in range(2):
        write_seed_outputs(run_folder(tmp_path), f"{i:05d}", [(box, 1, 0.9)])
    res = write_report(tmp_path / "out", label_map, tmp_path / "r.html", pattern, annotations=ann, verbose=False)
    m = res.metrics
    assert (m["AP"], m["AP50"], m["AP75"]) == pytest.approx((ap, ap50, ap75)) and m["num_images"] == 1
    assert res.unmatched == ["extra.jpg"]
    saved = json.loads((tmp_path / "r_metrics.json").read_text(), parse_constant=_no_nan)  # strict JSON
    assert saved["AP"] == pytest.approx(ap) and saved["unmatched_images"] == ["extra.jpg"]
    assert saved["per_class_ap"]["car"] is None  # a class without ground truth: null, not NaN
    page = (tmp_path / "r.html").read_text()
    assert "COCO metrics (1 image(s))" in page and f'<td class="num">{ap:.3f}</td>' in page and "extra.jpg" in page


def test_cli(tmp_path, label_map, capsys):
    pattern = make_images(tmp_path / "images", ["a.jpg"])
    write_seed_outputs(run_folder(tmp_path, current_time_dirname), "00000", [((20, 40, 60, 100), 1, 0.9)], fmt="BIN")
    parser = argparse.ArgumentParser()
    add_report_parser(parser.add_subparsers())
    args = parser.parse_args(["report", "--output", str(tmp_path / "out"), "--label_map_file", str(label_map),
                              "--image_file_pattern", pattern, "--output_html", str(tmp_path / "r.html"),
                              "--max_boxes_to_draw", "5", "--min_score_threshold", "0.5", "--no_progress"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "1 image(s), 1 detection(s), 1 drawn" in out and str(tmp_path / "r.html") in out


def test_with_spinenet_image2bin_manifest(tmp_path, label_map):
    """The real image2bin's manifest (and, without it, its letterbox rule) take boxes back to the original."""
    from spinenet.deploy.image2bin import image2bin

    pattern = make_images(tmp_path / "images", ["a.jpg"], size=(480, 360))  # scale 4/3, resized 640x480
    image2bin(pattern, tmp_path / "bins", 640, progress=False)
    write_seed_outputs(run_folder(tmp_path), "00000", [((100, 50, 400, 300), 1, 0.9)], BIN_INFO)
    expected = (75, 37.5, 300, 225)
    res = write_report(tmp_path / "out", label_map, tmp_path / "r.html", manifest=tmp_path / "bins/manifest.json",
                       verbose=False)
    assert res.detections[str(tmp_path / "images/a.jpg")][0].box == pytest.approx(expected)
    res = write_report(tmp_path / "out", label_map, tmp_path / "r.html", pattern, verbose=False)
    assert res.detections[str(tmp_path / "images/a.jpg")][0].box == pytest.approx(expected)
    # The images moved since image2bin: the manifest's sources are found again by name through the pattern.
    (tmp_path / "images").rename(tmp_path / "moved")
    res = write_report(tmp_path / "out", label_map, tmp_path / "r.html", str(tmp_path / "moved/*.jpg"),
                       manifest=tmp_path / "bins", verbose=False)
    assert list(res.detections) == [str(tmp_path / "moved/a.jpg")]
