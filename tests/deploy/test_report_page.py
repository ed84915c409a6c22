"""The report page's pieces: script-safe JSON, display sizes, rounding, the CLI's threshold, and that a failed
run leaves no half-written report (report_assets, report_page)."""

import argparse
import json

import pytest
from test_report import label_map, make_images, report_data, run_folder, write_seed_outputs  # noqa: F401

from spinenet.deploy import report_assets
from spinenet.deploy.report import write_report
from spinenet.deploy.report_assets import display_size, js_json
from spinenet.deploy.report_cli import add_report_parser
from spinenet.deploy.report_page import fmt


def test_js_json_cannot_close_a_script_and_round_trips():
    value = {"name": "</script><script>alert(1)</script><!-- & \u2028 é", "k": [1, 2.5, None]}
    text = js_json(value)
    assert not any(c in text for c in "<>&\u2028") and text.isascii()
    assert json.loads(text) == value


@pytest.mark.parametrize("size,shown", [
    ((128, 128), (512, 512, True)),  # the synthetic images: 4x, pixelated
    ((20, 47), (200, 470, True)),  # 47 px wide: 10x
    ((1, 1), (512, 512, True)),  # a 1x1 image is a visible square, not a dot
    ((200, 300), (200, 300, False)),  # over half the display size: as it is
    ((3000, 4000), (384, 512, False)),  # large: shrunk to 512 on the long side
])
def test_display_size(size, shown):
    assert display_size(*size) == shown


def test_summary_values_are_rounded():
    assert fmt(213.30894069166672) == "213.3" and fmt(0.000123456) == "0.0001235" and fmt(12345.678) == "12,345.7"
    assert fmt(7) == "7" and fmt("onnxruntime") == "onnxruntime"


def test_run_timing_is_rounded_on_the_page(tmp_path, label_map):  # noqa: F811
    pattern = make_images(tmp_path / "images", ["a.jpg"])
    folder = run_folder(tmp_path)
    write_seed_outputs(folder, "00000", [((20, 40, 60, 100), 1, 0.9)])
    (folder / "summary.json").write_text(json.dumps({"backend": "onnxruntime", "mean_ms": 213.30894069166672}))
    write_report(tmp_path / "out", label_map, tmp_path / "r.html", pattern, verbose=False)
    page = (tmp_path / "r.html").read_text()
    assert "213.30894069166672" not in page and "<td>infer: mean_ms</td><td>213.309</td>" in page
    assert "<td>infer: backend</td><td>onnxruntime</td>" in page


def test_display_threshold_flag(tmp_path, label_map, capsys):  # noqa: F811
    pattern = make_images(tmp_path / "images", ["a.jpg"])
    write_seed_outputs(run_folder(tmp_path), "00000", [((20, 40, 60, 100), 1, 0.9), ((0, 0, 40, 40), 2, 0.4),
                                                       ((0, 0, 10, 10), 2, 0.1)])
    parser = argparse.ArgumentParser()
    add_report_parser(parser.add_subparsers())
    base = ["report", "--output", str(tmp_path / "out"), "--label_map_file", str(label_map), "--image_file_pattern",
            pattern, "--output_html", str(tmp_path / "r.html"), "--no_progress"]
    args = parser.parse_args(base)
    assert args.display_threshold == 0.3 and args.func(args) == 0
    index, records = report_data(tmp_path / "r.html")
    assert index["threshold"] == 0.3 and index["minScore"] == 0.05
    assert [d[1] for d in records[0]["dets"]] == pytest.approx([0.9, 0.4, 0.1])  # all kept: the control can go down
    assert "3 detection(s), 2 drawn" in capsys.readouterr().out  # drawn at 0.3
    args = parser.parse_args([*base, "--display_threshold", "0.5"])
    assert args.func(args) == 0 and report_data(tmp_path / "r.html")[0]["threshold"] == 0.5
    assert "3 detection(s), 1 drawn" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"--display_threshold must be within \[0, 1\], got 1.5"):
        args = parser.parse_args([*base, "--display_threshold", "1.5"])
        args.func(args)
    help_text = parser.format_help() + add_help(parser)
    assert "--display_threshold" in help_text and "default 0.3" in help_text


def add_help(parser) -> str:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["report"].format_help()


def _report_files(folder):
    files = [folder / "r.html", *(folder / "r_files").rglob("*")]
    return {p.relative_to(folder): p.read_bytes() for p in files if p.is_file()}


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith((".", "r_files", "r.html", "r_metrics")))


def test_failed_run_leaves_no_half_written_report_and_keeps_the_old_one(tmp_path, label_map, monkeypatch):  # noqa: F811
    pattern = make_images(tmp_path / "images", ["a.jpg", "b.jpg", "c.jpg"])
    for i in range(3):
        write_seed_outputs(run_folder(tmp_path), f"{i:05d}", [((20, 40, 60, 100), 1, 0.9)])
    original = report_assets.ReportFolder.add_picture
    calls = []

    def failing(self, k, pixels):
        calls.append(k)
        if k == 1:
            raise OSError(28, "No space left on device")
        return original(self, k, pixels)

    monkeypatch.setattr(report_assets.ReportFolder, "add_picture", failing)
    with pytest.raises(ValueError, match=f"cannot write the HTML report into folder {tmp_path}: No space left on "
                                         "device"):
        write_report(tmp_path / "out", label_map, tmp_path / "r.html", pattern, verbose=False)
    assert calls == [0, 1] and _leftovers(tmp_path) == []  # nothing half-written, no staging folder left
    # a good report, then a failed second run: the first stays whole
    monkeypatch.setattr(report_assets.ReportFolder, "add_picture", original)
    write_report(tmp_path / "out", label_map, tmp_path / "r.html", pattern, verbose=False)
    before = _report_files(tmp_path)
    assert len([p for p in before if p.parts[:2] == ("r_files", "img")]) == 3
    calls.clear()
    monkeypatch.setattr(report_assets.ReportFolder, "add_picture", failing)
    with pytest.raises(ValueError):
        write_report(tmp_path / "out", label_map, tmp_path / "r.html", pattern, verbose=False)
    assert _report_files(tmp_path) == before and _leftovers(tmp_path) == ["r.html", "r_files"]


def test_rerun_replaces_the_folder(tmp_path, label_map):  # noqa: F811
    pattern = make_images(tmp_path / "images", ["a.jpg", "b.jpg"])
    for i in range(2):
        write_seed_outputs(run_folder(tmp_path), f"{i:05d}", [((20, 40, 60, 100), 1, 0.9)])
    write_report(tmp_path / "out", label_map, tmp_path / "r.html", pattern, verbose=False)
    (tmp_path / "images" / "b.jpg").unlink()
    write_report(tmp_path / "out", label_map, tmp_path / "r.html", str(tmp_path / "images" / "*.jpg"), verbose=False)
    assert sorted(p.name for p in (tmp_path / "r_files" / "img").iterdir()) == ["00000.jpg"]
    assert _leftovers(tmp_path) == ["r.html", "r_files"]  # the previous folder removed, no temporary left


def test_a_file_where_the_folder_goes_is_named(tmp_path, label_map):  # noqa: F811
    pattern = make_images(tmp_path / "images", ["a.jpg"])
    write_seed_outputs(run_folder(tmp_path), "00000", [])
    (tmp_path / "r_files").write_text("mine")
    with pytest.raises(ValueError, match=r"r_files is a file, where the report's folder of pictures and data goes; "
                                         "remove it or choose another --output_html"):
        write_report(tmp_path / "out", label_map, tmp_path / "r.html", pattern, verbose=False)
    assert (tmp_path / "r_files").read_text() == "mine" and not (tmp_path / "r.html").exists()
