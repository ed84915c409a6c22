"""A ``spinenet infer`` killed mid-run leaves a folder that ``spinenet report`` refuses (or, with --allow_partial,
reports with a warning), naming how many inputs have no outputs. The kill is a real SIGKILL of the CLI process."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import spinenet
from spinenet.deploy.image2bin import image2bin

NUM_INPUTS = 300  # at ~10-50 ms each the run lasts seconds; it is killed after its first output set
SRC = str(Path(spinenet.__file__).resolve().parents[1])


def _cli(*args, **kwargs):
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "spinenet.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def _complete_sets(run_dir: Path) -> int:
    names = {p.name.split("_output_")[0] for p in run_dir.glob("*_output_*")}
    return sum(all((run_dir / f"{n}_output_{k}.txt").exists() for k in range(5)) for n in names)


@pytest.mark.slow
def test_killed_infer_is_refused_by_report(small_onnx, tmp_path):
    onnx = small_onnx
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(NUM_INPUTS):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(images / f"im{i:03d}.png")
    image2bin(str(images / "*.png"), tmp_path / "bins", 128, progress=False)
    labels = tmp_path / "labels.csv"
    labels.write_text("1:a\n2:b\n")

    proc = _cli("infer", "--model", str(onnx), "--input", str(tmp_path / "bins"), "--output", str(tmp_path / "out"),
                "--threads", "1", "--quiet")
    deadline = time.monotonic() + 120
    run_dirs = []
    while time.monotonic() < deadline and proc.poll() is None:
        run_dirs = list((tmp_path / "out").glob("*/00000_output_4.txt"))
        if run_dirs:
            break
        time.sleep(0.01)
    assert proc.poll() is None, f"infer ended before the kill: {proc.communicate()}"
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    run_dir = run_dirs[0].parent
    done = _complete_sets(run_dir)
    assert 1 <= done < NUM_INPUTS and not (run_dir / "summary.json").exists()

    report = ["report", "--output", str(tmp_path / "out"), "--manifest", str(tmp_path / "bins"),
              "--label_map_file", str(labels), "--output_html", str(tmp_path / "r.html"), "--no_progress"]
    out, err = _cli(*report).communicate()
    assert f"{NUM_INPUTS - done} of {NUM_INPUTS} input(s) have no outputs" in err and "--allow_partial" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "r.html").exists()

    proc = _cli(*report, "--allow_partial")
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    assert f"warning: {run_dir} is an unfinished spinenet infer run" in out
    assert f"{NUM_INPUTS - done} image(s) without usable outputs" in out  # every missing input is listed
    assert "unfinished spinenet infer run" in (tmp_path / "r.html").read_text()


def test_finished_infer_leaves_no_marker(small_onnx, tmp_path):
    from spinenet.deploy.infer import run_inference
    from spinenet.deploy.run_state import MARKER, check_run_complete

    onnx = small_onnx
    (tmp_path / "bins").mkdir()
    np.zeros((1, 128, 128, 3), np.uint8).tofile(tmp_path / "bins" / "00000.bin")
    result = run_inference(onnx, tmp_path / "bins", tmp_path / "out", progress=False)
    assert not (result.run_dir / MARKER).exists() and (result.run_dir / "summary.json").exists()
    assert check_run_complete(result.run_dir) is None
