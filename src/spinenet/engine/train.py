"""The reference training recipe as a short, explicit loop (spec §1.2, §4, §5).

One optimisation step = ``accum_steps`` micro-batches per rank; the global batch is
``train.train_batch_size`` = micro-batch x accum_steps x world size. Per step: label anchors (in the data
workers, or batched on the training device with ``--input_pipeline device``: :mod:`spinenet.engine.device_input`),
forward (bf16 autocast on GPU, fp32 on CPU), focal + Huber loss normalised by the local
positives + 1, L2 on conv kernels inside the loss, backward, global-norm clipping, SGD momentum with the
reference's warm-up + step schedule. Checkpoints are self-describing and atomic; ``--resume`` restores
weights, optimiser, step, RNG states, the position in the data and the best metric so far. The folder's lock,
files and logs are :mod:`spinenet.engine.run_dir`'s; what a resume may change is :mod:`spinenet.engine.resume`'s.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from spinenet.config import ExperimentConfig
from spinenet.engine.checkpoint import (
    NoSpaceError,
    load_state_dict_strict,
    make_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from spinenet.engine.data import DataPosition, build_eval_loader, rng_isolated, skipped_report
from spinenet.engine.device_input import build_train_input, default_num_workers
from spinenet.engine.distributed import DistInfo, init_distributed, on_main, rng_state, seed_everything, set_rng_state
from spinenet.engine.evaluate import CocoEvaluator, run_evaluation
from spinenet.engine.padded import pad_channels
from spinenet.engine.resume import max_metric, recorded_best, resume_run, run_settings
from spinenet.engine.run_dir import BEST_NAME, MetricsLog, list_checkpoints, lock_model_dir, write_config
from spinenet.engine.schedule import build_schedule
from spinenet.engine.step import (
    NonFiniteLossError,
    StepMeter,
    configure_backend,
    micro_step,
    resolve_channels_last,
    wrap_ddp,
)
from spinenet.modeling.factory import build_retinanet
from spinenet.modeling.losses import LossParams, l2_regularization, retinanet_loss

EVAL_SCALARS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


__all__ = ["NonFiniteLossError", "TrainOptions", "train"]


@dataclass
class TrainOptions:
    model_dir: Path
    train_data: tuple[str, str]  # (instances JSON, image folder)
    val_data: tuple[str, str] | None = None
    device: str | None = None  # auto: CUDA if available
    num_workers: int = field(default_factory=default_num_workers)
    input_pipeline: str = "auto"  # spinenet.engine.device_input.INPUT_PIPELINES: auto / device / cpu
    accum_steps: int = 1
    eval_every: int = 0  # steps; 0 = only at the end
    checkpoint_every: int = 500
    keep_last: int = 3
    resume: bool = False
    resume_from: str | None = None  # a checkpoint to continue from (implies resume)
    init_checkpoint: str | None = None
    channels_last: bool | None = None  # None: on for CUDA (NHWC), off on the CPU
    pad_channels: int = 0  # compute at widths rounded up to this multiple (spinenet.engine.padded); 0: off
    cudnn_benchmark: bool | None = None  # None: on for CUDA unless deterministic
    precision: str = "auto"  # auto = bf16 autocast on CUDA, fp32 on CPU; or fp32 / bf16
    seed: int = 0
    deterministic: bool = False
    max_steps: int | None = None  # stop early (the schedule still follows train.total_steps)
    log_every: int = 10
    progress: bool = True
    tensorboard: bool = True
    extra_metadata: dict = field(default_factory=dict)


def _resolved_precision(device: torch.device, precision: str) -> str:
    return "bf16" if precision == "bf16" or (precision == "auto" and device.type == "cuda") else "fp32"


def _autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=_resolved_precision(device, precision) == "bf16")


def train(cfg: ExperimentConfig, opts: TrainOptions) -> dict:
    """Train ``cfg`` on ``opts.train_data``; returns the final summary (steps, losses, metrics, paths)."""
    previous, benchmark = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    try:
        if opts.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=False)
        with contextlib.ExitStack() as stack:
            return _train(cfg, opts, stack)
    finally:
        torch.use_deterministic_algorithms(previous)
        torch.backends.cudnn.benchmark = benchmark  # configure_backend's setting is the run's, not the process's


def _train(cfg: ExperimentConfig, opts: TrainOptions, stack: contextlib.ExitStack) -> dict:
    from spinenet.registry import variant_for_config

    dist_info = init_distributed(opts.device)
    device = dist_info.device
    seed_everything(opts.seed + dist_info.rank)
    model_dir = Path(opts.model_dir)
    if dist_info.is_main:
        model_dir.mkdir(parents=True, exist_ok=True)
    on_main(lambda: stack.enter_context(lock_model_dir(model_dir)) and None, dist_info)  # held until train() ends

    model = build_retinanet(cfg)
    if opts.init_checkpoint:
        load_state_dict_strict(model, read_checkpoint(opts.init_checkpoint)["model"], opts.init_checkpoint)
    if _use_sync_bn(cfg, dist_info):
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    pad_channels(model, opts.pad_channels)  # same parameters and checkpoints; zero channels up to the multiple
    model.to(device)
    channels_last = resolve_channels_last(device, opts.channels_last)
    configure_backend(device, opts.cudnn_benchmark, opts.deterministic)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    detector = model
    if dist_info.distributed:
        model = wrap_ddp(model, device, opts.accum_steps)

    optimizer = torch.optim.SGD(detector.parameters(), lr=0.0, momentum=cfg.train.optimizer.momentum)
    if cfg.train.optimizer.type != "momentum":
        raise ValueError(f"train.optimizer.type {cfg.train.optimizer.type!r} is not supported; valid: momentum")
    schedule = build_schedule(cfg)
    run = run_settings(seed=opts.seed, accum_steps=opts.accum_steps, world_size=dist_info.world_size,
                       precision=_resolved_precision(device, opts.precision),
                       train_annotations=opts.train_data[0], val_annotations=(opts.val_data or (None,))[0])
    state = resume_run(model_dir, opts.resume, opts.resume_from, cfg, run, detector, optimizer, dist_info)
    step, position, best, history = state.step, DataPosition(**state.data_position), state.best, state.history
    log = _start_logs(model_dir, cfg, step, state.source, state.changes) if dist_info.is_main else None

    world, accum = dist_info.world_size, opts.accum_steps
    global_batch = cfg.train.train_batch_size
    if global_batch % (world * accum):
        raise ValueError(f"train.train_batch_size {global_batch} is not divisible by world size {world} x "
                         f"accum_steps {accum}")
    micro = global_batch // (world * accum)
    anchors = detector.anchors(tuple(cfg.retinanet_parser.output_size))
    loader = build_train_input(cfg, opts.train_data, micro, anchors, dist_info, opts.seed, opts.num_workers, position,
                               device, opts.input_pipeline)
    evaluator = eval_loader = None
    if opts.val_data is not None:
        evaluator = CocoEvaluator(opts.val_data[0])
        eval_loader = build_eval_loader(cfg, opts.val_data, cfg.eval.eval_batch_size, dist_info, opts.num_workers)

    writer = _summary_writer(model_dir) if (opts.tensorboard and dist_info.is_main) else None
    loss_params = LossParams(cfg.retinanet_loss.focal_loss_alpha, cfg.retinanet_loss.focal_loss_gamma,
                             cfg.retinanet_loss.huber_loss_delta, cfg.retinanet_loss.box_loss_weight)
    last_step = min(cfg.train.total_steps, opts.max_steps or cfg.train.total_steps)
    variant = variant_for_config(cfg)
    label_map = loader.dataset.label_map()

    def save(metrics: dict | None = None) -> None:
        nonlocal best
        states = [None] * world
        if dist_info.distributed:
            torch.distributed.all_gather_object(states, rng_state())
        else:
            states = [rng_state()]
        if not dist_info.is_main:
            return
        # The best metric is updated before anything is written, so ckpt-N holds the best *including* this
        # evaluation (a resume from it must not forget it), and it is checked against best.pt's own record.
        improved = bool(metrics) and metrics["AP"] > (max_metric(best, recorded_best(model_dir)) or -float("inf"))
        if improved:
            best = metrics["AP"]
        extra = {"step": step, "optimizer": optimizer.state_dict(), "rng": states,
                 "data_position": vars(loader.position()), "best_metric": best, "metrics": metrics or {},
                 "run": run, "resume_changes": history, **opts.extra_metadata}
        ckpt = make_checkpoint(detector, cfg, variant=variant, label_map=label_map, extra=extra)
        last = (list_checkpoints(model_dir) or ["(none)"])[-1]
        try:  # best.pt first: a kill between the two leaves best.pt's metric, which a resume reads back
            if improved:
                save_checkpoint(ckpt, model_dir / BEST_NAME)
            save_checkpoint(ckpt, model_dir / f"ckpt-{step}.pt")
        except NoSpaceError as e:
            raise NoSpaceError(e.filename, f"the last complete checkpoint is {last}") from None
        for old in list_checkpoints(model_dir)[:-opts.keep_last]:
            old.unlink(missing_ok=True)

    from tqdm import tqdm

    bar = tqdm(total=last_step, initial=step, desc="train", disable=not (opts.progress and dist_info.is_main),
               dynamic_ncols=True)
    model.train()
    batches = iter(loader)
    if state.rng is not None:  # last, so that nothing between here and the first step draws from it
        set_rng_state(state.rng)
    t_last, images_seen, metrics = time.perf_counter(), 0, {}
    meter = StepMeter(device)  # loss parts and the non-finite flag stay on the device until meter.read()

    def read() -> dict[str, float]:
        try:
            return meter.read(dist_info.distributed, str((list_checkpoints(model_dir) or ["(none)"])[-1]))
        except NonFiniteLossError:
            bar.close()
            raise

    while step < last_step:
        lr = schedule(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        for micro_index in range(accum):
            images, cls_t, box_t, npos = next(batches)
            images = images.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with micro_step(model, micro_index, accum):  # DDP all-reduces on the last micro-batch only
                with _autocast(device, opts.precision):
                    cls_out, box_out = model(images)
                losses = retinanet_loss(cls_out, box_out, cls_t.to(device), box_t.to(device), npos.to(device),
                                        loss_params, detector.num_classes)
                l2 = l2_regularization(detector, cfg.train.l2_weight_decay)
                total = losses["total_loss"] + l2
                meter.add(total, losses["cls_loss"], losses["box_loss"], l2, accum)  # no host read
                (total / accum).backward()
            images_seen += images.shape[0] * world
        if cfg.train.gradient_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(detector.parameters(), cfg.train.gradient_clip_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        meter.end_step(step)
        step += 1
        bar.update(1)
        do_eval = evaluator is not None and (step == last_step or (opts.eval_every and step % opts.eval_every == 0))
        do_save = do_eval or step == last_step or step % opts.checkpoint_every == 0
        if step % opts.log_every == 0 or do_save:  # read before any evaluation or checkpoint sees the weights
            parts = read()
        if step % opts.log_every == 0 or step == last_step:
            now = time.perf_counter()
            ips = images_seen / max(now - t_last, 1e-9)
            t_last, images_seen = now, 0
            bar.set_postfix(loss=f"{parts['total_loss']:.3f}", cls=f"{parts['cls_loss']:.3f}",
                            box=f"{parts['box_loss']:.4f}", lr=f"{lr:.4g}", img_s=f"{ips:.1f}")
            _log_scalars(writer, log, step, {**{f"train/{k}": v for k, v in parts.items()},
                                             "train/learning_rate": lr, "train/images_per_second": ips})
        if do_eval:
            with rng_isolated():  # evaluating or not must not change what training draws
                metrics = run_evaluation(model, eval_loader, evaluator, device,
                                         progress=opts.progress and dist_info.is_main)
            _log_scalars(writer, log, step, {f"eval/{k}": metrics[k] for k in EVAL_SCALARS})
        if do_save:
            save(metrics=metrics if do_eval else None)
    bar.close()
    summary = {"step": step, **read(), "learning_rate": schedule(max(step - 1, 0))}
    if writer is not None:
        writer.close()
    if log is not None:
        log.close()
    report = skipped_report(loader, eval_loader, model_dir if dist_info.is_main else None)
    summary.update(metrics={k: v for k, v in metrics.items() if k != "per_class_ap"},
                   checkpoint=str(list_checkpoints(model_dir)[-1]) if dist_info.is_main else None,
                   skipped=report, weights_digest=_weights_digest(detector, dist_info))
    if dist_info.is_main:
        _print_summary(summary)
    return summary


def _use_sync_bn(cfg: ExperimentConfig, dist_info: DistInfo) -> bool:
    """The reference's ``nn_ops.BatchNormalization`` with ``max_shards_for_local=8``: per-replica statistics up
    to 8 replicas, cross-replica beyond. PyTorch's SyncBatchNorm needs CUDA; on CPU statistics stay local."""
    return (cfg.batch_norm_activation.use_sync_bn and dist_info.world_size > 8
            and dist_info.device.type == "cuda")


def _weights_digest(model: nn.Module, dist_info: DistInfo) -> str:
    """SHA-256 of all weights and buffers; under DDP every rank's digest must agree (checked here).

    BN running statistics are per-rank (local BN, as the reference up to 8 replicas) and DDP only syncs them at
    the start of each forward, so rank 0's — the ones its checkpoints hold — are broadcast first.
    """
    import hashlib

    if dist_info.distributed:
        for buf in model.buffers():
            torch.distributed.broadcast(buf, src=0)
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    digest = h.hexdigest()
    if dist_info.distributed:
        digests: list = [None] * dist_info.world_size
        torch.distributed.all_gather_object(digests, digest)
        if len(set(digests)) != 1:
            raise RuntimeError(f"ranks ended with different weights: {digests}")
    return digest


def _start_logs(model_dir: Path, cfg: ExperimentConfig, step: int, source, changes: dict):
    """config.yaml (the resolved config, rewritten on each start) and metrics.jsonl (with a resume record)."""
    write_config(model_dir, cfg)
    log = MetricsLog(model_dir, step)
    if source is not None:
        log.write(step, event="resume", source=str(source), changes=changes)
    return log


def _log_scalars(writer, log: MetricsLog | None, step: int, scalars: dict[str, float]) -> None:
    """The same scalars to TensorBoard (when installed and enabled) and to metrics.jsonl."""
    if writer is not None:
        for k, v in scalars.items():
            writer.add_scalar(k, v, step)
    if log is not None:
        log.write(step, **scalars)


def _summary_writer(model_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional: scalars are a convenience, not a requirement
        return None
    return SummaryWriter(str(model_dir / "tensorboard"))


def _print_summary(summary: dict) -> None:
    m = summary.get("metrics") or {}
    line = (f"done: step {summary['step']}, loss {summary['total_loss']:.4f} (cls {summary['cls_loss']:.4f}, "
            f"box {summary['box_loss']:.5f}, l2 {summary['l2_loss']:.4f})")
    if m:
        line += f"; COCO AP {m['AP']:.4f}, AP50 {m['AP50']:.4f}"
    print(line)
    if summary.get("skipped"):
        print(summary["skipped"])
    print(f"last checkpoint: {summary['checkpoint']}; weights sha256 {summary['weights_digest'][:16]}")

