"""``spinenet export``: a spinenet checkpoint -> ONNX with the seed's frozen-graph signature (freeze_graph.py flags)."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from spinenet.deploy.msame_flags import add_msame_flags, msame_options
from spinenet.deploy.quantize_cli import QUANTIZE_EPILOG, add_quantize_flags

EXPORT_EPILOG = """\
examples:
  spinenet export --checkpoint spinenet49s.pt --output export/            (-> export/retinanet_spinenet49s.onnx)
  spinenet export --checkpointpath=model.pt --output=model.onnx --model=retinanet \\
      --input_image_size=640,640 --batch_size=1 --opset=13
  spinenet export --checkpoint model.pt --output raw.onnx --postprocess none --input_type raw_image_tensor
  spinenet export --checkpoint model.pt --output om/ --target ascend            (ATC, CANN 5.0.4's operators)
  spinenet export --checkpoint model.pt --output om/ --target ascend --cann 8   (CANN 8.0.0's operators)

The graph takes Placeholder: uint8 [B, H, W, 3] NHWC RGB (normalisation inside the graph) and returns
NumDetections, DetectionBoxes, DetectionClasses, DetectionScores, ImageInfo, like the seed's
spinenet_tf_310.pb; for Ascend, export with --target ascend, then e.g.
  atc --framework=5 --model=model.onnx --output=model --input_shape="Placeholder:1,640,640,3" --soc_version=Ascend310
Every export is checked before it is written: static shapes, constant Pad pads, the opset, and for
--target ascend every operator (subgraphs included) on ATC's published list for --cann; a graph that fails is
refused with the offending node names.
--config_file / --params_override apply over the checkpoint's own config (post-processing thresholds etc.).
"""


def add_export_parser(sub) -> None:
    p = sub.add_parser("export", help="export a checkpoint to ONNX (the seed's freeze_graph step)",
                       description="Export a spinenet checkpoint to a static ONNX graph with the seed's "
                                   "input (Placeholder) and five outputs, for ONNX Runtime and Huawei ATC.",
                       epilog=EXPORT_EPILOG + "\n" + QUANTIZE_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", "--checkpointpath", dest="checkpoint", required=True,
                   help="spinenet checkpoint (.pt) from `spinenet convert` or `spinenet train`")
    p.add_argument("--output", required=True,
                   help="output .onnx file, or a folder (then <folder>/<variant>.onnx)")
    p.add_argument("--config_file", default=None, help="reference-format YAML applied over the checkpoint's config")
    p.add_argument("--params_override", default=None, help="YAML/JSON string or file applied after --config_file")
    p.add_argument("--batch_size", type=int, default=1, help="static batch size of the graph (default 1)")
    p.add_argument("--input_image_size", type=_image_size, default=(640, 640),
                   help="H,W of the graph input, multiples of 128 (default 640,640)")
    p.add_argument("--opset", type=int, default=13, help="ONNX opset, 11-13 (default 13: ATC in CANN 5.x/6.x)")
    p.add_argument("--target", default="onnxruntime", choices=["onnxruntime", "ascend"],
                   help="the runtime the graph is built for (spinenet.deploy.targets): onnxruntime (default; also "
                        "OpenVINO): Winograd convolutions, exact greedy NMS as one ONNX Loop; ascend: Huawei ATC "
                        "(--framework=5): plain convolutions, greedy NMS unrolled over a fixed number of rounds "
                        "(no Loop, which ATC's list lacks), every operator checked against ATC's list")
    p.add_argument("--cann", default=None, choices=["5", "6", "7", "8"],
                   help="with --target ascend: the CANN version whose ONNX operator list is checked (default 5: "
                        "CANN 5.0.4, the seed's; 8: CANN 8.0.0; 6 and 7: their lists were not found, the operators "
                        "both 5.0.4 and 8.0.0 list stand in)")
    p.add_argument("--input_type", default="image_tensor", choices=["image_tensor", "raw_image_tensor"],
                   help="image_tensor: uint8 NHWC RGB; raw_image_tensor: float32 NHWC already normalised")
    p.add_argument("--postprocess", default="v1", choices=["v1", "none"],
                   help="v1: the reference's detections; none: raw head maps cls_3..7, box_3..7")
    p.add_argument("--pre_nms_topk", type=int, default=None,
                   help="candidate window of the static NMS (default 2000; see spinenet.deploy.postprocess_export)")
    p.add_argument("--conv_algorithm", default=None, choices=["winograd", "direct"],
                   help="default: the --target's (onnxruntime: winograd, ascend: direct). winograd: 3x3 "
                        "convolutions on maps of 20x20 and more (the head's, and the "
                        "backbone's of 80 channels and more) as Winograd F(4x4,3x3), the fastest on CPUs (ONNX "
                        "Runtime, OpenVINO; raw maps within ~1e-4 of each map's range); direct: every convolution "
                        "a plain Conv, for compilers with their own convolution engines (ATC for Ascend, TensorRT). "
                        "BN is folded into the convolutions either way")
    p.add_argument("--keep_dtype", default=None, metavar="FILE",
                   help="also write ATC's --keep_dtype file: the post-processing nodes (box decoding, IoU, NMS, "
                        "top-k) to keep in fp32 when ATC compiles the rest in fp16 (its default "
                        "--precision_mode=force_fp16); then atc ... --keep_dtype=FILE. See spinenet.deploy.precision")
    p.add_argument("--model", default="retinanet", choices=["retinanet"], help="accepted for seed compatibility")
    add_quantize_flags(p)
    p.set_defaults(func=run_export)


def _image_size(text: str) -> tuple[int, int]:
    parts = [p for p in text.replace("x", ",").split(",") if p.strip()]
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        sizes = []
    if len(sizes) == 1:
        sizes *= 2
    if len(sizes) != 2:
        raise argparse.ArgumentTypeError(f"expected H,W such as 640,640, got {text!r}")
    return sizes[0], sizes[1]


def resolve_output_path(output: str | Path, variant: str) -> Path:
    """``output`` itself if it names an .onnx file, else ``output/<variant>.onnx``."""
    output = Path(output)
    if output.suffix.lower() == ".onnx" and not output.is_dir():
        return output
    return output / f"{variant}.onnx"


def load_for_export(checkpoint: str | Path, config_file: str | None = None, params_override: str | None = None):
    """``(model, ckpt)`` from a checkpoint, with ``config_file`` then ``params_override`` merged over its config."""
    from spinenet.engine.checkpoint import load_model

    if config_file is None and params_override is None:
        return load_model(checkpoint)
    from spinenet.config import config_from_dict
    from spinenet.config_io import load_mapping_file, merge_dicts, parse_params_override
    from spinenet.engine.checkpoint import load_state_dict_strict, read_checkpoint
    from spinenet.modeling.factory import build_retinanet

    ckpt = read_checkpoint(checkpoint)
    cfg = ckpt["config"]
    if config_file is not None:
        cfg = merge_dicts(cfg, load_mapping_file(config_file))
    if params_override is not None:
        cfg = merge_dicts(cfg, parse_params_override(params_override))
    model = build_retinanet(config_from_dict(cfg))
    load_state_dict_strict(model, ckpt["model"], str(checkpoint))
    return model.eval(), ckpt


HEARTBEAT_S = 10.0  # seconds between "still exporting" lines: a 640x640 export takes ~30 s on a laptop CPU


def run_export(args: argparse.Namespace) -> int:
    import time

    from spinenet.deploy.export import export_onnx
    from spinenet.deploy.postprocess_export import DEFAULT_PRE_NMS_TOPK
    from spinenet.deploy.targets import export_profile
    from spinenet.io_checks import ensure_writable_dir

    profile = export_profile(args.target, args.cann)  # bad --target/--cann combinations fail before the model loads
    quantize = getattr(args, "quantize", None)
    if quantize:
        from spinenet.deploy.quantize_cli import check_quantize_request

        check_quantize_request(args)
        args.conv_algorithm = "direct"
    # Before the work: the folder of the .onnx must take a file (it is written there, then renamed).
    ensure_writable_dir(resolve_output_path(args.output, "model").parent, "--output folder")
    keep_dtype = getattr(args, "keep_dtype", None)
    if keep_dtype is not None:
        from spinenet.deploy.precision import check_keep_dtype_request

        check_keep_dtype_request(keep_dtype, args.postprocess)  # before any file is written
    print(f"loading {args.checkpoint}", flush=True)
    model, ckpt = load_for_export(args.checkpoint, args.config_file, args.params_override)
    variant = str(ckpt.get("variant") or "spinenet")
    path = resolve_output_path(args.output, variant + ("_int8" if quantize else ""))
    h, w = args.input_image_size
    calibration = None
    if quantize:  # the images are read before the export, so bad --calibration_data fails fast
        from spinenet.deploy.quantize import calibration_images

        calibration = calibration_images(*args.calibration_data, (h, w), args.calibration_images)
        print(f"calibration: {len(calibration)} images of {args.calibration_data[0]}", flush=True)
    trained = trained_image_size(ckpt)
    if trained is not None and trained != (h, w):
        print(f"warning: --input_image_size {h},{w} differs from the size {args.checkpoint} was trained at "
              f"({trained[0]},{trained[1]}): objects then appear at scales the model never saw, and detections can "
              f"be wrong (many confident boxes on a blank image); pass --input_image_size {trained[0]},{trained[1]} "
              "unless this size has been checked", flush=True)
    from spinenet.modeling.spinenet_mobile import SpineNetMobile

    # SpineNet-Mobile's depthwise/separable convolutions have no Winograd form: its export is "direct" anyway.
    conv_algorithm = "direct" if isinstance(model.backbone, SpineNetMobile) else (
        args.conv_algorithm or profile.conv_algorithm)
    print(f"building and exporting {variant} at {h}x{w}, batch {args.batch_size}, then checking the graph "
          "(ONNX checker, shape inference, static shapes)", flush=True)
    start = time.perf_counter()
    final, path = path, (path.with_name(f".{path.stem}.fp32.onnx") if quantize else path)
    with _heartbeat("still exporting"):
        export_onnx(model, path, batch_size=args.batch_size, image_size=args.input_image_size, opset=args.opset,
                    input_type=args.input_type, postprocess=args.postprocess,
                    pre_nms_topk=args.pre_nms_topk or DEFAULT_PRE_NMS_TOPK, conv_algorithm=args.conv_algorithm,
                    metadata={"spinenet.variant": variant, "spinenet.checkpoint": Path(args.checkpoint).name},
                    target=args.target, cann=args.cann)
    if quantize:
        from spinenet.deploy.quantize_cli import quantize_after_export

        try:
            with _heartbeat("still quantizing"):
                quantize_after_export(args, path, final, (h, w), calibration)
        finally:
            path.unlink(missing_ok=True)
        path = final
        import onnx

        meta = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
        print("int8: " + "; ".join(f"{k.removeprefix('spinenet.quantize.')} {v}" for k, v in meta.items()
                                   if k.startswith("spinenet.quantize.")), flush=True)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, {time.perf_counter() - start:.1f} s): "
          f"{variant}, Placeholder {args.batch_size}x{h}x{w}x3 "
          f"{'uint8' if args.input_type == 'image_tensor' else 'float32'}, opset {args.opset}, "
          f"postprocess {args.postprocess}, {conv_algorithm} convolutions{', int8' if quantize else ''}, "
          f"{profile.describe if args.postprocess != 'none' else 'target ' + profile.target}")
    if keep_dtype is not None:
        from spinenet.deploy.precision import write_export_keep_dtype

        names = write_export_keep_dtype(path, keep_dtype)
        print(f"wrote {keep_dtype}: {len(names)} post-processing nodes to keep in fp32 "
              f"(atc --precision_mode=force_fp16 --keep_dtype={keep_dtype})")
    return 0


def trained_image_size(ckpt: dict) -> tuple[int, int] | None:
    """The H, W a checkpoint was trained at (its config's ``retinanet_parser.output_size``), if recorded."""
    try:
        size = ckpt["config"]["retinanet_parser"]["output_size"]
        return int(size[0]), int(size[1])
    except (KeyError, IndexError, TypeError, ValueError):
        return None


@contextlib.contextmanager
def _heartbeat(message: str, interval: float | None = None):
    """Print ``message (N s)`` every ``interval`` seconds while the body runs, so a long step is never silent."""
    import threading
    import time

    interval = HEARTBEAT_S if interval is None else interval
    stop, start = threading.Event(), time.perf_counter()

    def beat() -> None:
        while not stop.wait(interval):
            print(f"  {message} ({time.perf_counter() - start:.0f} s)", flush=True)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def add_image2bin_parser(sub) -> None:
    p = sub.add_parser("image2bin", help="images -> msame .bin inputs (letterboxed) + manifest.json",
                       description="Decode images, resize them keeping the aspect ratio into the model input, pad "
                                   "bottom/right, and write NNNNN.bin (uint8 NHWC) in sorted order with a manifest.",
                       epilog="example: spinenet image2bin --image_file_pattern '/tmp/imagedata/*.{jpg,png}' "
                              "--output_dir /tmp/bindata/")
    p.add_argument("--image_file_pattern", required=True, nargs="+", metavar="PATTERN",
                   help="one or more globs of images, each quoted ('a/*.jpg' 'b/*.png'); brace lists such as "
                        "'*.{jpg,png}' work; the files of all patterns are sorted together")
    p.add_argument("--output_dir", required=True, help="folder for the .bin files and manifest.json")
    p.add_argument("--image_size", default="640", help="model input: N or H,W (default 640)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the NNNNN.bin files and manifest.json of a non-empty --output_dir")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_image2bin)


def run_image2bin(args: argparse.Namespace) -> int:
    from spinenet.deploy.image2bin import image2bin

    result = image2bin(args.image_file_pattern, args.output_dir, args.image_size, overwrite=args.overwrite,
                       progress=not args.quiet)
    print(result.summary())
    return 0


def add_infer_parser(sub) -> None:
    p = sub.add_parser("infer", help="msame-compatible batch inference over .bin files",
                       description="Run an exported model over a folder of .bin inputs the way msame does: outputs "
                                   "in <output>/<YYYYmmdd_HHMMSS>/<name>_output_<k>.txt|bin, msame's timing lines, "
                                   "and summary.json.",
                       epilog="example: spinenet infer --model spinenet_tf_310.onnx --input data/ --output out/ "
                              "--outfmt TXT")
    p.add_argument("--model", required=True, help=".onnx (onnxruntime, openvino) or spinenet .pt (torch)")
    p.add_argument("--input", required=True, help="folder of .bin files, or one .bin")
    p.add_argument("--output", required=True, help="output root; a timestamped run folder is created inside")
    p.add_argument("--outfmt", default="TXT", help="TXT, or anything else for raw BIN (as msame)")
    p.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "openvino", "torch"],
                   help="runtime: onnxruntime (default) or openvino for a .onnx, torch for a spinenet .pt")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, or msame's device id 0..255 (cuda:N where "
                                                   "the runtime has CUDA; 0 is the CPU otherwise)")
    p.add_argument("--loop", type=int, default=1, help="repeat a single-file input N times (1..100)")
    add_msame_flags(p)
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the runtime's)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                   help="OpenVINO inference precision (its CPU default is bf16 where supported)")
    p.add_argument("--quiet", action="store_true",
                   help="print only warnings and errors: no progress bar, run folder or timing lines")
    p.set_defaults(func=run_infer)


def run_infer(args: argparse.Namespace) -> int:
    from spinenet.deploy.infer import run_inference
    from spinenet.deploy.msame_flags import resolve_device

    device, note = resolve_device(args.device, args.backend)
    if note:
        print(f"[INFO] {note}")
    result = run_inference(args.model, args.input, args.output, outfmt=args.outfmt, backend=args.backend,
                           device=device, loop=args.loop, threads=args.threads, precision=args.precision,
                           progress=not args.quiet, quiet=args.quiet, msame=msame_options(args))
    return 0 if result.files else 1


def add_detect_parser(sub) -> None:
    p = sub.add_parser("detect", help="boxes on images: annotated copies + detections.json",
                       description="Detect objects in images with a spinenet checkpoint or an exported ONNX model; "
                                   "writes annotated images and detections.json (boxes in original pixels).")
    p.add_argument("images", nargs="+", help="image files")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="spinenet checkpoint (.pt), run with PyTorch")
    src.add_argument("--model", help="exported .onnx, run with ONNX Runtime")
    p.add_argument("--output", default="detections",
                   help="output folder (default: detections/): annotated copies at the images' relative paths "
                        "(.jpg appended to non-JPEGs) and detections.json; never over an input or another file")
    p.add_argument("--score_threshold", type=float, default=0.3, help="keep detections scoring at least this")
    p.add_argument("--label_map_file", help="id:name CSV (default: the checkpoint's label map)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.set_defaults(func=run_detect)


def run_detect(args: argparse.Namespace) -> int:
    from spinenet.data.label_map import read_label_map
    from spinenet.deploy.detect import detect_images

    label_map = read_label_map(args.label_map_file) if args.label_map_file else None
    summary = detect_images(args.images, args.output, checkpoint=args.checkpoint, model=args.model,
                            device=args.device, score_threshold=args.score_threshold, label_map=label_map)
    return 0 if summary["images"] else 1


def add_benchmark_parser(sub) -> None:
    p = sub.add_parser("benchmark", help="latency / throughput per backend, batch size and precision",
                       description="Time a model: ms/batch, ms/image and images/s (median, p90, after warm-up), with "
                                   "and without post-processing, per backend and batch size; states the machine "
                                   "and precision.")
    p.add_argument("--model", required=True,
                   help="spinenet checkpoint (.pt) or exported .onnx; a comma list times several side by side "
                        "(e.g. an fp32 and an int8 export)")
    p.add_argument("--backends", default="onnxruntime,torch", help="comma list of onnxruntime, openvino, torch")
    p.add_argument("--batch_sizes", default="1,8", help="comma list (a .onnx keeps its own batch size)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="fp32 (default); bf16: OpenVINO's CPU inference precision, or torch autocast; fp16: torch "
                        "autocast on CUDA only. Numbers are only comparable at the same precision")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N (onnxruntime-gpu, torch)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs before timing each setting (default 3)")
    p.add_argument("--runs", type=int, default=10, help="timed runs per setting; median and p90 of these (default 10)")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads (default: each runtime's own, one per physical core)")
    p.add_argument("--json", dest="output", default=None, help="write the results here")
    p.set_defaults(func=run_benchmark_cmd)


def run_benchmark_cmd(args: argparse.Namespace) -> int:
    from spinenet.deploy.benchmark import run_benchmark

    run_benchmark(args.model, [b.strip() for b in args.backends.split(",") if b.strip()],
                  [int(b) for b in args.batch_sizes.split(",")], args.precision, args.device, args.warmup, args.runs,
                  args.threads, args.output)
    return 0
