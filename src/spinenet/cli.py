"""``spinenet <command>``: a thin layer over the package's functions (parse, resolve config, call one function)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from spinenet import __version__

DESCRIPTION = """\
SpineNet + RetinaNet object detection in PyTorch, faithful to Google's reference.

commands:
  models     list the SpineNet RetinaNet variants (input size, parameters, published COCO AP)
  convert    TF1 TPU checkpoint, frozen graph or Model Garden checkpoint -> spinenet checkpoint (.pt)
  synth      write a synthetic COCO-format dataset (for tests, benchmarks and the demo)
  train      train with the reference recipe on COCO-format data (CPU, GPU, torchrun)
  evaluate   COCO mAP of a checkpoint on COCO-format data
  export     checkpoint -> ONNX with the seed's frozen-graph contract (freeze_graph.py's flags)
  image2bin  images -> letterboxed .bin inputs + manifest (image2bin.py's flags)
  infer      msame-compatible batch inference on ONNX Runtime / OpenVINO / PyTorch (msame's flags)
  report     msame outputs -> one HTML page of detections (+ COCO mAP with --annotations)
  detect     boxes on images: annotated copies + detections.json
  benchmark  latency / throughput per backend, batch size and precision

Run `spinenet <command> --help` for a command's options.
"""


def cmd_models(args: argparse.Namespace) -> int:
    from spinenet.registry import get_model_info, list_models

    rows = [("name", "model_id", "input", "params", "GFLOPs", "COCO AP", "epochs", "config")]
    for name in list_models():
        m = get_model_info(name)
        rows.append((m.name, m.model_id, f"{m.input_size}x{m.input_size}", f"{m.num_params / 1e6:.2f}M",
                     "-" if m.gflops is None else f"{m.gflops:g}",
                     "-" if m.published_ap is None else f"{m.published_ap:.1f}", str(m.epochs), m.config_file))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print("\nparams: trainable parameters at 91 classes; GFLOPs and AP: the reference's MODEL_ZOO.md "
          "(COCO val2017, swish + stochastic depth recipe); *_mobile: Model Garden's MODEL_GARDEN.md and YAMLs "
          "('-': not published).")
    return 0


def add_models_parser(sub) -> None:
    p = sub.add_parser("models", help="list the model variants",
                       description="List the SpineNet RetinaNet variants with their metadata.")
    p.set_defaults(func=cmd_models)


def build_parser() -> argparse.ArgumentParser:
    from spinenet.convert.cli import add_convert_parser
    from spinenet.data.cli import add_synth_parser
    from spinenet.deploy.cli import (
        add_benchmark_parser,
        add_detect_parser,
        add_export_parser,
        add_image2bin_parser,
        add_infer_parser,
    )
    from spinenet.deploy.postprocess_cli import add_postprocess_parser
    from spinenet.deploy.report_cli import add_report_parser
    from spinenet.engine.cli import add_evaluate_parser, add_train_parser

    parser = argparse.ArgumentParser(prog="spinenet", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"spinenet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    add_models_parser(sub)
    add_convert_parser(sub)
    add_synth_parser(sub)
    add_train_parser(sub)
    add_evaluate_parser(sub)
    add_export_parser(sub)
    add_image2bin_parser(sub)
    add_infer_parser(sub)
    add_report_parser(sub)
    add_postprocess_parser(sub)
    add_detect_parser(sub)
    add_benchmark_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    previous_hook = sys.unraisablehook
    hook = _InterruptHook(previous_hook)
    sys.unraisablehook = hook
    try:
        try:
            return int(args.func(args) or 0)
        except (ValueError, FileNotFoundError, NotImplementedError) as e:
            # Errors at the edges already name the file and the fix; a traceback would only bury that.
            print(f"spinenet {args.command}: error: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            # From here on the interrupted command's objects are freed; finalisers of objects the interrupt left
            # half-built (a DataLoader iterator whose workers never started) fail, and that is no news.
            hook.quiet = True
        # Ctrl-C: every writer renames a complete temporary file into place (or removed it on the way out here),
        # so there is nothing half-written to report; 130 = 128 + SIGINT, as a shell reports it.
        import gc

        gc.collect()
        start = ""
        if "tqdm" in sys.modules:  # a progress bar left open ends (or clears) its line, so ours is a line of its own
            for bar in list(getattr(sys.modules["tqdm"].tqdm, "_instances", ())):
                bar.close()
            start = "\r\033[K" if sys.stderr.isatty() else "\r"  # and one half-drawn by the interrupt is overdrawn
        print(f"{start}spinenet {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        sys.unraisablehook = previous_hook


class _InterruptHook:
    """A ``sys.unraisablehook`` that sends a lost Ctrl-C again, and is silent once the command was interrupted.

    A SIGINT that arrives while Python runs an at-fork hook (DataLoader workers starting), a finaliser or a
    callback raises KeyboardInterrupt where it can only be printed ("Exception ignored in ...") and the command
    carries on. Sent again from a helper thread a moment later, it lands in the command's own code.
    """

    def __init__(self, previous):
        self.previous, self.quiet = previous, False

    def __call__(self, unraisable) -> None:
        import os
        import signal
        import threading

        if self.quiet:
            return
        if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
            timer = threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT))
            timer.daemon = True
            timer.start()
            return
        self.previous(unraisable)


if __name__ == "__main__":
    sys.exit(main())
