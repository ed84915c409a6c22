"""Output folders that can't be written are found before the work, in one line, by the CLI as an ordinary user runs
it: root ignores permission bits, so under root the commands run as ``nobody`` (``setpriv``)."""

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from PIL import Image

import spinenet
from spinenet import get_config
from spinenet.engine.checkpoint import make_checkpoint, save_checkpoint
from spinenet.io_checks import atomic_write, ensure_writable_dir
from spinenet.modeling.factory import build_retinanet

SRC = str(Path(spinenet.__file__).resolve().parents[1])
NOBODY = 65534


def _unprivileged_prefix() -> list[str]:
    if os.geteuid() != 0:
        return []  # an ordinary user already meets the permission bits
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: can't drop privileges to test permission bits")
    return [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


@pytest.fixture
def scratch():
    """A folder every user can read (pytest's tmp_path is private to its owner), with a read-only ``ro/``."""
    root = Path(tempfile.mkdtemp(prefix="spinenet-ro-"))
    root.chmod(0o755)
    (root / "home").mkdir(mode=0o777)
    (root / "home").chmod(0o777)
    (root / "ro").mkdir()
    yield root
    for p in root.rglob("*"):
        if p.is_dir():
            p.chmod(0o755)
    shutil.rmtree(root, ignore_errors=True)


def _run_unprivileged(scratch: Path, *args: str) -> subprocess.CompletedProcess:
    (scratch / "ro").chmod(0o555)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": SRC, "HOME": str(scratch / "home"),
           "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([*_unprivileged_prefix(), sys.executable, "-m", "spinenet.cli", *args], env=env,
                          capture_output=True, text=True, timeout=600, cwd=scratch)


def _assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0], proc.stderr


def test_image2bin_into_a_read_only_folder(scratch):
    (scratch / "images").mkdir(mode=0o755)
    for i in range(3):
        Image.new("RGB", (20, 10), (i, 0, 0)).save(scratch / "images" / f"{i}.png")
    proc = _run_unprivileged(scratch, "image2bin", "--image_file_pattern", str(scratch / "images/*.png"),
                             "--output_dir", str(scratch / "ro" / "bins"), "--image_size", "128")
    _assert_one_line_error(proc, str(scratch / "ro"), "permission denied", "--output_dir")
    assert list((scratch / "ro").iterdir()) == []


def test_export_into_a_read_only_folder_fails_before_the_work(scratch):
    cfg = get_config("retinanet_spinenet49s", num_classes=3)
    ckpt = scratch / "m.pt"
    save_checkpoint(make_checkpoint(build_retinanet(cfg).eval(), cfg, variant="retinanet_spinenet49s"), ckpt)
    ckpt.chmod(0o644)
    proc = _run_unprivileged(scratch, "export", "--checkpoint", str(ckpt), "--output", str(scratch / "ro" / "m.onnx"),
                             "--input_image_size", "128")
    _assert_one_line_error(proc, str(scratch / "ro"), "permission denied", "--output")
    assert "loading" not in proc.stdout  # refused before the checkpoint was even read
    assert list((scratch / "ro").iterdir()) == []


def test_ensure_writable_dir_creates_folders_and_names_a_file(tmp_path):
    assert ensure_writable_dir(tmp_path / "a" / "b", "--output") == tmp_path / "a" / "b"
    assert (tmp_path / "a" / "b").is_dir() and list((tmp_path / "a" / "b").iterdir()) == []  # no probe left
    (tmp_path / "f").write_text("")
    with pytest.raises(ValueError, match=f"--output {tmp_path / 'f'} is a file"):
        ensure_writable_dir(tmp_path / "f", "--output")
    with pytest.raises(ValueError, match="cannot write to .*a parent is a file"):
        ensure_writable_dir(tmp_path / "f" / "sub", "--output")


def test_atomic_write_mode_and_failure(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "x.json", lambda f: f.write("{}"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.json").stat().st_mode) == 0o640  # 0666 less the umask, as open() gives

    def fail(f):
        f.write("half")
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "x.json", fail)
    assert (tmp_path / "x.json").read_text() == "{}" and [p.name for p in tmp_path.iterdir()] == ["x.json"]
