"""benchmarks/gpu_speed.py runs end to end on the CPU (--smoke) and writes every row and ratio the GPU run needs.

The GPU benchmark itself is for a machine with a GPU; this checks its plumbing (every code path at tiny sizes:
the inference rows, ``spinenet train``'s step and loader, torchvision's step, ``spinenet train`` itself, the
report), so that the one call a GPU session gets is not spent on a typo, and the parts that decide what is
reported: the budget (done-when rows first and always; optional rows skipped with a note), and the reading of
``spinenet train``'s log.
"""

import importlib.util
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_speed.py"

pytest.importorskip("torchvision")
pytestmark = pytest.mark.slow  # two benchmark runs and two child processes: ~30 s on an idle 2-core CPU


def _load():
    spec = importlib.util.spec_from_file_location("gpu_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # puts benchmarks/ on sys.path, so gpu_bench imports
    return module


def _run(out: Path, *extra: str) -> dict:
    threads = torch.get_num_threads()
    try:
        status = _load().main(["--device", "cpu", "--smoke", "--threads", "1", "--iters", "1", "--output", str(out),
                               *extra])
    finally:
        torch.set_num_threads(threads)
    assert status == 0
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    # The optional variants a CPU can run too: model.detect, and the torch.compile child (eager backend).
    return _run(tmp_path_factory.mktemp("gpu_speed") / "tmp.json", "--variants", "detect,compile",
                "--compile_backend", "eager", "--compile_batches", "1", "--compile_min_s", "0")


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


DONE_WHEN = {("spinenet", "end-to-end", 1), ("spinenet", "forward", 1), ("spinenet", "forward", 2),
             ("torchvision", "forward", 2), ("spinenet", "end-to-end", 2), ("torchvision", "end-to-end", 2),
             ("spinenet", "train", 2), ("torchvision", "train", 2), ("spinenet", "loader", 2)}


def test_smoke_run_has_every_row_with_positive_numbers(smoke):
    rows = smoke["rows"]
    errors = [r for r in rows if "error" in r]
    assert not errors, errors
    have = {(r["model"], r["what"]) for r in rows}
    for model in ("spinenet", "torchvision"):
        for what in ("forward", "end-to-end", "train"):
            assert (model, what) in have, (model, what)
    assert ("spinenet", "loader") in have and ("spinenet", "train (CLI)") in have
    inference = [r for r in rows if r["what"] in ("forward", "end-to-end", "postprocess")]
    assert {r["batch"] for r in inference} == {1, 2}
    assert {r["precision"] for r in inference} == {"fp32", "bf16"}
    for r in rows:
        for key in ("ms_median", "ms_p90", "images_per_s", "peak_mib"):
            assert _positive(r[key]), (key, r)
    # Both detectors' heads were made informative, so NMS has candidates to work on and returns detections.
    for r in rows:
        if r["what"] == "end-to-end":
            assert r["detections_per_image"] > 0, r
    assert smoke["env"]["torch"] == torch.__version__


def test_the_optional_variants_ran_in_their_child_process(smoke):
    variants = [(r["what"], r["variant"]) for r in smoke["rows"] if not r["done_when"]]
    compiled = [v for v in variants if v[1].startswith("torch.compile (backend eager")]
    assert {w for w, _ in compiled} == {"forward", "end-to-end"} and len(compiled) == 3, variants
    assert any("model.detect" in v for _, v in variants), variants
    assert not [n for n in smoke["notes"] if "child:" in n], smoke["notes"]


def test_training_rows_label_inside_the_step_on_both_sides(smoke):
    train = [r for r in smoke["rows"] if r["what"] == "train" and r["done_when"]]
    assert {r["model"] for r in train} == {"spinenet", "torchvision"}
    assert all(r["labels_in_step"] is True and _positive(r["loss"]) for r in train), train
    outside = [r for r in smoke["rows"] if r["what"] == "train" and not r["labels_in_step"]]
    assert [r["model"] for r in outside] == ["spinenet"] and not outside[0]["done_when"]


def test_spinenet_train_itself_ran_and_its_log_was_read(smoke):
    (cli,) = [r for r in smoke["rows"] if r["what"] == "train (CLI)"]
    assert cli["exit"] == 0 and cli["rc"] == 0, cli
    assert cli["steps_done"] == 2 and [w[0] for w in cli["windows"]] == [1, 2], cli
    assert cli["images_per_s"] == pytest.approx(cli["windows"][1][1], abs=0.01)  # median of the windows after the first
    assert cli["batch"] == 2 and cli["precision"] == "bf16"


def test_done_when_rows_run_first(smoke):
    flags = [r["done_when"] for r in smoke["rows"]]
    assert flags == sorted(flags, reverse=True), flags  # every done-when row before the first optional one
    first = {(r["model"], r["what"], r["batch"]) for r in smoke["rows"] if r["done_when"]}
    assert first == DONE_WHEN | {("spinenet", "train (CLI)", 2)}


def test_smoke_run_computes_the_done_when_ratios(smoke):
    ratios = {r["name"]: r for r in smoke["ratios"]}
    names = " | ".join(ratios)
    for needle in ("end-to-end latency at batch 1", "forward throughput", "end-to-end throughput",
                   "training throughput at batch 2 bf16, spinenet train's step",
                   "`spinenet train` itself (its log)", "loader / its step"):
        assert needle in names, (needle, names)
    for r in smoke["ratios"]:
        assert _positive(r["value"]), r
        assert r["met"] in (True, False), r
        assert r["comparison"] in ("<=", ">=") and _positive(r["target"]), r


def test_a_spent_budget_skips_optional_rows_with_a_note_but_not_the_done_when_ones(tmp_path):
    data = _run(tmp_path / "out.json", "--time_budget_s", "0", "--train_cli_steps", "0")
    assert not [r for r in data["rows"] if "error" in r]
    assert {(r["model"], r["what"], r["batch"]) for r in data["rows"]} == DONE_WHEN
    assert all(r["done_when"] for r in data["rows"])
    spent = [s for s in data["skipped"] if "optional, time budget spent" in s]
    assert any("torchvision end-to-end" in s and "batch 1" in s for s in spent), data["skipped"]
    assert any("fp32" in s for s in spent) and any("labels made outside" in s for s in spent), data["skipped"]
    assert "spinenet train itself: --train_cli_steps 0" in data["skipped"]


def test_reading_spinenet_trains_log(tmp_path):
    _load()
    from gpu_bench.train_cli import read_windows, row_from_log

    lines = [{"step": 10, "time": 100.0, "train/images_per_second": 20.0, "train/total_loss": 3.0},
             {"step": 20, "time": 104.0, "train/images_per_second": 160.0},
             {"step": 30, "time": 108.0, "train/images_per_second": 150.0},
             {"step": 40, "time": 114.0, "train/images_per_second": 100.0},
             {"step": 40, "event": "eval"}]
    text = "".join(json.dumps(x) + "\n" for x in lines) + '{"step": 50, "time": 11'  # a line cut by a kill
    (tmp_path / "metrics.jsonl").write_text(text)
    windows = read_windows(tmp_path)
    assert [w["step"] for w in windows] == [10, 20, 30, 40]
    row = row_from_log(windows, batch=64)
    assert row["images_per_s"] == 150.0  # median of 160, 150, 100: the first window (start-up) left out
    assert row["ms_median"] == pytest.approx(64e3 / 150.0, abs=1e-3)
    assert row["images_per_s_after_first_window"] == pytest.approx(30 * 64 / 14.0, abs=0.01)
    assert row["steps_done"] == 40 and row["first_window_images_per_s"] == 20.0
    with pytest.raises(ValueError, match="logged no training window"):
        row_from_log([], batch=64)


def test_spinenet_train_steps_are_cut_to_fit_its_time_limit():
    _load()
    from gpu_bench.train_cli import STARTUP_S, planned_steps

    rows = [{"model": "spinenet", "what": "loader", "images_per_s": 100.0, "variant": "", "batch": 64},
            {"model": "spinenet", "what": "train", "images_per_s": 400.0, "variant": "", "batch": 64}]
    bench = SimpleNamespace(rows=rows, args=SimpleNamespace(train_cli_max_s=STARTUP_S + 120.0))
    # The loader is the slower: 120 s x 100 images/s / 64 = 187.5 steps, down to a multiple of --log_every.
    assert planned_steps(bench, 200, 64, 10) == 180
    assert planned_steps(bench, 100, 64, 10) == 100
    bench.args.train_cli_max_s = STARTUP_S + 1.0
    assert planned_steps(bench, 200, 64, 10) == 20  # at least two windows, so one after the start-up one
    assert planned_steps(SimpleNamespace(rows=[], args=bench.args), 200, 64, 10) == 200  # nothing measured


def test_an_unwritable_output_is_refused_before_measuring(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    status = _load().main(["--device", "cpu", "--smoke", "--output", str(blocker / "out.json")])
    assert status == 2
    err = capsys.readouterr().err
    assert str(blocker) in err and "is a file" in err
