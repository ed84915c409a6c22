"""``spinenet export --quantize int8``'s flags and steps (kept apart from the fp32 export's, which it wraps)."""

from __future__ import annotations

import argparse
from pathlib import Path

QUANTIZE_EPILOG = """\
int8 (post-training static quantization, spinenet.deploy.quantize):
  spinenet export --checkpoint model.pt --output export/ --quantize int8 \\
      --calibration_data data/annotations/instances_train.json data/train --calibration_images 64
  ... --max_ap_drop 0.01 --validation_data data/annotations/instances_val.json data/val   (accuracy-aware)
The int8 export is the direct-convolution graph with QDQ pairs on each convolution's input and weights; it runs
in OpenVINO (int8 kernels: `spinenet infer/benchmark --backend openvino`) and ONNX Runtime (correct, not faster).
"""


def add_quantize_flags(p: argparse.ArgumentParser) -> None:
    from spinenet.deploy.quantize import DEFAULT_CALIBRATION_IMAGES, DEFAULT_FLOAT_GROUPS

    p.add_argument("--quantize", default=None, choices=["int8"],
                   help="int8: post-training static quantization with ONNX Runtime's quantize_static (QDQ, "
                        "per-channel int8 weights, uint8 activations) over --calibration_data; writes "
                        "<variant>_int8.onnx for a folder --output")
    p.add_argument("--calibration_data", nargs=2, metavar=("ANNOTATIONS", "IMAGES"), default=None,
                   help="with --quantize: a COCO annotation file and its image folder; the first "
                        "--calibration_images images (by id), letterboxed as `spinenet image2bin` does")
    p.add_argument("--calibration_images", type=int, default=DEFAULT_CALIBRATION_IMAGES,
                   help=f"number of calibration images (default {DEFAULT_CALIBRATION_IMAGES})")
    p.add_argument("--int8_float", default=",".join(DEFAULT_FLOAT_GROUPS) or "none",
                   help="comma-separated layer groups kept in float: stem, backbone (or backbone.blocks.N ...), "
                        "head (head.class, head.box), predictors, or none "
                        f"(default {','.join(DEFAULT_FLOAT_GROUPS) or 'none'}: measured, see spinenet.deploy.quantize)")
    p.add_argument("--max_ap_drop", type=float, default=None,
                   help="with --quantize: keep more layer groups float, most sensitive first, until the COCO AP "
                        "on --validation_data is at most this much below the fp32 export's (e.g. 0.01)")
    p.add_argument("--validation_data", nargs=2, metavar=("ANNOTATIONS", "IMAGES"), default=None,
                   help="the held-out set of --max_ap_drop (default: --calibration_data)")


def check_quantize_request(args: argparse.Namespace) -> None:
    """Refuse flag combinations that cannot work, before any model is loaded or file written."""
    quantize_only = [f for f in ("calibration_data", "max_ap_drop", "validation_data")
                     if getattr(args, f, None) is not None]
    if args.quantize is None:
        if quantize_only:
            raise ValueError(f"--{quantize_only[0]} applies to --quantize int8 only")
        return
    if args.calibration_data is None:
        raise ValueError("--quantize int8 needs --calibration_data ANNOTATIONS IMAGES (e.g. a training set's "
                         "instances_train.json and its image folder)")
    if args.target != "onnxruntime":
        raise ValueError("--quantize int8 is for --target onnxruntime (ONNX Runtime, OpenVINO); ATC quantizes "
                         "with its own tool (AMCT)")
    if args.conv_algorithm == "winograd":
        raise ValueError("--quantize int8 quantizes the direct-convolution graph (Winograd's tile-domain MatMuls "
                         "are not convolutions to quantize); drop --conv_algorithm winograd")
    if args.keep_dtype is not None:
        raise ValueError("--keep_dtype is for ATC's fp16 compilation, not --quantize int8")
    if args.calibration_images < 1:
        raise ValueError(f"--calibration_images must be >= 1, got {args.calibration_images}")
    if args.max_ap_drop is not None and args.postprocess == "none":
        raise ValueError("--max_ap_drop measures AP, which needs --postprocess v1")
    for group in float_groups(getattr(args, "int8_float", "none")):  # the graph's own names are checked later
        if group.split(".")[0] not in ("stem", "backbone", "head", "predictors"):
            raise ValueError(f"--int8_float group {group!r} is unknown; valid: stem, backbone (or backbone.blocks.N, "
                             "backbone.stem_blocks.N, backbone.reductions, backbone.endpoints), head (head.class, "
                             "head.box), predictors, or none")


def float_groups(text: str) -> list[str]:
    return [] if text.strip().lower() == "none" else [g.strip() for g in text.split(",") if g.strip()]


def quantize_after_export(args: argparse.Namespace, fp32_path: Path, path: Path, size: tuple[int, int],
                          images) -> dict:
    """Quantize the fp32 export at ``fp32_path`` into ``path`` (the accuracy-aware loop with --max_ap_drop)."""
    from spinenet.deploy.quantize import quantize_int8
    from spinenet.deploy.quantize_search import quantize_within_ap_drop

    source = {"spinenet.quantize.calibration_data": Path(args.calibration_data[0]).name}
    if args.max_ap_drop is None:
        quantize_int8(fp32_path, path, images, float_groups=float_groups(args.int8_float), metadata=source)
        return {}
    validation = args.validation_data or args.calibration_data
    if args.validation_data is None:
        print("note: --max_ap_drop measures AP on --calibration_data (no --validation_data): the calibration "
              "images are among those scored", flush=True)
    return quantize_within_ap_drop(fp32_path, path, images, validation[0], validation[1], args.max_ap_drop,
                                   start_float=float_groups(args.int8_float))
