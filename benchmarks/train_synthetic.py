"""Train SpineNet-49S (or another registry variant) RetinaNet from scratch on the synthetic shapes set and report
held-out COCO mAP.

A benchmark, not a test: it takes a long time on a CPU. It makes the data (`spinenet synth`-style, seeded),
runs the exact `spinenet train` command below, then `spinenet evaluate` on the held-out images, and prints one
line for benchmarks/RESULTS.md (images seen, wall time, machine, precision, AP, AP50).

    python benchmarks/train_synthetic.py --workdir runs/train_synthetic           # the recorded recipe
    python benchmarks/train_synthetic.py --workdir runs/quick --steps 200         # a shorter try
    python benchmarks/train_synthetic.py --variant retinanet_spinenet49s_mobile --workdir runs/mobile49s

Target (issue "Training and evaluation"): COCO mAP@[.5:.95] >= 0.6 and AP50 >= 0.9 on the held-out set.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path


def recipe(image_size: int, steps: int, batch: int) -> dict:
    """The params_override of the recorded run: the 49S YAML, retuned only for a small batch and short run."""
    warmup = max(1, steps // 10)
    return {
        "architecture": {"num_classes": 6},  # 5 shapes, ids 1..5 used directly (+ background 0)
        "retinanet_parser": {"output_size": [image_size, image_size], "aug_scale_min": 0.8, "aug_scale_max": 1.25},
        "train": {"train_batch_size": batch, "total_steps": steps,
                  "learning_rate": {"warmup_steps": warmup, "warmup_learning_rate": 0.003,
                                    "init_learning_rate": 0.03, "learning_rate_levels": [0.003, 0.0003],
                                    "learning_rate_steps": [int(steps * 0.8), int(steps * 0.93)]}},
        "eval": {"eval_batch_size": 16},
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="runs/train_synthetic")
    p.add_argument("--image_size", type=int, default=128)
    p.add_argument("--num_train", type=int, default=2000)
    p.add_argument("--num_val", type=int, default=200)
    p.add_argument("--steps", type=int, default=2500)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--eval_every", type=int, default=500)
    p.add_argument("--num_workers", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min_object", type=float, default=0.15, help="smallest object side, fraction of the image")
    p.add_argument("--device", default="auto")
    p.add_argument("--variant", default="retinanet_spinenet49s",
                   help="registry name whose YAML the recipe starts from (default: the 49S)")
    args = p.parse_args()

    from spinenet.data.synthetic import make_synthetic_dataset

    work = Path(args.workdir)
    data = work / "data"
    if not (data / "annotations" / "instances_val.json").exists():
        # Objects from --min_object to 60 % of the side (the P3 anchors are 24 px: smaller objects only force-match).
        make_synthetic_dataset(data, args.num_train, args.num_val, image_size=args.image_size, seed=args.seed,
                               size_range=(args.min_object, 0.6), progress=False)
    override = json.dumps(recipe(args.image_size, args.steps, args.batch))
    from spinenet.registry import config_path, get_model_info

    variant = get_model_info(args.variant)
    train_cmd = [sys.executable, "-m", "spinenet.cli", "train", "--model_dir", str(work / "model"),
                 "--config_file", str(config_path(variant.name)),
                 "--train_data", str(data / "annotations/instances_train.json"), str(data / "train"),
                 "--val_data", str(data / "annotations/instances_val.json"), str(data / "val"),
                 "--params_override", override, "--eval_every", str(args.eval_every), "--checkpoint_every",
                 str(args.eval_every), "--num_workers", str(args.num_workers), "--seed", str(args.seed),
                 "--device", args.device]
    if (work / "model").exists():
        train_cmd.append("--resume")
    print("+", " ".join(train_cmd[:2] + [f"'{c}'" if c == override else c for c in train_cmd[2:]]), flush=True)
    t0 = time.time()
    subprocess.run(train_cmd, check=True)
    wall = time.time() - t0
    eval_cmd = [sys.executable, "-m", "spinenet.cli", "evaluate", "--checkpoint", str(work / "model" / "best.pt"),
                "--val_data", str(data / "annotations/instances_val.json"), str(data / "val"),
                "--output", str(work / "eval"), "--no_progress", "--device", args.device]
    print("+", " ".join(eval_cmd), flush=True)
    subprocess.run(eval_cmd, check=True)
    metrics = json.loads((work / "eval" / "metrics.json").read_text())
    import torch

    device = "cuda" if (args.device != "cpu" and torch.cuda.is_available()) else "cpu"
    precision = "bf16 autocast" if device == "cuda" else "fp32"
    machine = (torch.cuda.get_device_name(0) if device == "cuda"
               else f"{platform.machine()} CPU, {os.cpu_count()} cores")
    line = (f"| {time.strftime('%Y-%m-%d')} | {variant.name} from scratch, synthetic shapes {args.image_size}px, "
            f"{args.num_train} train / {args.num_val} held-out | `python benchmarks/train_synthetic.py "
            f"--variant {variant.name} --steps {args.steps} --batch {args.batch}` | {machine}, {precision} | "
            f"{args.steps * args.batch:,} images seen, {wall / 60:.1f} min: AP {metrics['AP']:.3f}, "
            f"AP50 {metrics['AP50']:.3f} |")
    print(line)
    (work / "result_line.md").write_text(line + "\n")
    ok = metrics["AP"] >= 0.6 and metrics["AP50"] >= 0.9
    print("target AP >= 0.6 and AP50 >= 0.9:", "MET" if ok else "NOT MET")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
