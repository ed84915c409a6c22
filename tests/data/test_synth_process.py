"""`spinenet synth` as a process: Ctrl-C gives one "interrupted" line, exit 130 and no partial dataset; a
read-only output folder is refused before any image is drawn (without root's permission override)."""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest


def env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def synth_cmd(output, *extra):
    return [sys.executable, "-m", "spinenet.cli", "synth", "--output", str(output), "--num_val", "0", *extra]


def _partial_images(output):
    return [p for p in output.rglob("*.jpg")] if output.exists() else []


@pytest.mark.parametrize("existing", [False, True])
def test_ctrl_c_leaves_nothing_half_written(tmp_path, existing):
    output = tmp_path / "ds"
    if existing:  # an earlier dataset, replaced with --overwrite: it must survive an interrupted replacement
        subprocess.run(synth_cmd(output, "--num_train", "2", "--image_size", "64", "--quiet"), check=True,
                       env=env(), timeout=120, capture_output=True)
        before = {p.relative_to(output): p.read_bytes() for p in output.rglob("*") if p.is_file()}
    proc = subprocess.Popen(synth_cmd(output, "--num_train", "5000", "--image_size", "256", "--quiet",
                                      *(["--overwrite", "--seed", "1"] if existing else [])),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    try:
        deadline = time.monotonic() + 120
        # Interrupt once images are being written (they go to a hidden staging folder first).
        while len([p for p in _partial_images(output) if ".synth-partial-" in str(p)]) < 3:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["spinenet synth: interrupted"], err
    if existing:
        after = {p.relative_to(output): p.read_bytes() for p in output.rglob("*") if p.is_file()}
        assert after == before  # the old dataset, intact; no staging folder, no new image
        assert [p.name for p in output.iterdir() if p.name.startswith(".")] == []
    else:
        assert not output.exists() or list(output.rglob("*")) == []


def test_read_only_output_folder_is_refused_before_the_work(tmp_path):
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to drop root's capabilities")
    parent = tmp_path / "read_only"
    parent.mkdir()
    parent.chmod(0o555)
    for output in (parent, parent / "new"):  # an existing read-only folder, and one that can't be created
        # Root without CAP_DAC_OVERRIDE: permission bits apply as for any user.
        r = subprocess.run(["setpriv", "--bounding-set=-all", "--inh-caps=-all",
                            *synth_cmd(output, "--num_train", "2", "--image_size", "64", "--quiet")],
                           capture_output=True, text=True, timeout=120, env=env())
        assert r.returncode == 1, r.stderr
        err = r.stderr.strip()
        assert len(err.splitlines()) == 1, err
        assert err.startswith(f"spinenet synth: error: cannot write to synth output folder {output}"), err
        assert "permission denied" in err
    assert list(parent.iterdir()) == []
