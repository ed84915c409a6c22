"""CPU latency of the deployed model against TF Model Garden, measured in one run on this machine.

Every row runs the *same* weights (Model Garden's SpineNet-49S RetinaNet with redrawn, informative weights,
converted by `spinenet convert`) on the same 640x640 image, at batch 1 (``--batch`` N repeats it):

* TF Model Garden, graph mode (`tf.function`): raw forward, and forward + decoding + NMS (its detection
  generator). Timed twice, before and after this project's rows, so that a drift of the machine's speed
  during the run shows; the reference figure is the mean of the two medians.
* this project: the exported graph (uint8 image in -> the five outputs) in ONNX Runtime fp32, with the default
  export (`--conv_algorithm winograd`) and with `direct` convolutions; ONNX Runtime on the raw-maps export
  (forward alone); OpenVINO fp32 on the default export (forward alone and with post-processing) and bf16 on
  the direct one;
  PyTorch eager fp32 as the checkpoint runs (forward alone and with post-processing) and with the export's
  inference rewrites; `torch.compile` (Inductor, weights frozen) of the rewritten model with direct
  convolutions, forward alone and with post-processing (compiled once per process, before the warm-ups);
  int8 (`spinenet export --quantize int8`, calibrated on 16 synthetic 640x640 images) in OpenVINO with the default
  float groups (predictors float) and with every convolution int8, and in ONNX Runtime; the float parts of the
  int8 rows run in fp32 (OpenVINO's precision hint stated per row: its CPU default would be bf16 here).

Each of this project's rows runs in its own process (so its peak RSS is its own) with the same thread count,
``--rounds`` times round-robin.

    python benchmarks/deploy_speed.py --tf_python .venv-tf/bin/python [--runs 10] [--rounds 3] [--threads 2]

Prints a table (median of --runs after 3 warm-ups, peak RSS, the CPU's int8/bf16 instruction sets) and the ratios
to TF's forward + post-processing: ONNX Runtime fp32 (issue target <= 0.5) and the best backend at fp32 (issue
target <= 0.4); and the best int8 row's time over the best fp32 row's (issue 17's target <= 0.6). Exit status 0
when the ONNX Runtime ratio meets its target.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ORT_TARGET, BEST_TARGET, INT8_TARGET = 0.5, 0.4, 0.6


def _row(spec: dict, runs: int, threads: int) -> dict:
    """Time one configuration in this process: median / min ms over ``runs`` after 3 warm-ups, peak RSS."""
    from spinenet.deploy.benchmark import peak_rss_mib, time_ms

    ref = np.load(spec["reference"])
    batch = int(spec.get("batch", 1))
    image = np.ascontiguousarray(np.repeat(ref["images_uint8"][:1], batch, axis=0))
    if spec["backend"] == "torch":
        import torch

        from spinenet.deploy.export import ExportWrapper
        from spinenet.engine.checkpoint import load_model

        torch.set_num_threads(threads)
        model, _ = load_model(spec["model"])
        wrapper = ExportWrapper(model, batch_size=batch, image_size=image.shape[1:3],
                                conv_algorithm=spec.get("conv_algorithm"),
                                postprocess=spec.get("postprocess", "v1")).eval()
        x = torch.from_numpy(image)
        forward = wrapper
        if spec.get("compile"):
            import torch._inductor.config as inductor_config

            # Freezing turns the weights into constants, so Inductor can pre-pack them for oneDNN's convolutions.
            inductor_config.freezing = True
            forward = torch.compile(wrapper)
            with torch.no_grad():
                forward(x)  # compiles (about a minute here); the 3 warm-ups below then run compiled code

        def run():
            with torch.no_grad():
                return forward(x)
    else:
        from spinenet.deploy.runtimes import open_session

        sess = open_session(spec["model"], spec["backend"], "cpu", threads, spec.get("precision", "fp32"))
        feed = image if sess.input_dtype == np.uint8 else \
            np.ascontiguousarray(np.repeat(ref["input_normalized"][:1], batch, axis=0)).astype(np.float32)

        def run():
            return sess.run(feed)
    times = time_ms(run, 3, runs)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "peak_rss_mib": peak_rss_mib()}



def _run_row(spec: dict, runs: int, threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, __file__, "--_row", json.dumps(spec), "--runs", str(runs),
                          "--threads", str(threads)], check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _int8_exports(fp32_direct: Path, work: Path, batch: int) -> dict[str, Path]:
    """The int8 exports of the direct-convolution graph: every convolution int8 (the default, "int8") and the
    predictors float ("int8_predictors_fp32"),
    calibrated on 16 synthetic 640x640 images (timing does not depend on the calibration's values)."""
    from spinenet.data.synthetic import make_synthetic_dataset
    from spinenet.deploy.quantize import calibration_images, quantize_int8

    calib = work / "calibration"
    if not (calib / "annotations" / "instances_train.json").exists():
        make_synthetic_dataset(calib, num_train=16, num_val=0, image_size=640, seed=1, overwrite=True, progress=False)
    images = calibration_images(calib / "annotations" / "instances_train.json", calib / "train", (640, 640), 16)
    return {"int8": quantize_int8(fp32_direct, work / f"int8_b{batch}.onnx", images, float_groups=()),
            "int8_predictors_fp32": quantize_int8(fp32_direct, work / f"int8_pred_b{batch}.onnx", images,
                                                  float_groups=("predictors",))}


def _tf_timing(args, work: Path, tag: str) -> dict:
    cmd = [args.tf_python, str(HERE.parent / "tools" / "model_garden_fixture.py"), "--model_id", "49S",
           "--output", str(work), "--time_runs", str(args.runs), "--time_batch", str(args.batch), "--num_images", "1"]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
    timing = json.loads((work / "timing.json").read_text())
    (work / f"timing_{tag}_b{args.batch}.json").write_text(json.dumps(timing, indent=1))
    return timing


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tf_python", default=".venv-tf/bin/python")
    p.add_argument("--workdir", default="runs/deploy_speed")
    p.add_argument("--runs", type=int, default=10, help="timed runs per row and round, after 3 warm-ups")
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds over all of this project's rows, each row in a fresh process; a row's figure is "
                        "the median of its round medians")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--batch", type=int, default=1, help="batch size of every row (default 1)")
    p.add_argument("--rows", default=None,
                   help="a regular expression: only this project's rows whose name matches (e.g. 'ONNX Runtime|"
                        "OpenVINO' to leave out the PyTorch ones on a busy machine)")
    p.add_argument("--reuse", action="store_true", help="reuse the TF recording and timings in --workdir")
    p.add_argument("--_row", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._row:
        print(json.dumps(_row(json.loads(args._row), args.runs, args.threads)))
        return 0

    work = Path(args.workdir)
    b = args.batch
    before, after = work / f"timing_before_b{b}.json", work / f"timing_after_b{b}.json"
    reuse = args.reuse and before.exists() and after.exists()
    tf_before = json.loads(before.read_text()) if reuse else _tf_timing(args, work, "before")

    import torch

    from spinenet.convert.model_garden import convert_model_garden
    from spinenet.deploy.benchmark import isa_flags
    from spinenet.deploy.export import export_onnx
    from spinenet.engine.checkpoint import load_model

    torch.set_num_threads(args.threads)
    convert_model_garden(work / "ckpt", work / "model.pt", model_id="49S")
    model, _ = load_model(work / "model.pt")
    onnx = {name: export_onnx(model, work / f"{name}_b{b}.onnx", batch_size=b, image_size=(640, 640), **kw)
            for name, kw in (("full", {}), ("full_direct", {"conv_algorithm": "direct"}),
                             ("raw", {"postprocess": "none"}))}
    onnx.update(_int8_exports(onnx["full_direct"], work, b))
    ref = str(work / "reference.npz")
    configs = [
        ("spinenet ONNX Runtime fp32", "forward", {"backend": "onnxruntime", "model": str(onnx["raw"])}),
        ("spinenet ONNX Runtime fp32", "forward + postprocess", {"backend": "onnxruntime", "model": str(onnx["full"])}),
        ("spinenet ONNX Runtime fp32, direct conv", "forward + postprocess",
         {"backend": "onnxruntime", "model": str(onnx["full_direct"])}),
        ("spinenet OpenVINO fp32", "forward", {"backend": "openvino", "model": str(onnx["raw"]), "precision": "fp32"}),
        ("spinenet OpenVINO fp32", "forward + postprocess",
         {"backend": "openvino", "model": str(onnx["full"]), "precision": "fp32"}),
        ("spinenet OpenVINO fp32, direct conv", "forward + postprocess",
         {"backend": "openvino", "model": str(onnx["full_direct"]), "precision": "fp32"}),
        ("spinenet OpenVINO bf16", "forward + postprocess",
         {"backend": "openvino", "model": str(onnx["full_direct"]), "precision": "bf16"}),
        ("spinenet PyTorch eager fp32", "forward",
         {"backend": "torch", "model": str(work / "model.pt"), "postprocess": "none"}),
        ("spinenet PyTorch eager fp32", "forward + postprocess", {"backend": "torch", "model": str(work / "model.pt")}),
        ("spinenet PyTorch eager fp32, inference rewrites", "forward + postprocess",
         {"backend": "torch", "model": str(work / "model.pt"), "conv_algorithm": "winograd"}),
        ("spinenet torch.compile fp32, inference rewrites", "forward",
         {"backend": "torch", "model": str(work / "model.pt"), "postprocess": "none", "conv_algorithm": "direct",
          "compile": True}),
        ("spinenet torch.compile fp32, inference rewrites", "forward + postprocess",
         {"backend": "torch", "model": str(work / "model.pt"), "conv_algorithm": "direct", "compile": True}),
        ("spinenet OpenVINO int8", "forward + postprocess",
         {"backend": "openvino", "model": str(onnx["int8"]), "precision": "fp32", "label": "int8"}),
        ("spinenet OpenVINO int8, predictors fp32", "forward + postprocess",
         {"backend": "openvino", "model": str(onnx["int8_predictors_fp32"]), "precision": "fp32", "label": "int8"}),
        ("spinenet OpenVINO int8, the rest bf16", "forward + postprocess",
         {"backend": "openvino", "model": str(onnx["int8"]), "precision": "bf16", "label": "i8+bf"}),
        ("spinenet ONNX Runtime int8", "forward + postprocess",
         {"backend": "onnxruntime", "model": str(onnx["int8"]), "label": "int8"}),
    ]
    if args.rows:
        configs = [c for c in configs if re.search(args.rows, c[0].removeprefix("spinenet "))]
    results: dict[int, list[dict]] = {i: [] for i in range(len(configs))}
    for round_ in range(args.rounds):  # round-robin, so a drift of the machine's speed hits every row alike
        for i, (name, _, spec) in enumerate(configs):
            try:
                results[i].append(_run_row({**spec, "reference": ref, "batch": b}, args.runs, args.threads))
            except subprocess.CalledProcessError as e:  # e.g. a runtime not installed: say so, keep the others
                print(f"skipped {name}: {e.stderr.strip().splitlines()[-1] if e.stderr else e}", flush=True)
        print(f"round {round_ + 1}/{args.rounds}: " + ", ".join(
            f"{configs[i][0].removeprefix('spinenet ')} {configs[i][1]} {r[-1]['median_ms']:.0f} ms"
            for i, r in results.items() if r), flush=True)
    rows = [(name, what, spec.get("label", spec.get("precision", "fp32")),
             {"median_ms": statistics.median(r["median_ms"] for r in results[i]),
              "round_medians_ms": [r["median_ms"] for r in results[i]],
              "peak_rss_mib": max(r["peak_rss_mib"] for r in results[i])})
            for i, (name, what, spec) in enumerate(configs) if results[i]]
    tf_after = json.loads(after.read_text()) if reuse else _tf_timing(args, work, "after")

    tf = {k: (tf_before[k]["median_ms"] + tf_after[k]["median_ms"]) / 2 for k in ("forward", "forward_postprocess")}
    table = [("TF Model Garden, graph mode", "forward", "fp32", {"median_ms": tf["forward"]}),
             ("TF Model Garden, graph mode", "forward + postprocess", "fp32", {"median_ms": tf["forward_postprocess"]}),
             *rows]
    width = max(len(r[0]) for r in table)
    print(f"\nSpineNet-49S RetinaNet, 640x640, batch {b}, CPU ({platform.machine()}, {os.cpu_count()} cores, "
          f"{args.threads} threads); TF: median of {args.runs} runs after 3 warm-ups; this project: median over "
          f"{args.rounds} rounds of the median of {args.runs} runs after 3 warm-ups, each in a fresh process")
    print(f"CPU flags: {isa_flags()}; int8 rows: convolutions int8, the rest fp32 (OpenVINO's "
          "INFERENCE_PRECISION_HINT f32); i8+bf: the rest bf16")
    print(f"TF forward + postprocess: {tf_before['forward_postprocess']['median_ms']:.1f} ms before this "
          f"project's rows, {tf_after['forward_postprocess']['median_ms']:.1f} ms after; "
          f"mean {tf['forward_postprocess']:.1f}")
    print(f"{'':{width}}  {'':22}  {'prec.':5}  {'ms/batch':>9}  {'img/s':>6}  {'ratio':>5}  {'peak RSS':>8}")
    for name, what, prec, r in table:
        ratio = r["median_ms"] / tf["forward_postprocess"] if what != "forward" else r["median_ms"] / tf["forward"]
        rss = f"{r['peak_rss_mib']:.0f} MiB" if "peak_rss_mib" in r else "n/a"
        print(f"{name:{width}}  {what:22}  {prec:5}  {r['median_ms']:9.1f}  {1000 * b / r['median_ms']:6.2f}  "
              f"{ratio:5.2f}  {rss:>8}")
    by_name = {name: r for name, what, _, r in rows if what == "forward + postprocess"}
    ort = by_name.get("spinenet ONNX Runtime fp32")
    ort_ratio = ort["median_ms"] / tf["forward_postprocess"] if ort else float("nan")
    best_name, best = min(((n, r) for n, w, prec, r in rows if w == "forward + postprocess" and prec == "fp32"),
                          key=lambda nr: nr[1]["median_ms"])
    best_ratio = best["median_ms"] / tf["forward_postprocess"]
    print(f"ratio ONNX Runtime fp32 / TF Model Garden, forward + postprocess: {ort_ratio:.2f} (target <= {ORT_TARGET})")
    print(f"ratio best fp32 backend ({best_name}) / TF Model Garden: {best_ratio:.2f} (target <= {BEST_TARGET})")
    int8 = [(n, r) for n, w, prec, r in rows if w == "forward + postprocess" and prec == "int8"]
    int8_ratio = None
    if int8:
        int8_name, int8_best = min(int8, key=lambda nr: nr[1]["median_ms"])
        int8_ratio = int8_best["median_ms"] / best["median_ms"]
        print(f"ratio best int8 ({int8_name}) / best fp32 ({best_name}): {int8_ratio:.2f} (target <= {INT8_TARGET}); "
              f"/ TF Model Garden: {int8_best['median_ms'] / tf['forward_postprocess']:.2f}")
    summary = {"batch": b, "tf": tf, "tf_before": tf_before, "tf_after": tf_after, "rows": rows,
               "ort_ratio": ort_ratio, "best": best_name, "best_ratio": best_ratio, "threads": args.threads,
               "int8_ratio": int8_ratio, "isa": isa_flags()}
    (work / f"results_b{b}.json").write_text(json.dumps(summary, indent=1))
    return 0 if ort_ratio <= ORT_TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
