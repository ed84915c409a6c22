"""`spinenet report --from_results` (spinenet evaluate's results.json) and `--from_detect` (spinenet detect's
output): the files come from this project's own writers, the page scores as `spinenet evaluate` does, and bad
input is a one-line error naming the file and the fix with no page written."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_detect_outputs import fixed_session  # noqa: F401 (fixture: detect with fixed detections)

from spinenet.cli import main
from spinenet.deploy.report_sources import detect_source, results_source
from spinenet.engine.evaluate import CocoEvaluator

SIZES = [(40, 60), (50, 50), (64, 32)]  # (h, w) of img0..img2


@pytest.fixture
def evaluated(tmp_path):
    """Images, their annotations and a results.json written by CocoEvaluator (as spinenet evaluate writes it)."""
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    images, anns = [], []
    for i, (h, w) in enumerate(SIZES):
        Image.new("RGB", (w, h), (30 * i, 100, 200)).save(tmp_path / "images" / f"img{i}.png")
        images.append({"id": 7 + i, "file_name": f"val/img{i}.png", "width": w, "height": h})
        for _ in range(3):
            x, y = rng.uniform(0, w / 2), rng.uniform(0, h / 2)
            anns.append({"id": len(anns) + 1, "image_id": 7 + i, "category_id": int(rng.integers(1, 3)),
                         "bbox": [x, y, w / 3, h / 3], "area": w * h / 9, "iscrowd": 0})
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns,
                               "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "<b>dog</b>"}]}))
    evaluator = CocoEvaluator(ann)
    boxes = torch.zeros(3, 100, 4)
    scores = torch.full((3, 100), -1.0)
    classes = torch.zeros(3, 100, dtype=torch.int64)
    for a in anns:  # detections near the boxes (in 2x-resized input pixels, as the model sees them)
        b, k = a["image_id"] - 7, int((scores[a["image_id"] - 7] > 0).sum())
        x, y, w, h = (v + rng.normal(0, 2) for v in a["bbox"])
        boxes[b, k] = torch.tensor([y, x, y + h, x + w]) * 2
        scores[b, k], classes[b, k] = float(rng.uniform(0.1, 1)), a["category_id"] if rng.random() < 0.8 else 3
    boxes[1, :] = 0  # img1: no detections at all (still scored)
    scores[1, :] = -1
    info = torch.tensor([[[h * 2, w * 2], [128, 128], [2, 2], [0, 0]] for h, w in SIZES], dtype=torch.float32)
    evaluator.process({"detection_boxes": boxes, "detection_classes": classes, "detection_scores": scores}, info,
                      [7, 8, 9])
    results = evaluator.write_results(tmp_path / "eval" / "results.json")
    metrics = evaluator.evaluate(verbose=False)
    return {"ann": ann, "results": results, "metrics": metrics, "pattern": str(tmp_path / "images" / "*.png"),
            "html": tmp_path / "r.html"}


def test_from_results_scores_as_spinenet_evaluate(evaluated, capsys):
    e = evaluated
    assert main(["report", "--from_results", str(e["results"]), "--annotations", str(e["ann"]),
                 "--image_file_pattern", e["pattern"], "--output_html", str(e["html"]), "--no_progress"]) == 0
    out = capsys.readouterr().out
    assert f"COCO AP {e['metrics']['AP']:.4f}" in out and "over 3 image(s)" in out
    saved = json.loads(e["html"].with_name("r_metrics.json").read_text())
    for key in ("AP", "AP50", "AP75", "AR100"):  # the same numbers, not just close
        assert saved[key] == e["metrics"][key], key
    assert saved["per_class_ap"] == e["metrics"]["per_class_ap"]
    src = results_source(e["results"], e["ann"], e["pattern"])
    assert [i.size for i in src.images] == SIZES and src.label_map == {1: "cat", 2: "<b>dog</b>"}
    listed = json.loads(e["results"].read_text())
    first = [r for r in listed if r["image_id"] == 7]
    x, y, w, h = first[0]["bbox"]
    out0 = src.read("00000")
    assert out0["DetectionBoxes"][0, 0].tolist() == pytest.approx([y, x, y + h, x + w], abs=1e-4)
    assert (out0["DetectionScores"][0] > 0).sum() == len(first)
    assert (src.read("00001")["DetectionScores"] > 0).sum() == 0
    assert out0["ImageInfo"][0].tolist() == [[40, 60], [40, 60], [1, 1], [0, 0]]


def test_from_detect_reads_what_detect_writes(tmp_path, fixed_session, capsys):  # noqa: F811
    images = tmp_path / "img"
    images.mkdir()
    for n in ("a.jpg", "b.jpg"):
        Image.new("RGB", (64, 64), (200, 10, 10)).save(images / n)
    det_dir = tmp_path / "detected"
    assert main(["detect", str(images / "a.jpg"), str(images / "b.jpg"), "--model", "m.onnx", "--output",
                 str(det_dir)]) == 0
    capsys.readouterr()
    html = tmp_path / "page.html"
    assert main(["report", "--from_detect", str(det_dir), "--output_html", str(html), "--no_progress"]) == 0
    out = capsys.readouterr().out
    assert "2 image(s), 4 detection(s)" in out and "score >= 0.3" in out
    src = detect_source(det_dir)
    data = json.loads((det_dir / "detections.json").read_text())
    assert [str(i.source) for i in src.images] == [r["image"] for r in data["images"]]
    np.testing.assert_allclose(src.images[0].boxes, [d["box_yxyx"] for d in data["images"][0]["detections"]],
                               rtol=1e-6)
    # images moved since detect ran: found by name through --image_file_pattern, else skipped with the reason
    moved = tmp_path / "moved"
    (images).rename(moved)
    assert main(["report", "--from_detect", str(det_dir), "--image_file_pattern", str(moved / "*.jpg"),
                 "--output_html", str(html), "--no_progress"]) == 0
    assert "2 image(s)" in capsys.readouterr().out
    assert main(["report", "--from_detect", str(det_dir), "--output_html", str(html), "--no_progress"]) == 1
    err = capsys.readouterr().err  # never the annotated copies beside detections.json (boxes drawn on them)
    assert "no image to report" in err and "--image_file_pattern" in err


def _bad_results(e, kind):
    path = e["results"]
    if kind == "not_json":
        path.write_text(path.read_text()[:50])
    elif kind == "dict":
        path.write_text(json.dumps(e["metrics"]))
    elif kind == "no_score":
        data = json.loads(path.read_text())
        del data[2]["score"]
        path.write_text(json.dumps(data))
    elif kind == "bad_bbox":
        data = json.loads(path.read_text())
        data[1]["bbox"] = [1, 2, 3]
        path.write_text(json.dumps(data))
    elif kind == "other_ids":
        data = json.loads(path.read_text())
        data[0]["image_id"] = 999
        path.write_text(json.dumps(data))
    elif kind == "absent":
        path.unlink()
    return path


@pytest.mark.parametrize("kind, says", [("not_json", "not a valid JSON file"),
                                        ("dict", "metrics.json or an annotation"),
                                        ("no_score", "entry 2 lacks ['score']"), ("bad_bbox", "entry 1 is"),
                                        ("other_ids", "1 image id(s) are not in --annotations"),
                                        ("absent", "does not exist")])
def test_bad_results_file_is_a_one_line_error_naming_it(evaluated, capsys, kind, says):
    path = _bad_results(evaluated, kind)
    args = ["report", "--from_results", str(path), "--annotations", str(evaluated["ann"]), "--image_file_pattern",
            evaluated["pattern"], "--output_html", str(evaluated["html"]), "--no_progress"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("spinenet report: error:"), err
    assert str(path) in err and says in err, err
    assert not evaluated["html"].exists()


@pytest.mark.parametrize("drop, says", [("--annotations", "needs --annotations"),
                                        ("--image_file_pattern", "needs --image_file_pattern")])
def test_from_results_says_what_else_it_needs(evaluated, capsys, drop, says):
    args = {"--from_results": str(evaluated["results"]), "--annotations": str(evaluated["ann"]),
            "--image_file_pattern": evaluated["pattern"], "--output_html": str(evaluated["html"])}
    del args[drop]
    assert main(["report", *[x for kv in args.items() for x in kv]]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err and str(evaluated["results"]) in err, err


def test_bad_detect_folder_is_a_one_line_error(tmp_path, capsys):
    html = tmp_path / "r.html"
    (tmp_path / "empty").mkdir()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "detections.json").write_text(json.dumps({"images": [{"image": "x.jpg", "size": [4, 4]}]}))
    for folder, says in ((tmp_path / "empty", "does not exist: pass a spinenet detect --output folder"),
                         (bad, "not spinenet detect's detections.json (KeyError: 'detections')")):
        assert main(["report", "--from_detect", str(folder), "--output_html", str(html)]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and says in err and str(folder) in err, err
    assert main(["report", "--from_detect", str(bad), "--model", "x.onnx", "--output_html", str(html)]) == 1
    assert "--model is for --output folders" in capsys.readouterr().err
    assert main(["report", "--output", str(bad), "--output_html", str(html)]) == 1  # only --output needs a label map
    assert "--label_map_file is required with --output" in capsys.readouterr().err
    assert not html.exists()
