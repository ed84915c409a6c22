"""What the deployment commands tell a user: several image patterns and brace lists, export's progress and its
warning on a size the checkpoint was not trained at, a quiet `infer --quiet`, and help for every option."""

import json

import numpy as np
import pytest
from PIL import Image
from test_image2bin_infer import FakeSession

from spinenet import get_config
from spinenet.cli import build_parser, main
from spinenet.deploy import cli as deploy_cli
from spinenet.deploy import infer as infer_mod
from spinenet.deploy.file_patterns import expand_braces, match_files
from spinenet.deploy.report import collect_images
from spinenet.engine.checkpoint import make_checkpoint, save_checkpoint
from spinenet.modeling.factory import build_retinanet

DEPLOY_COMMANDS = ("export", "image2bin", "infer", "report", "detect", "benchmark")


@pytest.mark.parametrize("pattern,expected", [
    ("*.{jpg,png}", ["*.jpg", "*.png"]),
    ("{a,b}/x{1,2}.jpg", ["a/x1.jpg", "a/x2.jpg", "b/x1.jpg", "b/x2.jpg"]),
    ("x.{jp{g,eg},png}", ["x.jpg", "x.jpeg", "x.png"]),  # nested, as bash expands it
    ("{x}.jpg", ["{x}.jpg"]),  # no comma: literal braces, as in bash
    ("plain/*.jpg", ["plain/*.jpg"]),
])
def test_expand_braces(pattern, expected):
    assert expand_braces(pattern) == expected


def test_image2bin_takes_several_patterns_and_braces(tmp_path, capsys):
    for folder, name in [("a", "2.jpg"), ("a", "1.png"), ("a", "3.gif"), ("b", "0.jpg")]:
        (tmp_path / folder).mkdir(exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / folder / name)
    args = ["image2bin", "--image_file_pattern", str(tmp_path / "a/*.{jpg,png}"), str(tmp_path / "b/*.jpg"),
            str(tmp_path / "a/2.jpg"), "--output_dir", str(tmp_path / "bins"), "--image_size", "128", "--quiet"]
    assert main(args) == 0
    manifest = json.loads((tmp_path / "bins/manifest.json").read_text())
    sources = [m["source"] for m in manifest["images"]]
    # pooled, each file once, sorted together (the .gif matched no pattern)
    assert sources == [str(tmp_path / p) for p in ("a/1.png", "a/2.jpg", "b/0.jpg")]
    # report numbers a pattern list the same way, so it matches without the manifest too
    entries, _ = collect_images([str(tmp_path / "a/*.{jpg,png}"), str(tmp_path / "b/*.jpg")], None)
    assert [str(e.source) for e in entries] == sources
    assert match_files(str(tmp_path / "a/*.{png,jpg}")) == sources[:2]


def test_help_describes_every_option_and_several_patterns(capsys):
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for command in DEPLOY_COMMANDS:
        for action in sub.choices[command]._actions:
            if action.dest != "help":
                assert action.help and action.help.strip(), f"spinenet {command} {action.option_strings}: no help"
    with pytest.raises(SystemExit):
        main(["image2bin", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "one or more globs" in out and "'*.{jpg,png}'" in out


def test_infer_quiet_prints_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(infer_mod, "open_session", lambda *a, **k: FakeSession())
    (tmp_path / "in").mkdir()
    for i in range(3):
        np.zeros((1, 4, 4, 3), np.uint8).tofile(tmp_path / "in" / f"{i}.bin")
    assert main(["infer", "--model", "m.onnx", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                 "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    assert len(list((tmp_path / "out").glob("*/*_output_0.txt"))) == 3  # the work was done


@pytest.fixture(scope="module")
def checkpoint_256(tmp_path_factory):
    """A 49S checkpoint whose config says it was trained at 256x256."""
    cfg = get_config("retinanet_spinenet49s", num_classes=3)
    cfg.retinanet_parser.output_size = [256, 256]
    path = tmp_path_factory.mktemp("ckpt") / "m.pt"
    save_checkpoint(make_checkpoint(build_retinanet(cfg).eval(), cfg, variant="retinanet_spinenet49s"), path)
    return path


def test_export_reports_progress_and_warns_on_another_size(checkpoint_256, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(deploy_cli, "HEARTBEAT_S", 0.2)
    assert main(["export", "--checkpoint", str(checkpoint_256), "--output", str(tmp_path / "m.onnx"),
                 "--input_image_size", "128,128"]) == 0
    lines = capsys.readouterr().out.splitlines()
    order = [next(i for i, line in enumerate(lines) if line.startswith(p))
             for p in ("loading", "warning: --input_image_size 128,128", "building and exporting", "wrote")]
    assert order == sorted(order)
    warning = lines[order[1]]
    assert "(256,256)" in warning and "--input_image_size 256,256" in warning
    assert any(line.strip().startswith("still exporting") for line in lines[order[2]:order[3]])


def test_export_at_the_trained_size_does_not_warn(checkpoint_256, tmp_path, monkeypatch, capsys):
    def fake_export(model, path, **kwargs):  # the size check is the CLI's; the export itself is tested elsewhere
        path.write_bytes(b"onnx")
        return path

    monkeypatch.setattr("spinenet.deploy.export.export_onnx", fake_export)
    assert main(["export", "--checkpoint", str(checkpoint_256), "--output", str(tmp_path),
                 "--input_image_size", "256"]) == 0
    out = capsys.readouterr().out
    assert "warning" not in out and f"wrote {tmp_path / 'retinanet_spinenet49s.onnx'}" in out
