"""Arguments (with the smaller ``--smoke`` defaults), the device, and the run: environment, the rows in
:mod:`.plan`'s order, then the ratios, the table and the JSON."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

from . import __doc__ as PACKAGE_DOC
from .machine import ensure_spinenet_importable, environment
from .report import RATIO_BATCH, compute_ratios, print_report
from .timing import Bench, sync

VARIANTS = ("cuda_graph", "detect", "full_graph_capture", "compile")


def _smoke_defaults(smoke: bool, cpus: int) -> dict:
    return {
        "batch_sizes": "1,2" if smoke else "1,32,64", "precisions": "fp32,bf16",
        "image_size": 128 if smoke else 640, "warmup": 1 if smoke else 5, "iters": 2 if smoke else 30,
        "max_row_s": 3.0, "train_batch": 2 if smoke else 64, "train_warmup": 1 if smoke else 3,
        "train_steps": 2 if smoke else 15, "variants": "none" if smoke else ",".join(VARIANTS),
        "candidates_per_image": 100 if smoke else 1000, "time_budget_s": 300.0 if smoke else 360.0,
        "threads": 1 if smoke else None, "num_workers": 0 if smoke else max(1, min(16, cpus - 2)),
        "num_images": 8 if smoke else 256, "loader_batches": 2 if smoke else 10,
        "train_cli_steps": 2 if smoke else 200, "train_cli_log_every": 1 if smoke else 10,
        "train_cli_max_s": 180.0 if smoke else 150.0,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    import os

    p = argparse.ArgumentParser(description=PACKAGE_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--device", default="cuda")
    a("--batch_sizes", default=None, help="comma list (default 1,32,64; smoke 1,2)")
    a("--precisions", default=None, help="comma list of fp32, bf16, fp16 (default fp32,bf16)")
    a("--image_size", type=int, default=None, help="square input side (default 640; smoke 128)")
    a("--warmup", type=int, default=None, help="untimed calls per row (default 5; smoke 1)")
    a("--iters", type=int, default=None, help="timed calls per row at most (default 30; smoke 2)")
    a("--max_row_s", type=float, default=None, help="stop warming up (after 2 calls) or timing (after 3) a row "
      "after this many seconds (default 3; training rows at least 8, loader rows 10)")
    a("--train_batch", type=int, default=None, help="training batch (default 64; smoke 2)")
    a("--train_precision", default="bf16", choices=("fp32", "bf16"), help="as spinenet train's --precision")
    a("--train_channels_last", action=argparse.BooleanOptionalAction, default=True,
      help="channels-last training on both sides (spinenet train's --channels_last; default on)")
    a("--train_warmup", type=int, default=None, help="untimed training steps (default 3; smoke 1)")
    a("--train_steps", type=int, default=None, help="timed training steps (default 15; smoke 2)")
    a("--skip_train", action="store_true", help="no training rows, no loader row, no spinenet train run")
    a("--num_workers", type=int, default=None, help="loader workers of the loader row and the spinenet train run "
      "(default: CPU count - 2, 1 to 16; smoke 0)")
    a("--num_images", type=int, default=None, help="images in the synthetic training set (default 256; smoke 8)")
    a("--data_dir", default=None, help="folder for the synthetic training set (reused if it holds one; default: "
      "a temporary folder, removed at the end)")
    a("--loader_batches", type=int, default=None, help="timed batches of the loader row (default 10; smoke 2)")
    a("--train_cli_steps", type=int, default=None,
      help="steps of the `spinenet train` run (default 200; smoke 2; 0: no run)")
    a("--train_cli_log_every", type=int, default=None, help="its --log_every (default 10; smoke 1)")
    a("--train_cli_max_s", type=float, default=None, help="its time limit (default 150 s; smoke 180)")
    a("--train_cli_only", action="store_true", help="only the `spinenet train` run (and its data)")
    a("--graph_batches", default="1", help="batch sizes of the CUDA-graph rows (comma list, or none)")
    a("--variants", default=None, help="optional variants: comma list of cuda_graph, detect, full_graph_capture, "
      "compile, or none (default all; smoke none). CUDA graphs need a CUDA device.")
    a("--compile_mode", default="default", help="torch.compile mode (default, reduce-overhead, ...)")
    a("--compile_backend", default="inductor", help="torch.compile backend (eager: plumbing check)")
    a("--compile_batches", default=str(RATIO_BATCH), help="batch sizes of the torch.compile rows")
    a("--compile_min_s", type=float, default=100.0,
      help="start the torch.compile child only with this much of the time budget left")
    a("--candidates_per_image", type=int, default=None, help="(anchor, class) scores per image above the score "
      "threshold after the heads are made informative (default 1000; smoke 100; 0 keeps the random init)")
    a("--time_budget_s", type=float, default=None, help="no optional row starts after this many seconds "
      "(default 360; smoke 300); the done-when rows always run")
    a("--threads", type=int, default=None, help="torch CPU threads (default: untouched; smoke 1)")
    a("--smoke", action="store_true", help="tiny sizes and counts: a plumbing check that runs on CPU")
    a("--seed", type=int, default=0)
    a("--output", default=None, help="JSON file for the environment, rows and ratios")
    a("--_child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for key, value in _smoke_defaults(args.smoke, os.cpu_count() or 1).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.batch_sizes = _int_list(args.batch_sizes)
    args.graph_batches = _int_list(args.graph_batches)
    args.compile_batches = _int_list(args.compile_batches)
    args.precisions = [s.strip() for s in args.precisions.split(",") if s.strip()]
    bad = [s for s in args.precisions if s not in ("fp32", "bf16", "fp16")]
    if bad or not args.precisions:
        p.error(f"--precisions: unknown {bad}; valid: fp32, bf16, fp16")
    args.variants = {s.strip() for s in args.variants.split(",") if s.strip() and s.strip() != "none"}
    if args.variants - set(VARIANTS):
        p.error(f"--variants: unknown {sorted(args.variants - set(VARIANTS))}; valid: {', '.join(VARIANTS)}")
    if args.image_size % 128:
        p.error("--image_size must be a multiple of 128 (2^max_level)")
    if not args.batch_sizes:
        p.error("--batch_sizes: give at least one batch size")
    if args.num_images < args.train_batch:
        p.error(f"--num_images {args.num_images} is fewer than one training batch ({args.train_batch})")
    return args


def _int_list(text: str) -> list[int]:
    if text.strip().lower() in ("", "none"):
        return []
    return [int(s) for s in text.split(",") if s.strip()]


def _device(args) -> torch.device | str:
    """The device, or an error message."""
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "CUDA is not available; use --device cpu (with --smoke for a quick check)"
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    return device


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    ensure_spinenet_importable()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = _device(args)
    if isinstance(device, str):
        print(device, file=sys.stderr)
        return 2
    if args._child:
        from .children import child_main

        return child_main(args, device, json.loads(args._child))
    if args.output:
        from spinenet.io_checks import NotWritableError, ensure_writable_dir

        try:  # before minutes of measuring, not after
            ensure_writable_dir(Path(args.output).resolve().parent, "--output's folder")
        except NotWritableError as e:
            print(f"gpu_speed: error: {e}", file=sys.stderr)
            return 2
    bench = Bench(args, device, argv)
    bench.env = environment(device)
    print(f"environment: {json.dumps(bench.env)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu_speed.") as tmp:
        from .plan import run_plan

        run_plan(bench, Path(tmp), Path(args.data_dir) if args.data_dir else Path(tmp) / "data")
    sync(device)
    bench.ratios = compute_ratios(bench.rows, args)
    bench.write()
    print_report(bench)
    if args.output:
        print(f"wrote {args.output}")
    return 0

