"""Training as separate processes: 2-rank torchrun on CPU (gloo), and a SIGKILL mid-run followed by --resume."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from spinenet.data.synthetic import make_synthetic_dataset

pytestmark = pytest.mark.slow

OVERRIDE = json.dumps({"architecture": {"num_classes": 6}, "retinanet_parser": {"output_size": [128, 128]},
                       "train": {"train_batch_size": 4, "total_steps": 40,
                                 "learning_rate": {"warmup_steps": 2, "init_learning_rate": 0.01}}})
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    make_synthetic_dataset(root, num_train=16, num_val=2, image_size=128, seed=4, progress=False)
    return root


def train_cmd(data, model_dir, *extra):
    return ["-m", "spinenet.cli", "train", "--model_dir", str(model_dir),
            "--train_data", str(data / "annotations/instances_train.json"), str(data / "train"),
            "--params_override", OVERRIDE, "--num_workers", "0", "--no_progress", "--device", "cpu",
            "--deterministic", "--seed", "7", *extra]


def env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def digest(state):
    h = hashlib.sha256()
    for name, t in sorted(state.items()):
        h.update(name.encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def test_two_rank_torchrun_ends_with_identical_weights(data, tmp_path):
    r = subprocess.run([str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", "29531",
                        *train_cmd(data, tmp_path / "ddp", "--max_steps", "3")],
                       capture_output=True, text=True, timeout=600, env=env())
    assert r.returncode == 0, r.stderr[-3000:]
    # train() all-gathers each rank's weight digest and raises if they differ; rank 0 prints it.
    line = next(ln for ln in r.stdout.splitlines() if "weights sha256" in ln)
    ckpt = torch.load(tmp_path / "ddp" / "ckpt-3.pt", weights_only=True)
    assert digest(ckpt["model"]).startswith(line.rsplit(" ", 1)[-1])
    assert ckpt["step"] == 3 and ckpt["data_position"] == {"batches_consumed": 3}


def test_two_rank_accumulation_with_no_sync_ends_with_identical_weights(data, tmp_path):
    """--accum_steps 2 under DDP: the first micro-batch backward runs in no_sync() (no all-reduce), the second
    all-reduces the accumulated gradients; ranks that skipped a reduction would end with different weights, which
    train() refuses (its digest check) and this test reads from the checkpoint."""
    override = json.loads(OVERRIDE)
    override["train"]["train_batch_size"] = 8  # 2 ranks x 2 micro-batches x 2 images (BN needs 2 at level 7)
    cmd = train_cmd(data, tmp_path / "acc", "--max_steps", "2", "--accum_steps", "2")
    cmd[cmd.index("--params_override") + 1] = json.dumps(override)
    r = subprocess.run([str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", "29533", *cmd],
                       capture_output=True, text=True, timeout=600, env=env())
    assert r.returncode == 0, r.stderr[-3000:]
    line = next(ln for ln in r.stdout.splitlines() if "weights sha256" in ln)
    ckpt = torch.load(tmp_path / "acc" / "ckpt-2.pt", weights_only=True)
    assert digest(ckpt["model"]).startswith(line.rsplit(" ", 1)[-1]) and ckpt["step"] == 2


def test_sigkill_then_resume_matches_an_uninterrupted_run(data, tmp_path):
    steps = ["--max_steps", "6", "--checkpoint_every", "2"]
    subprocess.run([sys.executable, *train_cmd(data, tmp_path / "a", *steps)], check=True, timeout=600, env=env(),
                   capture_output=True)
    proc = subprocess.Popen([sys.executable, *train_cmd(data, tmp_path / "b", *steps)], env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not (tmp_path / "b" / "ckpt-2.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    for path in (tmp_path / "b").glob("*.pt"):  # a killed save may leave a temp file, never a broken .pt
        assert torch.load(path, weights_only=True)["format"] == "spinenet-checkpoint"
    subprocess.run([sys.executable, *train_cmd(data, tmp_path / "b", *steps, "--resume")], check=True,
                   timeout=600, env=env(), capture_output=True)
    a = torch.load(tmp_path / "a" / "ckpt-6.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "ckpt-6.pt", weights_only=True)["model"]
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6, rtol=0), k


def test_two_rank_evaluation_gathers_all_images(tmp_path):
    """torchrun evaluation: each rank scores every other image, results are gathered, numbers as one process."""
    root = Path(__file__).resolve().parents[2]
    make_synthetic_dataset(tmp_path / "d", num_train=0, num_val=6, image_size=128, seed=2, size_range=(0.15, 0.6),
                           progress=False)
    args = ["-m", "spinenet.cli", "evaluate", "--checkpoint", str(root / "demo" / "shapes49s_fp16.pt"),
            "--val_data", str(tmp_path / "d/annotations/instances_val.json"), str(tmp_path / "d/val"),
            "--num_workers", "0", "--no_progress", "--device", "cpu"]
    subprocess.run([sys.executable, *args, "--output", str(tmp_path / "one")], check=True, timeout=600, env=env(),
                   capture_output=True)
    r = subprocess.run([str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", "29532", *args,
                        "--output", str(tmp_path / "two")], capture_output=True, text=True, timeout=600, env=env())
    assert r.returncode == 0, r.stderr[-3000:]
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["num_images"] == one["num_images"] == 6
    assert two["AP"] == pytest.approx(one["AP"], abs=1e-9) and one["AP50"] > 0
    assert len(json.loads((tmp_path / "two" / "results.json").read_text())) == one["num_detections"]
