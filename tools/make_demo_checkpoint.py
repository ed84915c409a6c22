"""Shrink a trained checkpoint into the committed demo detector: weights in fp16, no optimiser or RNG state.

    python tools/make_demo_checkpoint.py runs/train_synthetic/model/best.pt demo/shapes49s_fp16.pt \\
        --command "python benchmarks/train_synthetic.py --workdir runs/train_synthetic"

fp16 halves the file (SpineNet-49S: ~22 MB); loading copies the values back into fp32 parameters. The command
that trained it is stored in the checkpoint (`training_command`) and printed by `make demo`.
"""

from __future__ import annotations

import argparse

from spinenet.engine.checkpoint import read_checkpoint, save_checkpoint

KEEP = ("format", "format_version", "variant", "model_id", "config", "label_map", "step", "metrics")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("output")
    p.add_argument("--command", required=True, help="the exact command that trained the checkpoint")
    args = p.parse_args()
    ckpt = read_checkpoint(args.checkpoint)
    small = {k: ckpt[k] for k in KEEP if k in ckpt}
    small["model"] = {k: v.half() if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    small["training_command"] = args.command
    save_checkpoint(small, args.output)
    print(f"wrote {args.output} (step {small.get('step')}, metrics {small.get('metrics', {}).get('AP')})")


if __name__ == "__main__":
    main()
