"""`make demo`: the smallest end-to-end run that shows the model is the reference's, on a fresh clone.

1. the five variants and their metadata (`spinenet models`);
2. a real TensorFlow Model Garden checkpoint (committed under tests/fixtures, written by tf-models-official)
   read without TensorFlow, mapped onto our model, and checked against TensorFlow's own recorded outputs;
3. SpineNet-49S RetinaNet at 640x640 on this CPU: build, forward, post-process, timed.

The training, export and deployment demo replaces this once those land (see README).
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


def section(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 70 - len(title)))


def main() -> int:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    from spinenet.cli import main as cli
    from spinenet.convert.model_garden import map_weights, object_graph_names
    from spinenet.convert.parity import check_against_reference, model_for_recording
    from spinenet.convert.tf_checkpoint import TFCheckpointReader
    from spinenet.registry import create_model

    section("1. the variants (spinenet models)")
    cli(["models"])

    section("2. a TensorFlow Model Garden checkpoint, converted and checked against TensorFlow's outputs")
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

    section("3. SpineNet-49S RetinaNet, 640x640, this CPU (random weights, fp32)")
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
