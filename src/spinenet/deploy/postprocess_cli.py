"""``spinenet postprocess``: raw head maps from msame/ais_bench -> the seed's five detection outputs (host NMS)."""

from __future__ import annotations

import argparse

EPILOG = """\
example (the host post-processing route on Ascend):
  spinenet export --checkpoint model.pt --output raw.onnx --postprocess none --conv_algorithm direct
  atc --framework=5 --model=raw.onnx --output=raw --input_shape="Placeholder:1,640,640,3" --soc_version=Ascend310
  msame --model raw.om --input bins/ --output out/ --outfmt BIN        (or ais_bench, or spinenet infer)
  spinenet postprocess --output out/ --model raw.onnx --output_dir dets/
  spinenet report --output dets/ --manifest bins/manifest.json --label_map_file labels.csv

spinenet report --output out/ --model raw.onnx ... does the same without the intermediate folder.
"""


def add_postprocess_parser(subparsers) -> None:
    p = subparsers.add_parser("postprocess", help="raw head maps (msame/ais_bench outputs) -> detections on the host",
                              description="Decode, threshold and NMS the raw head maps of a --postprocess none "
                                          "export, written by msame, ais_bench or spinenet infer (BIN fp32/fp16, "
                                          "NPY, TXT), into the seed's five outputs per input, in msame's layout.",
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True, help="the tool's output folder (the run folder or its parent)")
    p.add_argument("--model", required=True, help="the raw-maps .onnx (its metadata: anchors, thresholds, shapes)")
    p.add_argument("--output_dir", required=True, help="new folder for <name>_output_<k>.txt|bin")
    p.add_argument("--outfmt", default="TXT", help="TXT, or anything else for BIN (as msame)")
    p.set_defaults(func=run_postprocess)


def run_postprocess(args: argparse.Namespace) -> int:
    from spinenet.deploy.host_postprocess import postprocess_folder

    folder, count = postprocess_folder(args.output, args.model, args.output_dir, args.outfmt)
    print(f"wrote the detections of {count} input(s) to {folder}")
    return 0
