"""The training step reads nothing on the host: loss parts and the non-finite flag stay on the device between
reads, which happen every ``log_every`` steps and before evaluations and checkpoints.

A CPU can't show a host sync (every tensor is already on the host), so the test makes them visible instead: it
counts every host read of a tensor (``item``, ``bool``, ``float``, ``int``, ``tolist``, ``numpy``) whose innermost
spinenet caller is the training loop (engine/train.py, engine/step.py, modeling/): those are the reads that would
stall a GPU. Reads by the data pipeline, checkpoint writer and evaluator (other modules) are not the step's.
On CUDA, ``torch.cuda.set_sync_debug_mode("error")`` around a step is the direct check (not run here: no GPU).
"""

import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from test_train import cfg, data, opts  # noqa: F401 (data is a fixture; tests/engine is on sys.path under pytest)

from spinenet.engine.step import NonFiniteLossError, StepMeter
from spinenet.engine.train import train

SRC = str(Path(__file__).resolve().parents[2] / "src" / "spinenet")
TRAIN_PY = f"{SRC}/engine/train.py"
_LINES = Path(TRAIN_PY).read_text().splitlines()
LOOP_LINE = next(i for i, line in enumerate(_LINES, 1) if line.strip() == "while step < last_step:")
LOOP_END = next(i for i, line in enumerate(_LINES[LOOP_LINE:], LOOP_LINE + 1)  # the first line after the loop
                if line.strip() and len(line) - len(line.lstrip()) <= _LINES[LOOP_LINE - 1].index("while"))
NOT_THE_STEP = ("data/", "engine/data.py", "engine/checkpoint.py", "engine/evaluate.py")
READS = ("item", "__bool__", "__float__", "__int__", "tolist", "numpy")
# The fused focal loss reads two values on the host on the CPU only, where a read costs nothing (both guarded by
# the device type: focal_fused.py's "masked = not on_cpu or ..." and "grad_output.device.type == 'cpu' and ...").
CPU_ONLY = {("modeling/focal_fused.py", "forward"), ("modeling/focal_fused.py", "backward")}


def _step_caller():
    """(file under src/spinenet, function) of the innermost spinenet frame, for reads made inside the training
    loop (below ``while step < last_step`` in ``_train``) and not by the data pipeline, checkpoints or evaluation."""
    frame, innermost, in_loop = sys._getframe(2), None, False
    while frame is not None:
        name = frame.f_code.co_filename
        if name.startswith(SRC):
            rel = name[len(SRC) + 1:]
            if rel.startswith(NOT_THE_STEP):
                return None
            innermost = innermost or (rel, frame.f_code.co_name)
            if name == TRAIN_PY and frame.f_code.co_name == "_train":
                in_loop = LOOP_LINE < frame.f_lineno < LOOP_END
        frame = frame.f_back
    return innermost if in_loop and innermost not in CPU_ONLY else None


@pytest.fixture
def host_reads(monkeypatch):
    reads: Counter = Counter()
    for method in READS:
        original = getattr(torch.Tensor, method)

        def counted(self, *a, _original=original, **kw):
            caller = _step_caller()
            if caller is not None:
                reads[caller] += 1
            return _original(self, *a, **kw)

        monkeypatch.setattr(torch.Tensor, method, counted)
    return reads


def test_steps_read_the_host_only_at_log_and_save_points(data, tmp_path, host_reads):  # noqa: F811
    # 6 steps of 2 micro-batches, a read every 3, a checkpoint at 6 only: reads at steps 3 and 6, none else.
    train(cfg(train={"train_batch_size": 4}),
          opts(data, tmp_path / "a", max_steps=6, log_every=3, checkpoint_every=100, accum_steps=2))
    assert dict(host_reads) == {("engine/step.py", "read"): 2}


def test_meter_reports_the_first_bad_step_and_its_parts():
    meter = StepMeter(torch.device("cpu"))
    one = torch.tensor(1.0)
    for step, total in enumerate([1.0, 2.0, float("nan"), float("inf")]):
        meter.add(torch.tensor(total), one, one, one, accum=2)
        meter.add(torch.tensor(total), one, one, one, accum=2)
        meter.end_step(step)
        if step == 1:
            assert meter.read() == {"total_loss": 2.0, "cls_loss": 1.0, "box_loss": 1.0, "l2_loss": 1.0}
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 2: total nan, cls 1, box 1, l2 1\. "
                                                 r"Training stopped; the last good checkpoint is ckpt-1.pt"):
        meter.read(last_good="ckpt-1.pt")


def test_cuda_defaults_and_their_switches(monkeypatch):
    """channels_last and cuDNN autotuning: on by default on CUDA only; the flags turn them off; --deterministic
    turns autotuning off. (A torch.device("cuda") can be named without a GPU.)"""
    from spinenet.engine.step import configure_backend, resolve_channels_last

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert resolve_channels_last(cuda, None) and not resolve_channels_last(cpu, None)
    assert not resolve_channels_last(cuda, False) and resolve_channels_last(cpu, True)
    assert configure_backend(cuda, None, deterministic=False) and torch.backends.cudnn.benchmark
    assert not configure_backend(cuda, None, deterministic=True) and not torch.backends.cudnn.benchmark
    assert not configure_backend(cuda, False, deterministic=False) and not torch.backends.cudnn.benchmark
    assert not configure_backend(cpu, None, deterministic=False)
