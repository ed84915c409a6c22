"""How CPU latency scales with variant, input size and batch: the default ONNX export in ONNX Runtime, fp32.

Random weights are enough for timing: the graph is static, so the post-processing works through its full
candidate window whatever the scores (only the NMS loop's round count depends on them). Each configuration
is exported with `spinenet export`'s defaults, then timed in a fresh process that only runs it (median of
``--runs`` after 2 warm-ups, uint8 image -> detections; that process's peak RSS).

    python benchmarks/cpu_scaling.py [--configs 49S@640x1,49S@1024x1,...] [--runs 3]

A configuration is ``VARIANT@SIZExBATCH``. The default set: SpineNet-49S at 640, 1024 and 1280 (batch 1), 49S
at 640 with batch 2 and 4, and each larger variant at its own input size (49 at 640, 96 at 1024, 143 and 190 at
1280). SpineNet-190 (1885 GFLOPs at 1280) takes several minutes on 2 cores (export, 2 warm-ups, ``--runs``).
SpineNet-Mobile is ``M49``, ``M49S``, ``M49XS``; ``--configs mobile`` times each at its YAML's input size against
SpineNet-49S at the same sizes and at its own 640 (``MOBILE``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

DEFAULT = "49S@640x1,49S@1024x1,49S@1280x1,49S@640x2,49S@640x4,49@640x1,96@1024x1,143@1280x1,190@1280x1"
MOBILE = "M49@384x1,M49S@384x1,M49XS@256x1,49S@384x1,49S@256x1,49S@640x1"
PRESETS = {"default": DEFAULT, "mobile": MOBILE}
MODEL_NAMES = {"49S": "retinanet_spinenet49s", "49": "retinanet_spinenet49", "96": "retinanet_spinenet96",
               "143": "retinanet_spinenet143", "190": "retinanet_spinenet190",
               "M49": "retinanet_spinenet49_mobile", "M49S": "retinanet_spinenet49s_mobile",
               "M49XS": "retinanet_spinenet49xs_mobile"}


def _parse(config: str) -> tuple[str, int, int]:
    try:
        variant, rest = config.split("@")
        size, batch = rest.split("x")
        if variant not in MODEL_NAMES:
            raise ValueError
        return variant, int(size), int(batch)
    except ValueError:
        raise SystemExit(f"bad configuration {config!r}: write VARIANT@SIZExBATCH, e.g. 49S@640x1, with VARIANT one "
                         f"of {', '.join(MODEL_NAMES)} and SIZE a multiple of 128") from None


def _row(config: str, runs: int, threads: int) -> dict:
    """Export one configuration here, then time it in a fresh process (so its peak RSS is inference's alone)."""
    import torch

    from spinenet.deploy.export import export_onnx
    from spinenet.registry import create_model

    variant, size, batch = _parse(config)
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    model = create_model(MODEL_NAMES[variant]).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, Path(tmp) / "m.onnx", batch_size=batch, image_size=(size, size))
        out = subprocess.run([sys.executable, __file__, "--_time", str(path), "--runs", str(runs), "--threads",
                              str(threads)], capture_output=True, text=True, check=True)
    timing = json.loads(out.stdout.strip().splitlines()[-1])
    return {"config": config, "variant": variant, "size": size, "batch": batch, **timing,
            "images_per_s": 1000 * batch / timing["median_ms"]}


def _time(path: str, runs: int, threads: int) -> dict:
    import numpy as np

    from spinenet.deploy.benchmark import peak_rss_mib, time_ms
    from spinenet.deploy.runtimes import OnnxRuntimeSession

    session = OnnxRuntimeSession(path, threads=threads)
    x = np.random.default_rng(0).integers(0, 256, session.input_shape, dtype=np.uint8)
    times = time_ms(lambda: session.run(x), 2, runs)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "peak_rss_mib": peak_rss_mib()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default=DEFAULT,
                   help=f"comma list of VARIANT@SIZExBATCH, or a preset ({', '.join(PRESETS)}); default {DEFAULT}")
    p.add_argument("--runs", type=int, default=3, help="timed runs per configuration, after 2 warm-ups")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--output", default=None, help="JSON file for the rows")
    p.add_argument("--_row", help=argparse.SUPPRESS)
    p.add_argument("--_time", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._row:
        print(json.dumps(_row(args._row, args.runs, args.threads)))
        return 0
    if args._time:
        print(json.dumps(_time(args._time, args.runs, args.threads)))
        return 0
    configs = [c.strip() for c in PRESETS.get(args.configs, args.configs).split(",") if c.strip()]
    for c in configs:
        _parse(c)
    rows = []
    for c in configs:
        out = subprocess.run([sys.executable, __file__, "--_row", c, "--runs", str(args.runs), "--threads",
                              str(args.threads)], capture_output=True, text=True)
        if out.returncode:
            print(f"{c}: failed: {out.stderr.strip().splitlines()[-1] if out.stderr else out.returncode}", flush=True)
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"{c:14s} {r['median_ms']:9.1f} ms/batch  {r['images_per_s']:6.2f} img/s  {r['peak_rss_mib']:6.0f} MiB",
              flush=True)
    print(f"\nONNX Runtime fp32, default export, uint8 image -> detections, {args.threads} threads, median of "
          f"{args.runs} after 2 warm-ups")
    print(f"{'variant':8} {'input':>9} {'batch':>5} {'ms/batch':>9} {'ms/image':>9} {'img/s':>7} {'peak RSS':>9}")
    for r in rows:
        print(f"{r['variant']:8} {r['size']:>4}x{r['size']:<4} {r['batch']:5d} {r['median_ms']:9.1f} "
              f"{r['median_ms'] / r['batch']:9.1f} {r['images_per_s']:7.2f} {r['peak_rss_mib']:6.0f} MiB")
    if args.output:
        Path(args.output).write_text(json.dumps(rows, indent=1))
    return 0 if len(rows) == len(configs) else 1


if __name__ == "__main__":
    sys.exit(main())
