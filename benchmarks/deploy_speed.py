"""CPU latency of the deployed model against TF Model Garden, measured in one run on this machine.

Both sides run the *same* weights (Model Garden's SpineNet-49S RetinaNet with redrawn, informative weights,
converted by `spinenet convert`) on the same 640x640 input at batch 1:

* TF Model Garden, graph mode (`tf.function`): raw forward, and forward + decoding + NMS (its detection generator);
* this project: ONNX Runtime fp32 on the exported graph (uint8 image in -> the five outputs), and the raw-maps
  export (forward alone); PyTorch eager for reference.

    python benchmarks/deploy_speed.py --tf_python .venv-tf/bin/python [--runs 10]

Prints a table (median of --runs after 3 warm-ups) and the ratio ORT / TF for forward + post-processing
(target: <= 0.5).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def median_ms(fn, runs: int) -> float:
    from spinenet.deploy.benchmark import time_ms

    return statistics.median(time_ms(fn, 3, runs))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tf_python", default=".venv-tf/bin/python")
    p.add_argument("--workdir", default="runs/deploy_speed")
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--reuse", action="store_true", help="reuse the TF recording and timing in --workdir")
    args = p.parse_args()

    work = Path(args.workdir)
    if not (args.reuse and (work / "timing.json").exists()):
        cmd = [args.tf_python, str(HERE.parent / "tools" / "model_garden_fixture.py"), "--model_id", "49S",
               "--output", str(work), "--time_runs", str(args.runs), "--num_images", "1"]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    tf_timing = json.loads((work / "timing.json").read_text())

    import torch

    from spinenet.convert.model_garden import convert_model_garden
    from spinenet.deploy.export import export_onnx
    from spinenet.deploy.runtimes import OnnxRuntimeSession
    from spinenet.engine.checkpoint import load_model

    torch.set_num_threads(args.threads)
    convert_model_garden(work / "ckpt", work / "model.pt", model_id="49S")
    model, _ = load_model(work / "model.pt")
    full = export_onnx(model, work / "full.onnx", image_size=(640, 640))
    raw = export_onnx(model, work / "raw.onnx", image_size=(640, 640), postprocess="none")
    ref = np.load(work / "reference.npz")
    image = ref["images_uint8"][:1]
    rows = [("TF Model Garden, graph mode", "forward", tf_timing["forward"]["median_ms"]),
            ("TF Model Garden, graph mode", "forward + postprocess", tf_timing["forward_postprocess"]["median_ms"])]
    for path, what in ((raw, "forward"), (full, "forward + postprocess")):
        sess = OnnxRuntimeSession(path, threads=args.threads)
        rows.append(("spinenet ONNX Runtime fp32", what, median_ms(lambda s=sess: s.run(image), args.runs)))
    x = torch.from_numpy(ref["input_normalized"][:1]).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        rows.append(("spinenet PyTorch eager fp32", "forward", median_ms(lambda: model(x), args.runs)))
    width = max(len(r[0]) for r in rows)
    print(f"\nSpineNet-49S RetinaNet, 640x640, batch 1, CPU ({platform.machine()}, {os.cpu_count()} cores, "
          f"{args.threads} threads), median of {args.runs}")
    for name, what, ms in rows:
        print(f"{name.ljust(width)}  {what.ljust(22)}  {ms:8.1f} ms")
    ort_full, tf_full = rows[3][2], rows[1][2]
    ratio = ort_full / tf_full
    print(f"ratio ONNX Runtime / TF Model Garden, forward + postprocess: {ratio:.2f} (target <= 0.5)")
    (work / "results.json").write_text(json.dumps({"rows": rows, "ratio": ratio}, indent=1))
    return 0 if ratio <= 0.5 else 1


if __name__ == "__main__":
    sys.exit(main())
