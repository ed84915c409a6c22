"""The run folder: checkpoint names, temporary files of killed writes, the lock, metrics.jsonl on resume."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from spinenet.engine.checkpoint import TEMP_NAME, atomic_write
from spinenet.engine.run_dir import (
    MetricsLog,
    RunDirLockedError,
    list_checkpoints,
    lock_model_dir,
    remove_partial_writes,
)


def test_only_ckpt_step_names_are_checkpoints(tmp_path):
    for name in ("ckpt-10.pt", "ckpt-9.pt", "ckpt-backup.pt", "ckpt-3.pt.superseded", "ckpt-2.pt", "ckpt-1.5.pt"):
        (tmp_path / name).touch()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-2.pt", "ckpt-9.pt", "ckpt-10.pt"]


def test_only_our_own_temporary_files_are_removed(tmp_path):
    seen = []
    atomic_write(tmp_path / "ckpt-4.pt", lambda f: seen.extend(os.listdir(tmp_path)))
    assert len(seen) == 1 and TEMP_NAME.match(seen[0])  # the name a kill would leave is the name we clean
    ours = [seen[0], ".best.pt.zz_zz_zz.tmp", ".config.yaml.Ab3dEf9h.tmp", ".ckpt-12.pt.q1w2e3r4.tmp"]
    theirs = [".notes.tmp", ".ckpt-backup.pt.abcdefgh.tmp", "x.ckpt-4.pt.abcdefgh.tmp", ".ckpt-4.pt.short.tmp",
              ".model.onnx.abcdefgh.tmp"]
    for name in ours + theirs:
        (tmp_path / name).write_bytes(b"x")
    removed = remove_partial_writes(tmp_path)
    assert sorted(p.name for p in removed) == sorted(ours)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ckpt-4.pt", *theirs])


def test_lock_is_exclusive_names_its_holder_and_is_released(tmp_path):
    with lock_model_dir(tmp_path):
        with pytest.raises(RunDirLockedError, match=rf"{tmp_path} is in use by another trainer \(pid {os.getpid()} "
                                                    r"on .*, started .*\); wait"):
            with lock_model_dir(tmp_path):
                pass
    with lock_model_dir(tmp_path):  # released on exit
        pass


def test_metrics_log_on_resume_drops_the_replayed_steps(tmp_path):
    log = MetricsLog(tmp_path)
    for step in range(1, 6):
        log.write(step, **{"train/total_loss": 1.0 / step})
    log.write(6, **{"eval/AP": float("nan")})
    log.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "train/tot')  # cut off by a kill
    log = MetricsLog(tmp_path, start_step=3)
    log.write(3, event="resume")
    log.close()
    records = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 3]
    assert records[1]["train/total_loss"] == 0.5 and records[-1]["event"] == "resume"
    MetricsLog(tmp_path).close()  # a new run (step 0) in a folder that a run killed before any checkpoint left
    assert (tmp_path / "metrics.jsonl").read_text() == ""


def test_read_only_folder_is_refused_before_any_work(tmp_path):
    """In a process without root's override of permission bits (setpriv drops every capability; CI runs as root)."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to drop root's capabilities")
    tmp_path.chmod(0o555)
    code = ("import sys, pathlib\nfrom spinenet.engine.run_dir import lock_model_dir\n"
            "try:\n    lock_model_dir(pathlib.Path(sys.argv[1])).__enter__()\n"
            "except ValueError as e:\n    print(e)\n    sys.exit(3)\n")
    try:
        r = subprocess.run(["setpriv", "--bounding-set=-all", "--inh-caps=-all", sys.executable, "-c", code,
                            str(tmp_path)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 3, (r.stdout, r.stderr)
        assert re.search(f"cannot write in {re.escape(str(tmp_path))} .*choose a writable --model_dir", r.stdout)
        assert list(tmp_path.iterdir()) == []
    finally:
        tmp_path.chmod(0o755)
