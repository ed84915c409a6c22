"""`make demo`: the project end to end on a fresh clone, on an embedded default.

1. the detector this project trained on its own synthetic shapes (`demo/shapes49s_fp16.pt`, made by the
   command stored inside it) evaluated on freshly generated held-out images with `spinenet evaluate`;
2. the seed's deployment chain with this project's commands: export -> image2bin -> infer -> report, whose
   mAP of the deployed ONNX model is printed beside `spinenet evaluate`'s;
3. the five variants and their metadata (`spinenet models`);
4. a real TensorFlow Model Garden checkpoint (committed under tests/fixtures, written by tf-models-official)
   read without TensorFlow, mapped onto our model, and checked against TensorFlow's own recorded outputs;
5. SpineNet-49S RetinaNet at 640x640 on this CPU: build, forward, post-process, timed.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "fixtures" / "model_garden_tiny"
DEMO_CKPT = ROOT / "demo" / "shapes49s_fp16.pt"
WORK = ROOT / "runs" / "demo"
# The held-out set of the recorded training run (benchmarks/train_synthetic.py defaults): same seed, same
# generator, so these are exactly the images that run was evaluated on.
HELD_OUT = dict(num_train=0, num_val=200, image_size=128, seed=0, size_range=(0.15, 0.6))


def trained_detector() -> float | None:
    """Evaluate the committed detector on the regenerated held-out set; returns its COCO AP."""
    import subprocess
    import sys

    from spinenet.data.synthetic import make_synthetic_dataset
    from spinenet.engine.checkpoint import read_checkpoint

    if not DEMO_CKPT.exists():
        print(f"{DEMO_CKPT.relative_to(ROOT)} is not in this checkout; skipping (train one with "
              "`python benchmarks/train_synthetic.py`)")
        return None
    ckpt = read_checkpoint(DEMO_CKPT)
    print(f"detector: {DEMO_CKPT.relative_to(ROOT)} (SpineNet-49S, {len(ckpt['label_map'])} classes, trained "
          f"{ckpt.get('step')} steps by: {ckpt.get('training_command')})")
    data = WORK / "data"
    if not (data / "annotations" / "instances_val.json").exists():
        make_synthetic_dataset(data, overwrite=True, progress=False, **HELD_OUT)
    cmd = [sys.executable, "-m", "spinenet.cli", "evaluate", "--checkpoint", str(DEMO_CKPT), "--val_data",
           str(data / "annotations" / "instances_val.json"), str(data / "val"), "--output", str(WORK / "eval"),
           "--no_progress", "--num_workers", "0"]
    print("+ spinenet " + " ".join(cmd[3:]), flush=True)
    subprocess.run(cmd, check=True)
    metrics = json.loads((WORK / "eval" / "metrics.json").read_text())
    print(f"held-out COCO mAP@[.5:.95] = {metrics['AP']:.4f}, AP50 = {metrics['AP50']:.4f}")
    return metrics["AP"]


def deployment_chain() -> None:
    """The seed's chain with this project's commands: export -> image2bin -> infer -> report (+ mAP)."""
    import shutil
    import subprocess
    import sys

    if not DEMO_CKPT.exists():
        return
    data, chain = WORK / "data", WORK / "chain"
    shutil.rmtree(chain, ignore_errors=True)
    size = str(HELD_OUT["image_size"])
    steps = [
        ["export", "--checkpoint", str(DEMO_CKPT), "--output", str(chain / "model.onnx"),
         "--input_image_size", f"{size},{size}"],
        ["image2bin", "--image_file_pattern", str(data / "val" / "*.jpg"), "--output_dir", str(chain / "bins"),
         "--image_size", size, "--quiet"],
        ["infer", "--model", str(chain / "model.onnx"), "--input", str(chain / "bins"), "--output",
         str(chain / "out"), "--outfmt", "TXT", "--quiet"],
        ["report", "--output", str(chain / "out"), "--label_map_file", str(data / "labels.csv"), "--output_html",
         str(chain / "report.html"), "--image_file_pattern", str(data / "val" / "*.jpg"), "--manifest",
         str(chain / "bins" / "manifest.json"), "--annotations", str(data / "annotations" / "instances_val.json")],
    ]
    for args in steps:
        print("+ spinenet " + " ".join(args), flush=True)
        r = subprocess.run([sys.executable, "-m", "spinenet.cli", *args], capture_output=True, text=True)
        lines = [ln for ln in r.stdout.splitlines() if not ln.startswith("Inference time:")]
        print("\n".join(lines[-14:]))
        if r.returncode != 0:
            print(r.stderr[-2000:])
            raise SystemExit(f"spinenet {args[0]} failed")
    print(f"HTML report: {chain / 'report.html'}")


def section(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 70 - len(title)))


def main() -> int:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    from spinenet.cli import main as cli
    from spinenet.convert.model_garden import map_weights, object_graph_names
    from spinenet.convert.parity import check_against_reference, model_for_recording
    from spinenet.convert.tf_checkpoint import TFCheckpointReader
    from spinenet.registry import create_model

    section("1. the detector trained on synthetic shapes, evaluated on held-out images")
    trained_detector()

    section("2. the deployment chain: export -> image2bin -> infer -> report, with the deployed model's mAP")
    deployment_chain()

    section("3. the variants (spinenet models)")
    cli(["models"])

    section("4. a TensorFlow Model Garden checkpoint, converted and checked against TensorFlow's outputs")
    meta = json.loads((TINY / "variables.json").read_text())["metadata"]
    reader = TFCheckpointReader(TINY / "ckpt")
    model = model_for_recording(meta)
    model.load_state_dict(map_weights(reader, object_graph_names(reader), model), strict=True)
    report = check_against_reference(model, dict(np.load(TINY / "reference.npz")))
    print(f"checkpoint: {reader.prefix} ({len(reader.keys())} tensors, tf-models-official "
          f"{meta['tf_models_official_version']}, width-reduced SpineNet, {meta['image_size']}x{meta['image_size']})")
    print(report.table())
    verdict = "PASS" if report.max_map_diff <= 1e-3 and report.detections_agree else "FAIL"
    print(f"max |Δ| of raw maps vs TensorFlow: {report.max_map_diff:.2e}; detections agree: "
          f"{report.detections_agree} -> {verdict}")

    section("5. SpineNet-49S RetinaNet, 640x640, this CPU (random weights, fp32)")
    t0 = time.perf_counter()
    net = create_model("retinanet_spinenet49s").eval()
    print(f"built in {time.perf_counter() - t0:.1f} s: "
          f"{sum(p.numel() for p in net.parameters()):,} parameters (reference: 11,265,942)")
    x = torch.randn(1, 3, 640, 640)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        dets = net.detect(x)
        times.append(time.perf_counter() - t0)
    print(f"forward + post-processing, batch 1: {1000 * min(times):.0f} ms (best of 3, "
          f"{torch.get_num_threads()} threads); anchors: {net.anchors((640, 640)).shape[0]:,} (reference: 76,725); "
          f"detections above 0.05: {int(dets['num_detections'][0])}")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    raise SystemExit(main())
