"""The order of the run: the done-when rows first, whatever the budget; optional rows after, while
``--time_budget_s`` lasts (each one skipped with a printed note once it is spent).

Done-when rows, all in bf16 (the targets' precision; else the first of ``--precisions``): batch 1 end to end
and forward (+ the CUDA-graph rows, the latency target's best chance), batch 32 forward and end to end of both
detectors, the training step of each at ``--train_batch`` with anchor labelling inside it, ``spinenet train``'s
loader, and ``spinenet train`` itself. Optional, in this order: the other batch sizes (largest first: the
end-to-end throughput target), the rest of batch 32 and 1 (post-processing alone, ``model.detect``,
torchvision at batch 1), the step with labels made outside it, the other precisions, then the child-process
variants (a CUDA graph of the whole ExportWrapper; torch.compile).
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path

import torch

from . import end_to_end, forward, train_cli, train_step
from .children import run_child
from .models import SpineNetRunners, build_spinenet, make_images
from .peers import build_torchvision
from .report import RATIO_BATCH, TABLE_HEADER
from .timing import sync

DONE_WHEN_LATENCY = ("sn_e2e", "sn_forward", "graph")
DONE_WHEN_RATIO = ("sn_forward", "tv_forward", "sn_e2e", "tv_e2e")
ALL_KINDS = ("sn_forward", "tv_forward", "sn_e2e", "tv_e2e", "graph", "post", "detect")


class Inference:
    """Inference rows by (kind, batch, precision), each measured once; inputs made per batch on demand."""

    def __init__(self, bench, sn, tv, variants: set[str]):
        self.bench, self.sn, self.tv, self.variants = bench, sn, tv, variants
        self.done: set[tuple[str, int, str]] = set()
        self.inputs: dict[int, tuple] = {}

    def rows(self, batch: int, precision: str, kinds=ALL_KINDS) -> None:
        bench, sn, tv, args = self.bench, self.sn, self.tv, self.bench.args
        if batch not in self.inputs:
            self.inputs.clear()
            if bench.device.type == "cuda":
                torch.cuda.empty_cache()
            self.inputs[batch] = make_images(batch, args.image_size, bench.device, args.seed)
        u8, x = self.inputs[batch]
        run = {"sn_forward": lambda: forward.spinenet_forward_row(bench, sn, batch, precision, x),
               "tv_forward": lambda: forward.torchvision_forward_row(bench, tv, batch, precision, x),
               "sn_e2e": lambda: end_to_end.spinenet_end_to_end_row(bench, sn, batch, precision, u8),
               "tv_e2e": lambda: end_to_end.torchvision_end_to_end_row(bench, tv, batch, precision, u8),
               "post": lambda: end_to_end.spinenet_postprocess_row(bench, sn, batch, precision, u8),
               "detect": lambda: end_to_end.spinenet_detect_row(bench, sn, batch, precision, u8),
               "graph": lambda: self._graph(batch, precision, u8, x)}
        for kind in kinds:
            if kind == "detect" and "detect" not in self.variants:
                continue
            if kind == "graph" and ("cuda_graph" not in self.variants or batch not in args.graph_batches):
                continue
            if (kind, batch, precision) not in self.done:
                self.done.add((kind, batch, precision))
                run[kind]()

    def _graph(self, batch, precision, u8, x) -> None:
        from .graphs import graph_rows

        graph_rows(self.bench, self.sn, batch, precision, u8, x)


def _guarded(bench, fn, *args, what: str, model: str, label: str) -> None:
    """Run a training row; an exception outside the timed calls (building a model, the data) becomes an error
    row, and the run goes on."""
    try:
        fn(bench, *args)
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        text = str(e).strip()
        bench.add({"model": model, "what": what, "variant": label, "batch": bench.args.train_batch,
                   "precision": bench.args.train_precision,
                   "error": f"{type(e).__name__}: {text.splitlines()[0][:300] if text else ''}"})


def training(bench, work_dir: Path, data_root: Path, cli_only: bool = False):
    """The done-when training rows; returns the set-up (None if skipped or the data failed)."""
    args = bench.args
    if args.skip_train:
        bench.skip("training, loader and spinenet train rows: --skip_train")
        return None
    t = time.perf_counter()
    try:
        setup = train_step.prepare(args, bench.device, data_root)
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        bench.note(f"training data: {type(e).__name__}: {e}; no training rows")
        return None
    bench.note(f"synthetic training set ({args.num_images} images at {args.image_size}) and one batch ready in "
               f"{time.perf_counter() - t:.1f} s: {setup.data[1]}")
    if not cli_only:
        _guarded(bench, train_step.spinenet_step_row, setup, what="train", model="spinenet",
                 label="spinenet train's step")
        _guarded(bench, train_step.torchvision_step_row, setup, what="train", model="torchvision",
                 label="reference step")
        _guarded(bench, train_step.loader_row, setup, what="loader", model="spinenet", label="build_train_loader")
    _guarded(bench, train_cli.cli_row, setup, work_dir, what="train (CLI)", model="spinenet",
             label="`spinenet train` itself")
    return setup


def run_plan(bench, work_dir: Path, data_root: Path) -> None:
    args, device = bench.args, bench.device
    variants = set(args.variants)
    if device.type != "cuda" and variants & {"cuda_graph", "full_graph_capture"}:
        bench.note("CUDA graph variants need a CUDA device: skipped")
        variants -= {"cuda_graph", "full_graph_capture"}
    if args.train_cli_only:
        training(bench, work_dir, data_root, cli_only=True)
        return
    rp = "bf16" if "bf16" in args.precisions else args.precisions[0]
    batches = args.batch_sizes
    rb = RATIO_BATCH if RATIO_BATCH in batches else max(batches)

    t = time.perf_counter()
    base, fast = build_spinenet(args, device, bench.calibration)
    inf = Inference(bench, SpineNetRunners(args, device, base, fast), build_torchvision(args, device,
                                                                                       bench.calibration), variants)
    sync(device)
    bench.note(f"models built and heads made informative in {time.perf_counter() - t:.1f} s")
    print(TABLE_HEADER, flush=True)

    bench.essential = True
    if 1 in batches:
        inf.rows(1, rp, DONE_WHEN_LATENCY)
    inf.rows(rb, rp, DONE_WHEN_RATIO)
    inf.inputs.clear()
    setup = training(bench, work_dir, data_root)

    bench.essential = False
    others = sorted((b for b in batches if b not in (1, rb)), reverse=True)
    for batch in [*others, rb, 1]:
        if batch in batches:
            inf.rows(batch, rp)
    if setup is not None:
        _guarded(bench, lambda b, s: train_step.spinenet_step_row(b, s, labels_in_step=False), setup,
                 what="train", model="spinenet", label="spinenet train's step, labels made outside")
    for precision in (p for p in args.precisions if p != rp):
        for batch in [1, rb, *others]:
            if batch in batches:
                inf.rows(batch, precision)
    inf.inputs.clear()
    inf.sn.wrappers.clear()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if "full_graph_capture" in variants:
        run_child(bench, "full_graph_capture", {"batch": 1, "precision": rp}, min_left_s=30.0)
    if "compile" in variants and args.compile_batches:
        run_child(bench, "compile", {"batches": args.compile_batches, "precision": rp}, min_left_s=args.compile_min_s)
