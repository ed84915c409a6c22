"""`spinenet evaluate` on hard inputs: no images, some missing, another label map, skipped files named, a
read-only output folder refused before the work (without root's permission override), help for every option."""

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys

import pytest
import torch

from spinenet.cli import build_parser, main
from spinenet.config import load_config
from spinenet.data.synthetic import make_synthetic_dataset
from spinenet.engine.checkpoint import make_checkpoint, save_checkpoint
from spinenet.modeling.factory import build_retinanet
from spinenet.registry import config_path

OVERRIDE = {"architecture": {"num_classes": 6}, "retinanet_parser": {"output_size": [128, 128]}}
SHAPES = {1: "circle", 2: "square", 3: "triangle", 4: "star", 5: "cross"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(synthetic data root with 4 val images, checkpoint with the shapes label map)."""
    root = tmp_path_factory.mktemp("eval")
    make_synthetic_dataset(root / "data", num_train=0, num_val=4, image_size=128, seed=1, progress=False)
    cfg = load_config(config_path("retinanet_spinenet49s"), OVERRIDE)
    torch.manual_seed(0)
    ckpt = make_checkpoint(build_retinanet(cfg), cfg, variant="retinanet_spinenet49s", label_map=SHAPES)
    save_checkpoint(ckpt, root / "model.pt")
    return root


def evaluate(setup, images, out, *extra, ann=None):
    return main(["evaluate", "--checkpoint", str(setup / "model.pt"), "--val_data",
                 str(ann or setup / "data/annotations/instances_val.json"), str(images), "--output", str(out),
                 "--device", "cpu", "--num_workers", "0", "--no_progress", *extra])


@pytest.mark.parametrize("folder", ["empty", "wrong"])
def test_no_annotated_image_found_is_a_one_line_error(setup, tmp_path, capsys, folder):
    images = tmp_path / folder
    images.mkdir()
    if folder == "wrong":  # a folder of other images
        shutil.copy(setup / "data/val/000000000001.jpg", images / "holiday.jpg")
    assert evaluate(setup, images, tmp_path / "out") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("spinenet evaluate: error:")
    assert f"none of the 4 images listed in {setup / 'data/annotations/instances_val.json'}" in err
    assert str(images) in err
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_annotations_without_images_are_a_one_line_error(setup, tmp_path, capsys):
    doc = json.loads((setup / "data/annotations/instances_val.json").read_text())
    ann = tmp_path / "no_images.json"
    ann.write_text(json.dumps({**doc, "images": [], "annotations": []}))
    assert evaluate(setup, setup / "data/val", tmp_path / "out", ann=ann) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{ann} lists no images" in err


def test_some_images_missing_warns_with_the_count_and_names_them(setup, tmp_path, capsys, caplog):
    images = tmp_path / "val"
    shutil.copytree(setup / "data/val", images)
    (images / "000000000002.jpg").unlink()
    (images / "000000000003.jpg").write_bytes(b"not a jpeg")
    with caplog.at_level(logging.WARNING):
        # A worker process reads the images: the skips happen in its copy of the dataset.
        assert evaluate(setup, images, tmp_path / "out", "--num_workers", "1") == 0
    warnings = [r.getMessage() for r in caplog.records if r.name == "spinenet"]
    assert any("only 3 of the 4 images listed in" in w and str(images) in w for w in warnings), warnings
    out = capsys.readouterr().out
    assert "2 image(s) skipped: 000000000002.jpg (missing_image), 000000000003.jpg (corrupt_image)" in out
    text = (tmp_path / "out" / "metrics.json").read_text()
    assert "NaN" not in text and "Infinity" not in text  # strict JSON: a class without ground truth is null
    metrics = json.loads(text)
    assert [(s["file_name"], s["reason"]) for s in metrics["skipped_images"]] == [
        ("000000000002.jpg", "missing_image"), ("000000000003.jpg", "corrupt_image")]
    assert metrics["num_images"] == 2
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["metrics.json", "results.json"]  # no temp


@pytest.mark.parametrize("categories, shown", [
    ([{"id": i, "name": n} for i, n in zip(range(1, 6), ["square", "circle", "triangle", "star", "cross"],
                                           strict=True)], "id 1: 'circle' vs 'square'"),
    ([{"id": 0, "name": "blob"}] + [{"id": i, "name": n} for i, n in SHAPES.items()], "id 0: 'blob' only in"),
    ([{"id": i, "name": n} for i, n in SHAPES.items() if i < 5], "id 5: 'cross' only in checkpoint"),
])
def test_label_map_differing_from_the_categories_warns_showing_both(setup, tmp_path, caplog, categories, shown):
    doc = json.loads((setup / "data/annotations/instances_val.json").read_text())
    ann = tmp_path / "renamed.json"
    ann.write_text(json.dumps({**doc, "categories": categories}))
    with caplog.at_level(logging.WARNING):
        assert evaluate(setup, setup / "data/val", tmp_path / "out", ann=ann) == 0
    warnings = [r.getMessage() for r in caplog.records if r.name == "spinenet"]
    assert any("label map of checkpoint" in w and shown in w and str(ann) in w for w in warnings), warnings


def test_matching_label_map_gives_no_warning(setup, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        assert evaluate(setup, setup / "data/val", tmp_path / "out") == 0
    assert [r.getMessage() for r in caplog.records if r.name == "spinenet"] == []


def without_root_override(args, **kw):
    """Run ``python args`` as root without CAP_DAC_OVERRIDE (and every other capability): permission bits apply,
    as for any user. (A real other uid cannot reach this interpreter, which lives under /root.)"""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to drop root's capabilities")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(["setpriv", "--bounding-set=-all", "--inh-caps=-all", sys.executable, *args],
                          capture_output=True, text=True, timeout=300, env=env, **kw)


def test_read_only_output_folder_is_refused_before_evaluating(setup, tmp_path):
    out = tmp_path / "read_only"
    out.mkdir()
    out.chmod(0o555)
    r = without_root_override(["-m", "spinenet.cli", "evaluate", "--checkpoint", str(setup / "model.pt"),
                               "--val_data", str(setup / "data/annotations/instances_val.json"),
                               str(setup / "data/val"), "--output", str(out / "eval"), "--device", "cpu",
                               "--num_workers", "0", "--no_progress"])
    assert r.returncode == 1, r.stderr
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("spinenet evaluate: error: cannot write to evaluation output folder") and str(out) in err
    assert "AP" not in r.stdout  # refused before the evaluation, not after it
    assert list(out.iterdir()) == []


def test_every_evaluate_option_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    evaluate_parser = sub.choices["evaluate"]
    lacking = [a.option_strings for a in evaluate_parser._actions if a.option_strings and not a.help]
    assert lacking == []


def test_ctrl_c_during_evaluation_is_one_line_and_writes_nothing(setup, tmp_path):
    """SIGINT once the progress bar shows the evaluation running (data workers alive): exit 130, one line."""
    import signal
    import time

    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "spinenet.cli", "evaluate", "--checkpoint", str(setup / "model.pt"),
                             "--val_data", str(setup / "data/annotations/instances_val.json"), str(setup / "data/val"),
                             "--output", str(out), "--device", "cpu", "--num_workers", "2", "--batch_size", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        seen, deadline = b"", time.monotonic() + 120
        while b"evaluate:" not in seen:  # tqdm's bar on stderr: the first batch is being scored
            assert time.monotonic() < deadline and proc.poll() is None, seen
            seen += os.read(proc.stderr.fileno(), 256)
        proc.send_signal(signal.SIGINT)
        stdout, rest = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = (seen + rest).decode()
    assert proc.returncode == 130, err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and "%|" not in line]
    assert lines == ["spinenet evaluate: interrupted"], err
    assert b"AP" not in stdout
    assert list(out.iterdir()) == []  # the folder checked writable before the work; no result, no temporary file


@pytest.mark.slow
def test_two_rank_evaluation_names_the_images_each_rank_skipped(setup, tmp_path):
    """Rank r reads images r, r + 2, ...: a missing image on one rank and a corrupt one on the other both reach
    rank 0's report and metrics.json."""
    images = tmp_path / "val"
    shutil.copytree(setup / "data/val", images)
    (images / "000000000002.jpg").unlink()  # index 1: rank 1
    (images / "000000000003.jpg").write_bytes(b"not a jpeg")  # index 2: rank 0
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    r = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", "29547", "-m", "spinenet.cli", "evaluate",
                        "--checkpoint", str(setup / "model.pt"), "--val_data",
                        str(setup / "data/annotations/instances_val.json"), str(images),
                        "--output", str(tmp_path / "o"), "--num_workers", "0", "--no_progress", "--device", "cpu"],
                       capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 image(s) skipped: 000000000002.jpg (missing_image), 000000000003.jpg (corrupt_image)" in r.stdout
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert [s["file_name"] for s in metrics["skipped_images"]] == ["000000000002.jpg", "000000000003.jpg"]
