"""GPU speed of SpineNet-49S RetinaNet against torchvision's ``retinanet_resnet50_fpn``, measured in one call.

Everything below runs in one process (two optional variants run in child processes, so that a failure or a
long compile cannot take the main measurements down), on random weights (nothing is downloaded), at one
square input size (640 by default), for each batch size and precision:

* **forward**: backbone + head on a normalised NCHW channels-last tensor, raw head outputs. This project: the
  eval-mode copy of :func:`spinenet.deploy.optimize.optimize_for_inference` (BN folded, direct convolutions,
  channels padded to 16). torchvision: ``model.head(model.backbone(x))``.
* **end-to-end**: a uint8 NHWC batch in, detections (NMS included) out. This project:
  :class:`spinenet.deploy.export.ExportWrapper` (normalisation, the model, the static-shape exact NMS; no
  Python loop over classes); also the normalisation + ``model.detect`` (the reference post-processing).
  torchvision: ``model.eval()(list of images)`` (its own transform, decoding and batched NMS; at most 100
  detections per image, as this project, instead of torchvision's default 300).
* **postprocess** (this project): the ExportWrapper's post-processing alone, on head outputs computed before.
* **CUDA graphs** (batch 1 by default): the forward captured and replayed; end to end as the captured
  uint8 -> head maps graph + each eager post-processing; for bf16 also with the weights cast to bf16 (no
  autocast casts). A capture of the whole ExportWrapper (NMS included) is tried in a child process and
  reported as "not capturable (reason)" when the post-processing synchronises with the host.
* **torch.compile** (child process, if the time budget allows): the forward compiled (``--compile_mode``) at
  ``--compile_batches``, and end to end as compiled forward + eager post-processing.
* **train**: images/s of one optimisation step at ``--train_batch`` (64) with ``--train_precision`` (bf16
  autocast), channels-last, the reference recipe of each project: this project's loss
  (:func:`spinenet.modeling.losses.retinanet_loss` on anchors labelled by
  :func:`spinenet.modeling.labeler.label_batch`, the reference's L2 term, gradient clipping at 10, SGD
  momentum 0.9, the warm-up learning rate, stochastic depth); torchvision's reference recipe (its model's
  own loss with anchor matching inside, FrozenBatchNorm and a frozen stem + layer1 as when fine-tuning from
  ImageNet, SGD momentum 0.9, weight decay 1e-4). Labels of this project are made once, outside the timed
  steps, as its data workers do; torchvision matches inside its forward, which is timed.

Random weights would make NMS trivial (every score sits at the prior 0.01, below the 0.05 threshold), so
both detectors' heads are first made informative in the same way: tower convolutions re-drawn, box deltas
spread to a std of 0.4, and the class logits spread and shifted so that ``--candidates_per_image`` (anchor,
class) scores per image pass the score threshold (1000 by default, about a busy COCO image; the counts
reached are printed). Each end-to-end row records its detections per image.

Each row: ms per batch (median and p90 of host wall time per call with a device synchronise after each
call; the CUDA-event time is in the JSON too), images/s (batch / median), and the peak device memory of the
row (``torch.cuda.max_memory_allocated`` above what was allocated before the row, plus the row's own weights;
the absolute figure is in the JSON). On a CPU the memory column is the process's peak RSS.

At the end: the environment (GPU, torch, torchvision, cuDNN) and the ratios of the issue's done-when list
against their targets: end-to-end batch-1 latency <= 3 ms; forward throughput at batch 32, bf16 >= 3x
torchvision in this run; end-to-end >= 2,000 images/s; training at batch 64 bf16 >= 3x torchvision.

    python benchmarks/gpu_speed.py --output gpu_speed.json        # GPU: 5 to 7.5 min on an H100/H200
    python benchmarks/gpu_speed.py --device cpu --smoke --output /tmp/smoke.json   # plumbing check, ~15 s

``--time_budget_s`` (420 s) stops starting new rows once spent; the torch.compile child gets what is left
(at least ``--compile_min_s``) and is killed at the budget. The rows measured so far are printed and written;
the JSON is rewritten after every row, so even a killed run keeps what it measured. fp32 rows run with
PyTorch's defaults (cuDNN may use TF32 for convolutions; the flags are in the JSON's env).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CHILD_MARK = "GPU_SPEED_CHILD_RESULT "
SPINENET = "SpineNet-49S (this project)"
TORCHVISION = "torchvision retinanet_resnet50_fpn"
MIB = 1 << 20

# The done-when targets.
E2E_LATENCY_TARGET_MS = 3.0
FORWARD_RATIO_TARGET = 3.0
E2E_THROUGHPUT_TARGET = 2000.0
TRAIN_RATIO_TARGET = 3.0
RATIO_BATCH = 32


def _ensure_spinenet_importable() -> None:
    """The device machine runs the checkout without installing it: fall back to ``src/``."""
    try:
        import spinenet  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(ROOT / "src"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--batch_sizes", default=None, help="comma list (default 1,32,64; smoke 1,2)")
    p.add_argument("--precisions", default=None, help="comma list of fp32, bf16, fp16 (default fp32,bf16)")
    p.add_argument("--image_size", type=int, default=None, help="square input side (default 640; smoke 128)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls per row (default 5; smoke 1)")
    p.add_argument("--iters", type=int, default=None, help="timed calls per row at most (default 30; smoke 2)")
    p.add_argument("--max_row_s", type=float, default=None,
                   help="stop warming up (after 2 calls) or timing (after 3) a row after this many seconds "
                        "(default 3; training rows at least 8)")
    p.add_argument("--train_batch", type=int, default=None, help="training batch (default 64; smoke 2)")
    p.add_argument("--train_precision", default="bf16", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--train_warmup", type=int, default=None, help="untimed training steps (default 3; smoke 1)")
    p.add_argument("--train_steps", type=int, default=None, help="timed training steps (default 15; smoke 2)")
    p.add_argument("--skip_train", action="store_true")
    p.add_argument("--graph_batches", default="1", help="batch sizes of the CUDA-graph rows (comma list, or none)")
    p.add_argument("--variants", default=None,
                   help="optional variants: comma list of cuda_graph, detect, full_graph_capture, compile, or "
                        "none (default all; smoke none). CUDA graphs need a CUDA device.")
    p.add_argument("--compile_mode", default="default",
                   help="torch.compile mode (default, reduce-overhead, max-autotune-no-cudagraphs, ...)")
    p.add_argument("--compile_backend", default="inductor", help="torch.compile backend (eager: plumbing check)")
    p.add_argument("--compile_batches", default=str(RATIO_BATCH), help="batch sizes of the torch.compile rows")
    p.add_argument("--compile_min_s", type=float, default=100.0,
                   help="start the torch.compile child only with this much of the time budget left")
    p.add_argument("--candidates_per_image", type=int, default=None,
                   help="(anchor, class) scores per image above the score threshold after the heads are made "
                        "informative (default 1000; smoke 100; 0 keeps the random initialisation)")
    p.add_argument("--time_budget_s", type=float, default=None,
                   help="start no new row after this many seconds (default 420; smoke 300)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: untouched; smoke 1)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes and counts: a plumbing check that runs on CPU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=None, help="JSON file for the environment, rows and ratios")
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    smoke = args.smoke
    defaults = {
        "batch_sizes": "1,2" if smoke else "1,32,64",
        "precisions": "fp32,bf16",
        "image_size": 128 if smoke else 640,
        "warmup": 1 if smoke else 5,
        "iters": 2 if smoke else 30,
        "max_row_s": 3.0,
        "train_batch": 2 if smoke else 64,
        "train_warmup": 1 if smoke else 3,
        "train_steps": 2 if smoke else 15,
        "variants": "none" if smoke else "cuda_graph,detect,full_graph_capture,compile",
        "candidates_per_image": 100 if smoke else 1000,
        "time_budget_s": 300.0 if smoke else 420.0,
        "threads": 1 if smoke else None,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.batch_sizes = _int_list(args.batch_sizes)
    args.graph_batches = _int_list(args.graph_batches)
    args.compile_batches = _int_list(args.compile_batches)
    args.precisions = [s.strip() for s in args.precisions.split(",") if s.strip()]
    bad = [s for s in args.precisions if s not in ("fp32", "bf16", "fp16")]
    if bad or not args.precisions:
        p.error(f"--precisions: unknown {bad}; valid: fp32, bf16, fp16")
    args.variants = {s.strip() for s in args.variants.split(",") if s.strip() and s.strip() != "none"}
    unknown = args.variants - {"cuda_graph", "detect", "full_graph_capture", "compile"}
    if unknown:
        p.error(f"--variants: unknown {sorted(unknown)}")
    if args.image_size % 128:
        p.error("--image_size must be a multiple of 128 (2^max_level)")
    return args


def _int_list(text: str) -> list[int]:
    if text.strip().lower() in ("", "none"):
        return []
    return [int(s) for s in text.split(",") if s.strip()]


# ----------------------------------------------------------------------------------------------------------
# Environment, timing, memory


def environment(device) -> dict:
    import torchvision

    env = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
           "device": str(device), "cpu_count": os.cpu_count(), "machine": platform.machine(),
           "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=torch.cuda.get_device_name(device), capability=list(torch.cuda.get_device_capability(device)),
                   gpu_memory_mib=round(props.total_memory / MIB), sm_count=props.multi_processor_count,
                   cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                   cudnn_benchmark=torch.backends.cudnn.benchmark,
                   cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                   matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    else:
        env["gpu"] = None
    return env


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cpu_peak_reset() -> None:
    with contextlib.suppress(OSError):  # resets VmHWM to the current RSS (Linux >= 4.0)
        Path("/proc/self/clear_refs").write_text("5")


def module_bytes(*modules) -> int:
    seen, total = set(), 0
    for m in modules:
        for t in list(m.parameters()) + list(m.buffers()):
            if id(t) not in seen:
                seen.add(id(t))
                total += t.numel() * t.element_size()
    return total


def amp(device, precision: str, cache: bool = True):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(device.type, dtype=dtype, cache_enabled=cache)


class Bench:
    """Rows, notes and the time budget; the JSON is rewritten after every row."""

    def __init__(self, args, device, argv: list[str]):
        self.args, self.device, self.argv = args, device, argv
        self.t0 = time.perf_counter()
        self.rows: list[dict] = []
        self.notes: list[str] = []
        self.skipped: list[str] = []
        self.env: dict = {}
        self.ratios: list[dict] = []
        self.calibration: dict = {}

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.args.time_budget_s - self.elapsed()

    def note(self, text: str) -> None:
        print(f"note: {text}", flush=True)
        self.notes.append(text)

    def skip(self, text: str) -> None:
        print(f"skipped: {text}", flush=True)
        self.skipped.append(text)

    def add(self, row: dict) -> None:
        self.rows.append(row)
        print(format_row(row), flush=True)
        self.write()

    def write(self) -> None:
        if self.args._child or not self.args.output:
            return
        out = Path(self.args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        data = {"env": self.env, "args": _jsonable(vars(self.args)), "elapsed_s": round(self.elapsed(), 1),
                "calibration": self.calibration, "rows": self.rows, "ratios": self.ratios, "notes": self.notes,
                "skipped": self.skipped}
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_text(json.dumps(_finite(data), indent=1, allow_nan=False, default=str))
        tmp.replace(out)

    def measure(self, fn, *, model: str, what: str, variant: str, batch: int, precision: str, own_bytes: int,
                warmup: int | None = None, iters: int | None = None, check=None, min_left_s: float = 5.0,
                max_s: float | None = None, **extra) -> dict | None:
        """Time ``fn`` (one batch per call) and add the row; an exception becomes a row with ``error``."""
        label = f"{model} {what} [{variant}] batch {batch} {precision}"
        if self.left() < min_left_s:
            self.skip(f"{label}: time budget spent ({self.elapsed():.0f} s)")
            return None
        args, device = self.args, self.device
        warmup = args.warmup if warmup is None else warmup
        iters = args.iters if iters is None else iters
        max_s = args.max_row_s if max_s is None else max_s
        row = {"model": model, "backend": SPINENET if model == "spinenet" else TORCHVISION, "what": what,
               "variant": variant, "batch": batch, "precision": precision, **extra}
        cuda = device.type == "cuda"
        try:
            t_start = time.perf_counter()
            out = None
            for i in range(max(warmup, 1)):  # the first call autotunes; stop early once a row is slow
                out = fn()
                if i >= 1 and time.perf_counter() - t_start > max_s:
                    break
            _sync(device)
            row["warmup_s"] = round(time.perf_counter() - t_start, 2)
            if cuda:
                base = torch.cuda.memory_allocated(device)
                torch.cuda.reset_peak_memory_stats(device)
            else:
                _cpu_peak_reset()
            host_ms, gpu_ms = [], []
            t_loop = time.perf_counter()
            for i in range(max(iters, 1)):
                del out
                if cuda:
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    t = time.perf_counter()
                    start.record()
                    out = fn()
                    end.record()
                    torch.cuda.synchronize(device)
                    host_ms.append((time.perf_counter() - t) * 1e3)
                    gpu_ms.append(start.elapsed_time(end))
                else:
                    t = time.perf_counter()
                    out = fn()
                    host_ms.append((time.perf_counter() - t) * 1e3)
                if i >= 2 and time.perf_counter() - t_loop > max_s:
                    break
            if cuda:
                peak = torch.cuda.max_memory_allocated(device)
                row["peak_mib"] = round((peak - base + own_bytes) / MIB, 1)
                row["peak_abs_mib"] = round(peak / MIB, 1)
                row["peak_kind"] = "cuda max_memory_allocated above the row's start + own weights"
            else:
                from spinenet.deploy.benchmark import peak_rss_mib

                row["peak_mib"] = round(peak_rss_mib(), 1)
                row["peak_kind"] = "process peak RSS (VmHWM)"
            host_ms.sort()
            row.update(ms_median=round(statistics.median(host_ms), 4), ms_p90=round(_quantile(host_ms, 0.9), 4),
                       ms_mean=round(statistics.fmean(host_ms), 4), iters=len(host_ms))
            if gpu_ms:
                row["gpu_ms_median"] = round(statistics.median(gpu_ms), 4)
            row["images_per_s"] = round(batch * 1e3 / row["ms_median"], 2)
            if check is not None:
                row.update(check(out))
            del out
        except Exception as e:  # noqa: BLE001 - a failed row is reported, the others still run
            traceback.print_exc()
            row["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
            if cuda:
                torch.cuda.empty_cache()
        self.add(row)
        return row


def _quantile(sorted_values: list[float], q: float) -> float:
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = q * (len(sorted_values) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _finite(obj):
    """JSON has no NaN or infinity: such floats (a diverged loss, say) are written as strings."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _jsonable(d: dict) -> dict:
    return {k: (sorted(v) if isinstance(v, set) else v) for k, v in d.items()}


# ----------------------------------------------------------------------------------------------------------
# Inputs and models


def make_images(batch: int, size: int, device, seed: int):
    """uint8 NHWC RGB noise (B, S, S, 3) on ``device`` and its normalised NCHW channels-last float32 twin."""
    from spinenet.deploy.export import MEAN_RGB, STDDEV_RGB

    g = torch.Generator(device=device).manual_seed(seed)
    u8 = torch.randint(0, 256, (batch, size, size, 3), generator=g, dtype=torch.uint8, device=device)
    mean = torch.tensor(MEAN_RGB, device=device).reshape(1, 3, 1, 1)
    std = torch.tensor(STDDEV_RGB, device=device).reshape(1, 3, 1, 1)
    x = (u8.permute(0, 3, 1, 2).float() * (1.0 / 255.0) - mean) / std
    return u8, x.contiguous(memory_format=torch.channels_last)


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))




def _fan_in_normal_(conv: nn.Conv2d, gain: float = 1.0) -> None:
    nn.init.normal_(conv.weight, std=gain / math.sqrt(conv.weight[0].numel()))
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


@torch.no_grad()
def _finish_predictors(cls_predict: nn.Conv2d, box_predict: nn.Conv2d, class_logits, box_deltas,
                       candidates_per_image: int, score_threshold: float) -> dict:
    """Scale the predictors (biases zero on entry) so that box deltas have std 0.4 and class logits std 1, and
    shift the class bias so that ``candidates_per_image`` scores per image pass ``score_threshold``.
    ``class_logits`` (B, M) foreground logits, ``box_deltas`` (any shape), both computed with these weights."""
    box_predict.weight.mul_(0.4 / float(box_deltas.float().std()))
    z = class_logits.float()
    scale = 1.0 / float(z.std())
    cls_predict.weight.mul_(scale)
    z = z * scale
    k = min(candidates_per_image, z.shape[1])
    kth = float(z.topk(k, dim=1).values[:, -1].mean())
    bias = _logit(score_threshold) - kth + 1e-3
    cls_predict.bias.fill_(bias)
    return {"class_bias": round(bias, 4), "candidates_target": candidates_per_image}


@torch.no_grad()
def make_spinenet_informative(model, x, candidates_per_image: int) -> dict:
    """Re-draw the head (towers at fan-in scale, per-level BN statistics from ``x``) and set the predictors with
    :func:`_finish_predictors`; ``model`` in eval mode, ``x`` normalised NCHW."""
    model.eval()
    head = model.head
    feats = model.backbone(x)
    for subnet in (head.class_net, head.box_net):
        for conv in subnet.convs:
            _fan_in_normal_(conv)
        _fan_in_normal_(subnet.predict)
        for level, f in feats.items():
            h = f
            for conv, norm in zip(subnet.convs, subnet.norms[str(level)], strict=True):
                y = conv(h)
                norm.running_mean.fill_(float(y.mean()))
                norm.running_var.fill_(float(y.var()))
                h = subnet.act(norm(y))
    info = _finish_predictors(head.class_net.predict, head.box_net.predict, _spinenet_fg_logits(model, x),
                              torch.cat([b.flatten(1) for b in head(feats)[1].values()], 1),
                              candidates_per_image, model.params.postprocess.score_threshold)
    logits = _spinenet_fg_logits(model, x)
    info["candidates_measured"] = float((logits > _logit(model.params.postprocess.score_threshold)).sum(1)
                                        .float().mean())
    return info


def _spinenet_fg_logits(model, x):
    cls, _ = model(x)
    a, k = model.head.num_anchors, model.num_classes
    return torch.cat([c.reshape(c.shape[0], a, k, -1)[:, :, 1:].reshape(c.shape[0], -1) for c in cls.values()], 1)


@torch.no_grad()
def make_torchvision_informative(model, x, candidates_per_image: int) -> dict:
    """The same for torchvision's RetinaNet head (no norm layers in it; ReLU towers at He scale)."""
    model.eval()
    head = model.head
    feats = list(model.backbone(x).values())
    for sub, predict in ((head.classification_head, head.classification_head.cls_logits),
                         (head.regression_head, head.regression_head.bbox_reg)):
        for m in sub.conv.modules():
            if isinstance(m, nn.Conv2d):
                _fan_in_normal_(m, math.sqrt(2.0))
        _fan_in_normal_(predict)
    logits = head.classification_head(feats).flatten(1)
    info = _finish_predictors(head.classification_head.cls_logits, head.regression_head.bbox_reg, logits,
                              head.regression_head(feats), candidates_per_image, model.score_thresh)
    logits = head.classification_head(feats).flatten(1)
    info["candidates_measured"] = float((logits > _logit(model.score_thresh)).sum(1).float().mean())
    return info


def build_spinenet(args, device, bench: Bench | None = None):
    """This project's detector (91 classes) with an informative head, and its inference rewrite on ``device``."""
    from spinenet.deploy.optimize import optimize_for_inference
    from spinenet.registry import create_model

    torch.manual_seed(args.seed)
    model = create_model("retinanet_spinenet49s", num_classes=91).to(device).eval()
    if args.candidates_per_image > 0:
        _, calib = make_images(4, args.image_size, device, args.seed)  # the first images of every row's batch
        info = make_spinenet_informative(model, calib, args.candidates_per_image)
        if bench is not None:
            bench.calibration["spinenet"] = info
    fast = optimize_for_inference(model, conv_algorithm="direct").to(device).to(memory_format=torch.channels_last)
    return model, fast.eval()


def build_torchvision(args, device, bench: Bench | None = None):
    from torchvision.models.detection import retinanet_resnet50_fpn

    torch.manual_seed(args.seed)
    s = args.image_size
    # At most 100 detections per image, as this project and COCO's evaluation (torchvision's default is 300).
    model = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91, min_size=s, max_size=s,
                                   detections_per_img=100)
    model = model.to(device).eval()
    if args.candidates_per_image > 0:
        _, calib = make_images(4, s, device, args.seed)
        info = make_torchvision_informative(model, calib, args.candidates_per_image)
        if bench is not None:
            bench.calibration["torchvision"] = info
    return model.to(memory_format=torch.channels_last)


def build_torchvision_for_training(image_size: int):
    """torchvision's reference fine-tuning set-up without the download: ResNet-50 with FrozenBatchNorm2d, stem
    and layer1 frozen (trainable_backbone_layers=3), FPN P3-P7; falls back to the public builder (all layers
    trainable, BatchNorm) if torchvision's internals moved. Returns (model, description)."""
    try:
        from torchvision.models import resnet50
        from torchvision.models.detection.retinanet import RetinaNet, _resnet_fpn_extractor
        from torchvision.ops.feature_pyramid_network import LastLevelP6P7
        from torchvision.ops.misc import FrozenBatchNorm2d

        backbone = resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
        backbone = _resnet_fpn_extractor(backbone, 3, returned_layers=[2, 3, 4],
                                         extra_blocks=LastLevelP6P7(256, 256))
        model = RetinaNet(backbone, 91, min_size=image_size, max_size=image_size)
        return model, "FrozenBatchNorm2d, trainable_backbone_layers=3 (torchvision's fine-tuning recipe)"
    except (ImportError, TypeError) as e:
        from torchvision.models.detection import retinanet_resnet50_fpn

        model = retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91, min_size=image_size,
                                       max_size=image_size)
        return model, f"public builder, all layers trainable with BatchNorm ({type(e).__name__}: {e})"


class SpineNetRunners:
    """ExportWrappers per batch size (built lazily) and the callables the rows time."""

    def __init__(self, args, device, base, fast):
        self.args, self.device, self.base, self.fast = args, device, base, fast
        self.wrappers: dict[int, nn.Module] = {}

    def wrapper(self, batch: int):
        from spinenet.deploy.export import ExportWrapper

        if batch not in self.wrappers:
            s = self.args.image_size
            w = ExportWrapper(self.base, batch_size=batch, image_size=(s, s), conv_algorithm="direct")
            self.wrappers[batch] = w.to(self.device).to(memory_format=torch.channels_last).eval()
        return self.wrappers[batch]

    def postprocess(self, wrapper, cls_outputs, box_outputs, background_channel: bool | None = None):
        """The ExportWrapper's post-processing (static-shape exact NMS) on raw head maps."""
        from spinenet.deploy.postprocess_export import generate_detections_export

        if background_channel is None:
            background_channel = wrapper.model.head.background_channel
        # Factory calls without a device inside the post-processing land on ``self.device``.
        with torch.device(self.device):
            dets = generate_detections_export(cls_outputs, box_outputs, wrapper.anchors, wrapper.image_info,
                                              wrapper.model.params.postprocess, wrapper.pre_nms_topk,
                                              background_channel=background_channel)
        return (dets["num_detections"], dets["detection_boxes"], dets["detection_classes"],
                dets["detection_scores"])

    def reference_postprocess(self, wrapper, cls_outputs, box_outputs):
        """``model.detect``'s post-processing (:func:`spinenet.modeling.postprocess.generate_detections`) on raw
        maps that keep the background channel."""
        from spinenet.modeling.postprocess import generate_detections

        s = self.args.image_size
        return generate_detections(cls_outputs, box_outputs, self.fast.anchors((s, s), self.device),
                                   wrapper.image_info, self.fast.params.postprocess)

    def end_to_end(self, wrapper, u8, precision: str):
        with torch.no_grad(), amp(self.device, precision), torch.device(self.device):
            return wrapper(u8)


def _spinenet_dets(out) -> dict:
    return {"detections_per_image": round(float(out[0].float().mean()), 2)}


def _spinenet_detect_dets(out) -> dict:
    return {"detections_per_image": round(float(out["num_detections"].float().mean()), 2)}


def _torchvision_dets(out) -> dict:
    return {"detections_per_image": round(statistics.fmean(float(d["boxes"].shape[0]) for d in out), 2)}


# ----------------------------------------------------------------------------------------------------------
# Rows


def spinenet_rows(bench: Bench, sn: SpineNetRunners, batch: int, precision: str, u8, x, *, detect: bool) -> None:
    dev = bench.device

    def forward():
        with torch.no_grad(), amp(dev, precision):
            return sn.fast(x)

    own_fast = module_bytes(sn.fast)
    bench.measure(forward, model="spinenet", what="forward", variant="eager", batch=batch, precision=precision,
                  own_bytes=own_fast)
    try:
        w = sn.wrapper(batch)
    except Exception as e:  # noqa: BLE001
        bench.note(f"spinenet ExportWrapper at batch {batch}: {type(e).__name__}: {e}")
        return
    own_w = module_bytes(w)
    bench.measure(lambda: sn.end_to_end(w, u8, precision), model="spinenet", what="end-to-end",
                  variant="eager ExportWrapper (uint8 in, static exact NMS)", batch=batch, precision=precision,
                  own_bytes=own_w, check=_spinenet_dets)
    try:
        with torch.no_grad(), amp(dev, precision):
            cls, box = w.model(w.preprocess(u8))

        def post():
            with torch.no_grad(), amp(dev, precision):
                return sn.postprocess(w, cls, box)

        bench.measure(post, model="spinenet", what="postprocess", variant="ExportWrapper post-processing alone",
                      batch=batch, precision=precision, own_bytes=0, check=_spinenet_dets)
    except Exception as e:  # noqa: BLE001
        bench.note(f"spinenet postprocess row at batch {batch} {precision}: {type(e).__name__}: {e}")
    if detect:
        def detect_fn():
            with torch.no_grad(), amp(dev, precision):
                return sn.fast.detect(w.preprocess(u8), w.image_info)

        bench.measure(detect_fn, model="spinenet", what="end-to-end",
                      variant="eager model.detect (uint8 in, reference post-processing)", batch=batch,
                      precision=precision, own_bytes=own_fast, check=_spinenet_detect_dets)


def torchvision_rows(bench: Bench, tv, batch: int, precision: str, u8, x) -> None:
    dev = bench.device
    own = module_bytes(tv)

    def forward():
        with torch.no_grad(), amp(dev, precision):
            return tv.head(list(tv.backbone(x).values()))

    def end_to_end():
        with torch.no_grad(), amp(dev, precision):
            images = list((u8.permute(0, 3, 1, 2).float() * (1.0 / 255.0)).unbind(0))
            return tv(images)

    bench.measure(forward, model="torchvision", what="forward", variant="eager", batch=batch, precision=precision,
                  own_bytes=own)
    bench.measure(end_to_end, model="torchvision", what="end-to-end",
                  variant="eager model(list of images): transform, decode, batched NMS", batch=batch,
                  precision=precision, own_bytes=own, check=_torchvision_dets)


def capture_graph(fn, device, precision: str):
    """(graph, static outputs) of ``fn`` captured on a side stream after 3 warm-up calls; autocast's weight
    cache is off, as graph capture requires."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream), torch.no_grad(), amp(device, precision, cache=False):
        for _ in range(3):
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    torch.cuda.synchronize(device)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), amp(device, precision, cache=False), torch.cuda.graph(graph):
        out = fn()
    torch.cuda.synchronize(device)
    return graph, out


def _captured(bench: Bench, label: str, fn, precision: str):
    """capture_graph with the capture's peak memory (the graph's pool) measured; None (and a note) on failure."""
    dev = bench.device
    try:
        torch.cuda.synchronize(dev)
        base = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        graph, out = capture_graph(fn, dev, precision)
        return graph, out, max(torch.cuda.max_memory_allocated(dev) - base, 0)
    except Exception as e:  # noqa: BLE001
        bench.note(f"{label}: not capturable ({_exception_chain(e)})")
        with contextlib.suppress(Exception):
            torch.cuda.synchronize(dev)
        return None


def _exception_chain(e: BaseException) -> str:
    """The first line of each exception in the chain, root cause first (a failed capture raises again on
    leaving the capture context, which hides the operation that broke it)."""
    chain = []
    while e is not None and len(chain) < 4:
        text = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        chain.append(f"{type(e).__name__}: {text}")
        e = e.__cause__ or e.__context__
    return " <- ".join(reversed(chain))


def graph_rows(bench: Bench, sn: SpineNetRunners, batch: int, precision: str, u8, x) -> None:
    """CUDA-graph rows of the forward, and end to end as the captured uint8 -> maps graph + each eager
    post-processing (static exact NMS; the reference's); for bf16/fp16 also with 16-bit weights (no autocast)."""
    dev = bench.device
    if bench.left() < 15:
        bench.skip(f"cuda graph rows batch {batch} {precision}: time budget spent")
        return
    static_x, static_u8 = x.clone(), u8.clone()
    w = sn.wrapper(batch)
    models = [("cuda graph", sn.fast, None)]
    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        models.append((f"cuda graph, {precision} weights (no autocast)", copy.deepcopy(sn.fast).to(dtype), dtype))
    for name, model, dtype in models:
        prec = "fp32" if dtype is not None else precision  # 16-bit weights need no autocast
        cast = (lambda t, d=dtype: t.to(d)) if dtype is not None else (lambda t: t)
        own = module_bytes(model)
        got = _captured(bench, f"spinenet forward [{name}] batch {batch} {precision}",
                        lambda m=model, c=cast: m(c(static_x)), prec)
        if got is not None:
            graph, _, pool = got

            def run(g=graph):
                static_x.copy_(x)
                g.replay()

            bench.measure(run, model="spinenet", what="forward", variant=name, batch=batch, precision=precision,
                          own_bytes=own + pool)
            del graph, got
        got = _captured(bench, f"spinenet end-to-end, forward part [{name}] batch {batch} {precision}",
                        lambda m=model, c=cast: m(c(w.preprocess(static_u8))), prec)
        if got is None:
            continue
        graph, (cls, box), pool = got

        def static_nms(g=graph, cls=cls, box=box):
            static_u8.copy_(u8)
            g.replay()
            with torch.no_grad(), amp(dev, precision):
                return sn.postprocess(w, cls, box, background_channel=True)

        def reference(g=graph, cls=cls, box=box):
            static_u8.copy_(u8)
            g.replay()
            with torch.no_grad(), amp(dev, precision):
                return sn.reference_postprocess(w, cls, box)

        bench.measure(static_nms, model="spinenet", what="end-to-end",
                      variant=f"{name} (uint8 -> maps) + eager static exact NMS", batch=batch, precision=precision,
                      own_bytes=own + pool, check=_spinenet_dets)
        bench.measure(reference, model="spinenet", what="end-to-end",
                      variant=f"{name} (uint8 -> maps) + eager reference post-processing", batch=batch,
                      precision=precision, own_bytes=own + pool, check=_spinenet_detect_dets)
        del graph, got, cls, box
    torch.cuda.empty_cache()


def synthetic_boxes(batch: int, size: int, device, seed: int, per_image: int = 8):
    """``per_image`` random boxes per image, yxyx pixels (5 % to 50 % of the side), classes 1..90."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batch):
        hw = (torch.rand(per_image, 2, generator=g) * 0.45 + 0.05) * size
        centre = torch.rand(per_image, 2, generator=g) * (size - hw) + hw / 2
        boxes = torch.cat([centre - hw / 2, centre + hw / 2], dim=1)
        classes = torch.randint(1, 91, (per_image,), generator=g)
        out.append((boxes.to(device), classes.to(device)))
    return out


def train_spinenet_row(bench: Bench) -> None:
    from spinenet.engine.schedule import build_schedule
    from spinenet.modeling.factory import build_retinanet
    from spinenet.modeling.labeler import label_batch
    from spinenet.modeling.losses import LossParams, l2_regularization, retinanet_loss
    from spinenet.registry import get_config

    args, dev = bench.args, bench.device
    b, s, prec = args.train_batch, args.image_size, args.train_precision
    cfg = get_config("retinanet_spinenet49s", num_classes=91, image_size=s)
    torch.manual_seed(args.seed)
    model = build_retinanet(cfg).to(dev).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=cfg.train.optimizer.momentum)
    schedule = build_schedule(cfg)
    loss_params = LossParams(cfg.retinanet_loss.focal_loss_alpha, cfg.retinanet_loss.focal_loss_gamma,
                             cfg.retinanet_loss.huber_loss_delta, cfg.retinanet_loss.box_loss_weight)
    anchors = model.anchors((s, s), dev)
    with torch.no_grad():  # made by the data workers in training, outside the step
        cls_t, box_t, npos = label_batch(synthetic_boxes(b, s, dev, args.seed), anchors)
    _, images = make_images(b, s, dev, args.seed + 7)
    step = [0]

    def train_step():
        lr = schedule(step[0])
        for group in optimizer.param_groups:
            group["lr"] = lr
        with amp(dev, prec):
            cls_out, box_out = model(images)
        losses = retinanet_loss(cls_out, box_out, cls_t, box_t, npos, loss_params, model.num_classes)
        total = losses["total_loss"] + l2_regularization(model, cfg.train.l2_weight_decay)
        total.backward()
        if cfg.train.gradient_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.gradient_clip_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step[0] += 1
        return total.detach()

    params = sum(p.numel() * p.element_size() for p in model.parameters())
    bench.measure(train_step, model="spinenet", what="train",
                  variant="reference recipe: focal + Huber + L2, clip 10, SGD momentum 0.9, drop-connect 0.2",
                  batch=b, precision=prec, own_bytes=module_bytes(model) + params,  # + momentum buffers
                  warmup=args.train_warmup, iters=args.train_steps, check=lambda out: {"loss": float(out)},
                  min_left_s=20.0, max_s=max(args.max_row_s, 8.0))


def train_torchvision_row(bench: Bench) -> None:
    args, dev = bench.args, bench.device
    b, s, prec = args.train_batch, args.image_size, args.train_precision
    torch.manual_seed(args.seed)
    model, desc = build_torchvision_for_training(s)
    model = model.to(dev).to(memory_format=torch.channels_last).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)
    u8, _ = make_images(b, s, dev, args.seed + 7)
    images = list((u8.permute(0, 3, 1, 2).float() * (1.0 / 255.0)).unbind(0))  # the loader's ToTensor
    targets = [{"boxes": boxes[:, [1, 0, 3, 2]], "labels": classes}
               for boxes, classes in synthetic_boxes(b, s, dev, args.seed)]

    def train_step():
        with amp(dev, prec):
            losses = model(images, targets)
        loss = sum(losses.values())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    trainable = sum(p.numel() * p.element_size() for p in params)
    bench.measure(train_step, model="torchvision", what="train",
                  variant=f"reference recipe: SGD momentum 0.9, wd 1e-4; {desc}", batch=b, precision=prec,
                  own_bytes=module_bytes(model) + trainable, warmup=args.train_warmup, iters=args.train_steps,
                  check=lambda out: {"loss": float(out)}, min_left_s=20.0, max_s=max(args.max_row_s, 8.0))


# ----------------------------------------------------------------------------------------------------------
# Variants in child processes (a failed capture or a long compile must not take the main run down)


def run_child(bench: Bench, kind: str, spec: dict, min_left_s: float) -> None:
    left = bench.left()
    if left < min_left_s:
        bench.skip(f"{kind}: needs {min_left_s:.0f} s of the time budget, {max(left, 0):.0f} s left")
        return
    timeout = left - 2.0
    cmd = [sys.executable, str(Path(__file__).resolve()), *bench.argv, "--time_budget_s", f"{timeout - 5:.0f}",
           "--_child", json.dumps({"kind": kind, **spec})]
    print(f"child ({kind}, up to {timeout:.0f} s): {' '.join(cmd[-2:])}", flush=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        stdout, stderr, status = proc.stdout, proc.stderr, f"exit status {proc.returncode}"
    except subprocess.TimeoutExpired as e:
        stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        stderr = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        status = f"stopped after {timeout:.0f} s (time budget)"
    got = 0
    for line in stdout.splitlines():
        if not line.startswith(CHILD_MARK):
            continue
        item = json.loads(line[len(CHILD_MARK):])
        if "row" in item:
            bench.add(item["row"])
            got += 1
        if "note" in item:
            bench.note(item["note"])
        if "skip" in item:
            bench.skip(item["skip"])
    if status != "exit status 0" or not got:
        tail = " | ".join(line for line in (stderr or "").strip().splitlines()[-3:])
        bench.note(f"{kind} child: {status}, {got} rows" + (f"; stderr tail: {tail[:400]}" if tail else ""))


class ChildBench(Bench):
    """In a child: rows, notes and skips go to stdout as marked JSON lines for the parent."""

    def add(self, row: dict) -> None:
        self.rows.append(row)
        print(format_row(row), file=sys.stderr, flush=True)
        print(CHILD_MARK + json.dumps({"row": _finite(row)}, default=str), flush=True)

    def note(self, text: str) -> None:
        print(CHILD_MARK + json.dumps({"note": text}), flush=True)

    def skip(self, text: str) -> None:
        print(CHILD_MARK + json.dumps({"skip": text}), flush=True)


def child_main(args, device, spec: dict) -> int:
    bench = ChildBench(args, device, [])
    base, fast = build_spinenet(args, device)
    sn = SpineNetRunners(args, device, base, fast)
    if spec["kind"] == "full_graph_capture":
        full_graph_rows(bench, sn, spec["batch"], spec["precision"])
    elif spec["kind"] == "compile":
        compile_rows(bench, sn, spec["batches"], spec["precision"])
    return 0


def full_graph_rows(bench: Bench, sn: SpineNetRunners, batch: int, precision: str) -> None:
    """Try to capture the whole ExportWrapper forward (uint8 in, detections out) as one CUDA graph."""
    dev = bench.device
    u8, _ = make_images(batch, bench.args.image_size, dev, bench.args.seed)
    w = sn.wrapper(batch)
    static_u8 = u8.clone()

    def whole():
        with torch.device(dev):
            return w(static_u8)

    label = f"cuda graph of the whole end-to-end ExportWrapper (NMS included), batch {batch} {precision}"
    got = _captured(bench, label, whole, precision)
    if got is None:
        return
    graph, outs, pool = got
    ref = sn.end_to_end(w, u8, precision)
    static_u8.copy_(u8)
    graph.replay()
    same = all(torch.equal(a, b) for a, b in zip(outs, ref, strict=False))
    bench.note(f"{label}: captured; replay {'matches' if same else 'DIFFERS FROM'} the eager outputs")

    def run():
        static_u8.copy_(u8)
        graph.replay()
        return outs

    bench.measure(run, model="spinenet", what="end-to-end", variant="cuda graph of the whole ExportWrapper",
                  batch=batch, precision=precision, own_bytes=module_bytes(w) + pool, check=_spinenet_dets,
                  replay_matches_eager=same)


def compile_rows(bench: Bench, sn: SpineNetRunners, batches: list[int], precision: str) -> None:
    """torch.compile of the forward (backbone + head); end to end as compiled forward + eager static NMS."""
    args, dev = bench.args, bench.device
    compiled = torch.compile(sn.fast, mode=None if args.compile_mode == "default" else args.compile_mode,
                             backend=args.compile_backend, dynamic=False)
    name = f"torch.compile (backend {args.compile_backend}, mode {args.compile_mode})"
    for batch in batches:
        if bench.left() < 20:
            bench.skip(f"{name} batch {batch}: time budget spent")
            continue
        u8, x = make_images(batch, args.image_size, dev, args.seed)
        try:
            t = time.perf_counter()
            with torch.no_grad(), amp(dev, precision):
                compiled(x)
            _sync(dev)
            compile_s = round(time.perf_counter() - t, 1)
        except Exception as e:  # noqa: BLE001
            bench.note(f"{name} batch {batch} {precision}: failed ({type(e).__name__}: {str(e)[:200]})")
            return
        print(f"compiled batch {batch} in {compile_s} s", file=sys.stderr, flush=True)

        def forward(x=x):
            with torch.no_grad(), amp(dev, precision):
                return compiled(x)

        bench.measure(forward, model="spinenet", what="forward", variant=name, batch=batch, precision=precision,
                      own_bytes=module_bytes(sn.fast), compile_s=compile_s)
        w = sn.wrapper(batch)

        def end_to_end(w=w, u8=u8):
            with torch.no_grad(), amp(dev, precision):
                cls, box = compiled(w.preprocess(u8))
                return sn.postprocess(w, cls, box, background_channel=True)

        bench.measure(end_to_end, model="spinenet", what="end-to-end",
                      variant=f"{name} forward + eager static NMS", batch=batch, precision=precision,
                      own_bytes=module_bytes(sn.fast), check=_spinenet_dets)

        def reference(w=w, u8=u8):
            with torch.no_grad(), amp(dev, precision):
                cls, box = compiled(w.preprocess(u8))
                return sn.reference_postprocess(w, cls, box)

        bench.measure(reference, model="spinenet", what="end-to-end",
                      variant=f"{name} forward + eager reference post-processing", batch=batch,
                      precision=precision, own_bytes=module_bytes(sn.fast), check=_spinenet_detect_dets)


# ----------------------------------------------------------------------------------------------------------
# Report


def _ok(rows: list[dict]) -> list[dict]:
    return [r for r in rows if "error" not in r and "images_per_s" in r]


def _best(rows, **match) -> dict | None:
    cands = [r for r in _ok(rows) if all(r.get(k) == v for k, v in match.items())]
    return max(cands, key=lambda r: r["images_per_s"], default=None)


def _describe(r: dict | None) -> str:
    if r is None:
        return "not measured"
    return f"{r['model']} {r['what']} [{r['variant']}] batch {r['batch']} {r['precision']}"


def _ratio(name: str, value, target: float, comparison: str, detail: str) -> dict:
    met = None
    if value is not None and math.isfinite(value):
        met = value <= target if comparison == "<=" else value >= target
    return {"name": name, "value": None if value is None else round(value, 3), "target": target,
            "comparison": comparison, "met": met, "detail": detail}


def compute_ratios(rows: list[dict], args) -> list[dict]:
    batches = args.batch_sizes
    rb = RATIO_BATCH if RATIO_BATCH in batches else max(batches)
    rp = "bf16" if "bf16" in args.precisions else args.precisions[0]
    out = []

    lat_rows = [r for r in _ok(rows) if r["model"] == "spinenet" and r["what"] == "end-to-end" and r["batch"] == 1]
    fastest = min(lat_rows, key=lambda r: r["ms_median"], default=None)
    out.append(_ratio("end-to-end latency at batch 1 (ms, NMS included)", fastest and fastest["ms_median"],
                      E2E_LATENCY_TARGET_MS, "<=", f"fastest: {_describe(fastest)}"))

    mine = _best(rows, model="spinenet", what="forward", batch=rb, precision=rp)
    mine_eager = _best(rows, model="spinenet", what="forward", batch=rb, precision=rp, variant="eager")
    peer = _best(rows, model="torchvision", what="forward", batch=rb, precision=rp)
    for label, r in (("best variant", mine), ("eager vs eager", mine_eager)):
        value = r["images_per_s"] / peer["images_per_s"] if r and peer else None
        out.append(_ratio(f"forward throughput at batch {rb} {rp}, {label} / torchvision", value,
                          FORWARD_RATIO_TARGET, ">=",
                          f"{_describe(r)} vs {_describe(peer)}" + (
                              f": {r['images_per_s']:.0f} vs {peer['images_per_s']:.0f} images/s" if value else "")))

    e2e = _best(rows, model="spinenet", what="end-to-end")
    out.append(_ratio("end-to-end throughput (images/s, NMS included)", e2e and e2e["images_per_s"],
                      E2E_THROUGHPUT_TARGET, ">=", f"best: {_describe(e2e)}"))
    if e2e:
        peer_e2e = _best(rows, model="torchvision", what="end-to-end", batch=e2e["batch"],
                         precision=e2e["precision"])
        if peer_e2e:
            out.append(_ratio(f"end-to-end throughput at batch {e2e['batch']} {e2e['precision']} / torchvision "
                              "(information, no target in the issue)",
                              e2e["images_per_s"] / peer_e2e["images_per_s"], 1.0, ">=",
                              f"{e2e['images_per_s']:.0f} vs {peer_e2e['images_per_s']:.0f} images/s"))

    mine_t = _best(rows, model="spinenet", what="train")
    peer_t = _best(rows, model="torchvision", what="train")
    value = mine_t["images_per_s"] / peer_t["images_per_s"] if mine_t and peer_t else None
    out.append(_ratio(f"training throughput at batch {args.train_batch} {args.train_precision} / torchvision",
                      value, TRAIN_RATIO_TARGET, ">=",
                      f"{mine_t['images_per_s']:.1f} vs {peer_t['images_per_s']:.1f} images/s" if value
                      else "not measured (--skip_train, a failure, or the time budget)"))
    return out


def format_row(r: dict) -> str:
    name = "spinenet" if r["model"] == "spinenet" else "torchvision"
    head = f"{name:11} {r['what']:11} {r['batch']:>4} {r['precision']:5}"
    if "error" in r:
        return f"{head} {'ERROR':>9} {'':>9} {'':>10} {'':>9} {'':>7}  {r['variant']}: {r['error']}"
    dets = f"{r['detections_per_image']:7.1f}" if "detections_per_image" in r else f"{'':>7}"
    return (f"{head} {r['ms_median']:9.3f} {r['ms_p90']:9.3f} {r['images_per_s']:10.1f} {r['peak_mib']:9.0f} "
            f"{dets}  {r['variant']}")


TABLE_HEADER = (f"{'model':11} {'what':11} {'batch':>4} {'prec.':5} {'ms median':>9} {'ms p90':>9} "
                f"{'images/s':>10} {'peak MiB':>9} {'dets/im':>7}  variant")


def print_report(bench: Bench) -> None:
    env, args = bench.env, bench.args
    order = {"forward": 0, "end-to-end": 1, "postprocess": 2, "train": 3}
    rows = sorted(bench.rows, key=lambda r: (order.get(r["what"], 9), r["batch"], r["precision"],
                                             r["model"] != "spinenet"))
    machine = env.get("gpu") or f"CPU ({env.get('machine')}, {env.get('cpu_count')} cores)"
    print()
    print(f"== SpineNet-49S vs torchvision retinanet_resnet50_fpn, {args.image_size}x{args.image_size}, "
          f"{machine}; torch {env.get('torch')}, torchvision {env.get('torchvision')}"
          + (f", CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}" if env.get("gpu") else "")
          + f"; {bench.elapsed():.0f} s")
    print("ms: host wall time per batch, device synchronised after each call (median, p90); images/s = batch / "
          "median; peak MiB: " + ("max allocated above the row's start + the row's weights" if env.get("gpu")
                                  else "process peak RSS"))
    print(TABLE_HEADER)
    for r in rows:
        print(format_row(r))
    for text in bench.skipped:
        print(f"skipped: {text}")
    print()
    for r in bench.ratios:
        verdict = {True: "MET", False: "NOT MET", None: "n/a"}[r["met"]]
        value = "n/a" if r["value"] is None else f"{r['value']:.3f}"
        print(f"{r['name']}: {value} (target {r['comparison']} {r['target']:g}) {verdict}; {r['detail']}")
    if bench.calibration:
        print("heads made informative: " + "; ".join(
            f"{k}: {v['candidates_measured']:.0f} candidates/image above the score threshold"
            for k, v in bench.calibration.items()))


# ----------------------------------------------------------------------------------------------------------


def _batch_order(batches: list[int]) -> list[int]:
    """Batch 1 first (the latency target), then the ratio batch, then the rest."""
    rb = RATIO_BATCH if RATIO_BATCH in batches else max(batches)
    first = [b for b in (1, rb) if b in batches]
    return list(dict.fromkeys(first + list(batches)))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    _ensure_spinenet_importable()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            print("CUDA is not available; use --device cpu (with --smoke for a quick check)", file=sys.stderr)
            return 2
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    if args._child:
        return child_main(args, device, json.loads(args._child))

    bench = Bench(args, device, argv)
    bench.env = environment(device)
    print(f"environment: {json.dumps(bench.env)}", flush=True)
    cuda = device.type == "cuda"
    variants = set(args.variants)
    if not cuda and variants & {"cuda_graph", "full_graph_capture"}:
        bench.note("CUDA graph variants need a CUDA device: skipped")
        variants -= {"cuda_graph", "full_graph_capture"}

    t = time.perf_counter()
    base, fast = build_spinenet(args, device, bench)
    sn = SpineNetRunners(args, device, base, fast)
    tv = build_torchvision(args, device, bench)
    _sync(device)
    bench.note(f"models built and heads made informative in {time.perf_counter() - t:.1f} s: "
               + json.dumps(bench.calibration))
    print(TABLE_HEADER, flush=True)

    order = _batch_order(args.batch_sizes)
    precisions = sorted(args.precisions, key=lambda p: p != "bf16")  # bf16 first: the targets are in bf16

    def grid(batch: int) -> None:
        u8, x = make_images(batch, args.image_size, device, args.seed)
        for precision in precisions:
            spinenet_rows(bench, sn, batch, precision, u8, x, detect="detect" in variants)
            torchvision_rows(bench, tv, batch, precision, u8, x)
            if "cuda_graph" in variants and batch in args.graph_batches:
                graph_rows(bench, sn, batch, precision, u8, x)
        del u8, x
        if cuda:
            torch.cuda.empty_cache()

    def training() -> None:
        if args.skip_train:
            bench.skip("training rows: --skip_train")
            return
        for fn in (train_spinenet_row, train_torchvision_row):
            try:
                fn(bench)
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                bench.note(f"{fn.__name__}: {type(e).__name__}: {e}")
            if cuda:
                torch.cuda.empty_cache()

    for batch in order[:2]:
        grid(batch)
    training()
    for batch in order[2:]:
        grid(batch)
    sn.wrappers.clear()
    if cuda:
        torch.cuda.empty_cache()
    rp = "bf16" if "bf16" in args.precisions else args.precisions[0]
    if "full_graph_capture" in variants:
        run_child(bench, "full_graph_capture", {"batch": 1, "precision": rp}, min_left_s=30.0)
    if "compile" in variants and args.compile_batches:
        run_child(bench, "compile", {"batches": args.compile_batches, "precision": rp}, min_left_s=args.compile_min_s)

    bench.ratios = compute_ratios(bench.rows, args)
    bench.write()
    print_report(bench)
    if args.output:
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
