"""``spinenet train`` and ``spinenet evaluate``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

TRAIN_EPILOG = """\
examples:
  spinenet train --config_file configs/spinenet49S_retinanet.yaml --model_dir runs/49s \\
      --train_data coco/annotations/instances_train2017.json coco/train2017 \\
      --val_data coco/annotations/instances_val2017.json coco/val2017
  spinenet train --config_file configs/spinenet49S_retinanet.yaml --model_dir runs/49s --resume ...
  torchrun --nproc_per_node 8 -m spinenet.cli train ...      (DDP: NCCL on GPUs, gloo on CPUs)

The seed's TPU flag spellings work too: --params_override, --model=retinanet, --mode=train|train_and_eval,
--val_json_file with --validation_file_pattern (an image folder), --eval_after_training; --use_tpu and
--num_cores are accepted and ignored.
train.train_batch_size is the global batch: micro-batch = batch / (processes x --accum_steps).
"""


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config_file", default=None, help="reference-format YAML (default: the 49S config)")
    p.add_argument("--params_override", action="append", default=None,
                   help="YAML/JSON string or file over the config (repeatable)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, e.g. --set train.total_steps=1000 (repeatable)")


def _resolve_config(args: argparse.Namespace):
    from spinenet.config import load_config
    from spinenet.registry import get_config

    if args.config_file is None:
        return get_config("retinanet_spinenet49s", params_override=args.params_override, overrides=args.overrides)
    return load_config(args.config_file, args.params_override, args.overrides)


def add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a detector on COCO-format data",
                       description="Train SpineNet RetinaNet with the reference recipe on COCO-format data.",
                       epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_config_args(p)
    p.add_argument("--model_dir", required=True,
                   help="where checkpoints, config.yaml, metrics.jsonl and TensorBoard logs go (locked while a "
                        "trainer uses it)")
    p.add_argument("--train_data", nargs=2, metavar=("ANNOTATIONS", "IMAGES"),
                   help="COCO instances JSON and its image folder")
    p.add_argument("--val_data", nargs=2, metavar=("ANNOTATIONS", "IMAGES"), help="evaluation set")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest readable checkpoint in --model_dir (unreadable newer ones are "
                        "skipped with a warning); only train.total_steps, the evaluation batch and options such as "
                        "workers, --eval_every, --checkpoint_every, --max_steps may change")
    p.add_argument("--resume_from", metavar="CHECKPOINT",
                   help="continue from this checkpoint (implies --resume; newer ones in --model_dir are renamed "
                        "*.superseded)")
    p.add_argument("--init_checkpoint", help="start from the weights of a spinenet checkpoint")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1 ...")
    p.add_argument("--num_workers", type=int, default=None,
                   help="data-loading worker processes per rank (default: min(8, CPU cores))")
    p.add_argument("--input_pipeline", choices=["auto", "device", "cpu"], default="auto",
                   help="where the augmentation and anchor labelling run; both give the same batches. device: the "
                        "workers only decode JPEGs and draw the random flip/scale/crop, and ship uint8; the flip, "
                        "scale jitter, resize of the crop window, normalisation, padding and anchor labelling run "
                        "batched on the training device (on CUDA, the next batch on a side stream). cpu: all of it "
                        "in the workers, shipping float32 images and targets (the earlier path). auto (default): "
                        "device on CUDA, cpu on a CPU-only run")
    p.add_argument("--accum_steps", type=int, default=1, help="micro-batches accumulated per optimiser step")
    p.add_argument("--eval_every", type=int, default=0, help="evaluate every N steps (0: only at the end)")
    p.add_argument("--checkpoint_every", type=int, default=500, help="save every N steps (and at the end)")
    p.add_argument("--keep_last", type=int, default=3, help="checkpoints kept besides best.pt")
    p.add_argument("--log_every", type=int, default=10,
                   help="log the training scalars every N steps (progress bar, TensorBoard, metrics.jsonl)")
    p.add_argument("--max_steps", type=int, help="stop after N steps (the schedule still uses total_steps)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="auto: bf16 autocast on GPU, fp32 on CPU")
    p.add_argument("--channels_last", action="store_true", default=None,
                   help="NHWC memory format (the default on CUDA; faster with tensor cores)")
    p.add_argument("--no_channels_last", dest="channels_last", action="store_false", help="NCHW on CUDA too")
    p.add_argument("--pad_channels", type=int, default=0, metavar="MULTIPLE",
                   help="compute every convolution at channel counts rounded up to MULTIPLE (8: tensor-core "
                        "widths for 49S's 41/83/166/... channels and the 819/36 predictors) with channels that stay "
                        "exactly zero: same function, parameters and checkpoints. Off by default (0) until it is "
                        "measured faster on a GPU")
    p.add_argument("--no_cudnn_benchmark", dest="cudnn_benchmark", action="store_false", default=None,
                   help="don't autotune cuDNN convolutions (on by default on CUDA unless --deterministic)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--deterministic", action="store_true", help="deterministic kernels (for exact resumes)")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    # The seed's TPU main.py spellings.
    p.add_argument("--model", default="retinanet", choices=["retinanet"], help=argparse.SUPPRESS)
    p.add_argument("--mode", default="train", choices=["train", "train_and_eval", "eval"], help=argparse.SUPPRESS)
    p.add_argument("--val_json_file", help=argparse.SUPPRESS)
    p.add_argument("--validation_file_pattern", help=argparse.SUPPRESS)
    p.add_argument("--training_file_pattern", help=argparse.SUPPRESS)
    p.add_argument("--eval_after_training", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--use_tpu", default=None, help=argparse.SUPPRESS)
    p.add_argument("--num_cores", default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from spinenet.engine.train import TrainOptions, train

    if args.training_file_pattern and not args.train_data:
        raise ValueError("--training_file_pattern names TFRecords, which spinenet does not read; pass the COCO "
                         "annotations and image folder with --train_data ANNOTATIONS IMAGES")
    if not args.train_data:
        raise ValueError("--train_data ANNOTATIONS IMAGES is required")
    val = tuple(args.val_data) if args.val_data else None
    if val is None and args.val_json_file:
        if not args.validation_file_pattern or not Path(args.validation_file_pattern).is_dir():
            raise ValueError("--val_json_file needs --validation_file_pattern naming the image folder "
                             "(or use --val_data ANNOTATIONS IMAGES)")
        val = (args.val_json_file, args.validation_file_pattern)
    cfg = _resolve_config(args)
    from spinenet.engine.device_input import default_num_workers

    workers = default_num_workers() if args.num_workers is None else args.num_workers
    opts = TrainOptions(model_dir=Path(args.model_dir), train_data=tuple(args.train_data), val_data=val,
                        device=args.device, num_workers=workers, input_pipeline=args.input_pipeline,
                        accum_steps=args.accum_steps,
                        eval_every=args.eval_every, checkpoint_every=args.checkpoint_every, keep_last=args.keep_last,
                        resume=args.resume or bool(args.resume_from), resume_from=args.resume_from,
                        init_checkpoint=args.init_checkpoint, channels_last=args.channels_last,
                        cudnn_benchmark=args.cudnn_benchmark, pad_channels=args.pad_channels,
                        precision=args.precision, seed=args.seed, deterministic=args.deterministic,
                        max_steps=args.max_steps, log_every=args.log_every, progress=not args.no_progress)
    train(cfg, opts)
    return 0


def add_evaluate_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="COCO mAP of a checkpoint on COCO-format data",
                       description="Evaluate a spinenet checkpoint: the COCO 12-number summary, per-class AP, and a "
                                   "COCO results JSON on disk.")
    p.add_argument("--checkpoint", "--checkpointpath", dest="checkpoint", required=True,
                   help="spinenet checkpoint (.pt) from `spinenet train` or `spinenet convert`")
    p.add_argument("--val_data", nargs=2, required=True, metavar=("ANNOTATIONS", "IMAGES"),
                   help="COCO instances JSON and the folder of its images (file_name is relative to it); no "
                        "image found is an error, some missing a warning with the count")
    p.add_argument("--output", default=None,
                   help="folder for results.json and metrics.json, checked writable before evaluating "
                        "(default: eval_<checkpoint name> next to the checkpoint)")
    p.add_argument("--batch_size", type=int, default=8, help="images per forward pass (default: 8)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1 ... (default: auto)")
    p.add_argument("--num_workers", type=int, default=2,
                   help="data-loading worker processes; 0 reads images in the main process (default: 2)")
    p.add_argument("--no_progress", action="store_true", help="no progress bar and no COCO summary table")
    p.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    from spinenet.engine.evaluate import evaluate_checkpoint

    metrics = evaluate_checkpoint(args.checkpoint, tuple(args.val_data), output=args.output,
                                  batch_size=args.batch_size, device=args.device, num_workers=args.num_workers,
                                  progress=not args.no_progress)
    print(json.dumps({k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}))
    return 0
