"""``spinenet export --target ascend``, measured: operator lists at 640x640, NMS rounds needed, and the deployed AP.

1. Exports at 640x640 for Ascend: SpineNet-49S (random weights, 90 classes) and the TF1 fixture's model
   (tests/fixtures/tpu_tiny); each graph's operators against ATC's CANN 5.0.4 list, its opset, static I/O.
2. The rounds greedy NMS needs (spinenet.deploy.nms_unrolled): per image, the rounds until the outputs are
   decided and until every candidate is, on the 200 held-out synthetic images (the demo detector, the letterboxed
   128x128 inputs of the deployed chain) and on the TF1 fixture's two images. They justify DEFAULT_NMS_ROUNDS.
3. The seed's chain with the Ascend graph in ONNX Runtime (export --target ascend -> image2bin -> infer -> report
   --annotations) against `spinenet evaluate` of the checkpoint, on the same 200 images (issue 11: ΔAP 0.0000),
   and the Ascend graph's outputs against the default export's, image by image.

    python benchmarks/ascend_export.py [--workdir runs/ascend_export] [--skip_640]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CKPT = ROOT / "demo" / "shapes49s_fp16.pt"
TINY = ROOT / "tests" / "fixtures" / "tpu_tiny"
HELD_OUT = dict(num_train=0, num_val=200, image_size=128, seed=0, size_range=(0.15, 0.6))  # as fast_path_accuracy


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default=str(ROOT / "runs" / "ascend_export"))
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--skip_640", action="store_true", help="skip the two 640x640 exports")
    p.add_argument("--skip_rounds", action="store_true", help="skip the NMS rounds measurement")
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    results = {}
    if not args.skip_640:
        results["exports_640"] = exports_640(work)
    if not args.skip_rounds:
        results["rounds"] = measure_rounds(work)
    results["chain"] = chain_ap(work, args.threads)
    (work / "results.json").write_text(json.dumps(results, indent=1))
    return 0


def _tiny_model():
    from spinenet.convert.tpu import map_tpu_weights, model_from_reference_metadata, open_tpu_checkpoint

    meta = json.loads((TINY / "variables.json").read_text())["metadata"]
    model = model_from_reference_metadata(meta)
    with open_tpu_checkpoint(TINY / "train_checkpoint.tar.gz") as w:
        model.load_state_dict(map_tpu_weights(w, model), strict=True)
    return model.eval(), meta


def exports_640(work: Path) -> list[dict]:
    import onnx
    import torch

    from spinenet.deploy.atc_ops import atc_operator_list, unlisted_nodes
    from spinenet.deploy.export import export_onnx
    from spinenet.deploy.onnx_graph import all_op_types, is_static
    from spinenet.registry import create_model

    torch.manual_seed(0)
    models = {"SpineNet-49S, random weights, 90 classes": create_model("retinanet_spinenet49s").eval(),
              "TF1 fixture's model (tests/fixtures/tpu_tiny)": _tiny_model()[0]}
    rows = []
    for label, model in models.items():
        start = time.perf_counter()
        path = export_onnx(model, work / f"{label.split(',')[0].split()[0]}_640.onnx", image_size=(640, 640),
                           target="ascend")
        seconds = time.perf_counter() - start
        proto = onnx.load(path)
        ops = collections.Counter(all_op_types(proto.graph))
        row = {"model": label, "seconds": round(seconds, 1), "nodes": len(proto.graph.node),
               "opset": next(o.version for o in proto.opset_import if o.domain == ""),
               "unlisted_cann5": unlisted_nodes(proto.graph, atc_operator_list("5")),
               "static_io": all(is_static(v) for v in [*proto.graph.input, *proto.graph.output]),
               "operators": dict(sorted(ops.items()))}
        rows.append(row)
        print(f"{label}: {path.name} {row['nodes']} nodes, opset {row['opset']}, static I/O {row['static_io']}, "
              f"{len(row['unlisted_cann5'])} nodes off the CANN 5.0.4 list, {seconds:.1f} s; operators: "
              f"{', '.join(sorted(ops))}")
    return rows


def measure_rounds(work: Path) -> dict:
    """Rounds needed per image, captured from the eager post-processing (its Loop form's inputs)."""
    import numpy as np
    import torch

    import spinenet.deploy.postprocess_export as pe
    from spinenet.data.synthetic import make_synthetic_dataset
    from spinenet.deploy.export import ExportWrapper
    from spinenet.deploy.image2bin import image2bin
    from spinenet.deploy.nms_unrolled import DEFAULT_NMS_ROUNDS, greedy_rounds_needed
    from spinenet.engine.checkpoint import load_model

    data = work / "data"
    if not (data / "annotations" / "instances_val.json").exists():
        make_synthetic_dataset(data, overwrite=True, progress=False, **HELD_OUT)
    size = HELD_OUT["image_size"]
    image2bin(str(data / "val" / "*.jpg"), work / "bins", size, progress=False, overwrite=True)

    rounds: list[tuple[list[int], list[int]]] = []  # (outputs decided, all decided) per image
    max_total = [0]
    original = pe._greedy_keep

    def capture(valid, suppress):  # measured on the spot: the (k, k) matrices are 16 MB each
        outputs, every = greedy_rounds_needed(valid, suppress, max_total[0])
        rounds.append((outputs.tolist(), every.tolist()))
        return original(valid, suppress)

    pe._greedy_keep = capture
    try:
        model, _ = load_model(CKPT)
        max_total[0] = model.params.postprocess.max_total_size
        wrapper = ExportWrapper(model, image_size=(size, size)).eval()
        with torch.no_grad():
            for path in sorted((work / "bins").glob("*.bin")):
                wrapper(torch.from_numpy(np.fromfile(path, np.uint8).reshape(1, size, size, 3)))
        synthetic = _summary(rounds)
        rounds.clear()
        tiny, meta = _tiny_model()
        max_total[0] = tiny.params.postprocess.max_total_size
        ref = dict(np.load(TINY / "reference.npz"))
        wrapper = ExportWrapper(tiny, batch_size=2, image_size=(meta["image_size"],) * 2).eval()
        with torch.no_grad():
            wrapper(torch.from_numpy(ref["images_uint8"]))
        fixture = _summary(rounds)
    finally:
        pe._greedy_keep = original
    for label, r in (("200 held-out synthetic images", synthetic), ("TF1 fixture, 2 images", fixture)):
        print(f"NMS rounds, {label}: outputs decided after max {r['outputs_max']} (median {r['outputs_median']}), "
              f"every candidate after max {r['all_max']} (median {r['all_median']}); "
              f"DEFAULT_NMS_ROUNDS = {DEFAULT_NMS_ROUNDS}")
    return {"synthetic": synthetic, "tf1_fixture": fixture, "default_nms_rounds": DEFAULT_NMS_ROUNDS}


def _summary(rounds: list[tuple[list[int], list[int]]]) -> dict:
    import numpy as np

    outputs = [r for o, _ in rounds for r in o]
    every = [r for _, a in rounds for r in a]
    return {"images": len(outputs), "outputs_max": max(outputs), "outputs_median": float(np.median(outputs)),
            "all_max": max(every), "all_median": float(np.median(every)),
            "outputs_histogram": dict(sorted(collections.Counter(outputs).items())),
            "all_histogram": dict(sorted(collections.Counter(every).items()))}


def chain_ap(work: Path, threads: int) -> dict:
    import contextlib
    import io

    import numpy as np

    from spinenet.cli import main as cli
    from spinenet.data.synthetic import make_synthetic_dataset
    from spinenet.deploy.image2bin import image2bin
    from spinenet.deploy.runtimes import OnnxRuntimeSession
    from spinenet.engine.evaluate import evaluate_checkpoint

    data, size = work / "data", HELD_OUT["image_size"]
    ann = data / "annotations" / "instances_val.json"
    if not ann.exists():
        make_synthetic_dataset(data, overwrite=True, progress=False, **HELD_OUT)
    if not (work / "bins" / "manifest.json").exists():
        image2bin(str(data / "val" / "*.jpg"), work / "bins", size, progress=False, overwrite=True)
    reference = evaluate_checkpoint(CKPT, (str(ann), str(data / "val")), output=str(work / "eval"), num_workers=0,
                                    progress=False, device="cpu")
    runs = {}
    for target in ("ascend", "onnxruntime"):
        run = work / target
        with contextlib.redirect_stdout(io.StringIO()):
            assert cli(["export", f"--checkpointpath={CKPT}", f"--output={run / 'model.onnx'}",
                        f"--input_image_size={size},{size}", "--target", target]) == 0
            assert cli(["infer", "--model", str(run / "model.onnx"), "--input", str(work / "bins"), "--output",
                        str(run / "out"), "--threads", str(threads), "--quiet"]) == 0
            out = next(d for d in sorted((run / "out").iterdir()) if d.is_dir())
            assert cli(["report", "--output", str(out), "--label_map_file", str(data / "labels.csv"),
                        "--output_html", str(run / "report.html"), "--image_file_pattern", str(data / "val" / "*.jpg"),
                        "--manifest", str(work / "bins" / "manifest.json"), "--annotations", str(ann)]) == 0
        runs[target] = json.loads((run / "report_metrics.json").read_text())
    # image by image: the Ascend graph's five outputs against the default export's
    a, d = (OnnxRuntimeSession(work / t / "model.onnx", threads=threads) for t in ("ascend", "onnxruntime"))
    identical = worst_box = 0
    bins = sorted((work / "bins").glob("*.bin"))
    for path in bins:
        x = np.fromfile(path, np.uint8).reshape(1, size, size, 3)
        oa, od = a.run(x), d.run(x)
        same = all(np.array_equal(oa[k], od[k]) for k in ("NumDetections", "DetectionClasses"))
        n = int(od["NumDetections"][0])
        worst_box = max(worst_box, float(np.abs(oa["DetectionBoxes"][0, :n] - od["DetectionBoxes"][0, :n]).max()
                                         if n else 0.0))
        identical += same
    row = {"reference_AP": reference["AP"], "reference_AP50": reference["AP50"],
           "ascend_AP": runs["ascend"]["AP"], "ascend_AP50": runs["ascend"]["AP50"],
           "default_AP": runs["onnxruntime"]["AP"], "delta_AP": runs["ascend"]["AP"] - reference["AP"],
           "images_same_classes_and_counts": identical, "images": len(bins), "max_box_diff_vs_default": worst_box}
    print(f"200 held-out images: evaluate AP {reference['AP']:.4f} AP50 {reference['AP50']:.4f}; Ascend graph (ORT) "
          f"AP {row['ascend_AP']:.4f} AP50 {row['ascend_AP50']:.4f} (ΔAP {row['delta_AP']:+.4f}); default export AP "
          f"{row['default_AP']:.4f}; Ascend vs default: same counts and classes on {identical}/{len(bins)} images, "
          f"max box difference {worst_box:.2e} px")
    return row


if __name__ == "__main__":
    sys.exit(main())
