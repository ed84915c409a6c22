"""`spinenet --help`, `spinenet models`, `spinenet convert --help`, and errors at the edge."""

import subprocess
import sys

from spinenet.cli import main


def run(*args):
    return subprocess.run([sys.executable, "-m", "spinenet.cli", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_commands():
    r = run("--help")
    assert r.returncode == 0
    assert "models" in r.stdout and "convert" in r.stdout and "SpineNet" in r.stdout


def test_models_table(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "retinanet_spinenet49s" in out and "11.27M" in out and "41.5" in out and "1280x1280" in out


def test_convert_help_explains_itself():
    r = run("convert", "--help")
    assert r.returncode == 0
    for word in ("--from", "model-garden", "--checkpoint", "--output", "--config_file", "--params_override",
                 "examples:"):
        assert word in r.stdout


def test_convert_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    code = main(["convert", "--from", "model-garden", "--checkpoint", str(tmp_path / "nothing"),
                 "--output", str(tmp_path / "x.pt")])
    err = capsys.readouterr().err
    assert code == 1 and "spinenet convert: error:" in err and "nothing" in err
    assert not (tmp_path / "x.pt").exists()
