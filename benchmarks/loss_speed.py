"""RetinaNet loss forward + backward: the one-hot implementation (``reference_loss``) against today's, in one run.

``reference_loss`` below is ``retinanet_loss`` as it was before the fused focal loss (commit daa9d05): it
flattens the class maps to (B, N, K), builds an int64 one-hot target and lets autograd differentiate the
element-wise formula. It is kept here, verbatim in its math, as the baseline of this benchmark and as the
reference of tests/modeling/test_losses_fused.py. Likewise ``reference_l2`` is the per-kernel
``l2_regularization``.

    python benchmarks/loss_speed.py [--batch 8] [--size 640] [--reps 7] [--threads N]

Inputs: SpineNet-49S-shaped head maps (levels 3-7, 9 anchors, 91 classes) with logits around the prior bias,
targets from :func:`~spinenet.modeling.labeler.label_anchors` on random boxes (match 0.5 / unmatched 0.5, the
reference's, so no anchor is ignored; ``--unmatched_threshold 0.4`` times the masked path too). Each round times
both implementations, in alternating order; the table gives the median and the minimum over the rounds, the
ratio of medians, and how far the values and gradients differ. Then the same for the labeller's changed
reductions and for the L2 term.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from spinenet.modeling.anchors import Anchors
from spinenet.modeling.labeler import IGNORED, LabelerParams, box_iou_yxyx, label_anchors, label_batch
from spinenet.modeling.losses import LossParams, huber_loss_sum, l2_regularization, retinanet_loss
from spinenet.modeling.postprocess import flatten_outputs

NUM_ANCHORS, LEVELS = 9, (3, 4, 5, 6, 7)


def reference_loss(cls_outputs: dict[int, Tensor], box_outputs: dict[int, Tensor], cls_targets: Tensor,
                   box_targets: Tensor, num_positives: Tensor, params: LossParams | None = None,
                   num_classes: int = 91) -> dict[str, Tensor]:
    """``retinanet_loss`` with the (B, N, K) one-hot, as before the fused focal loss."""
    params = params or LossParams()
    logits, deltas = flatten_outputs(cls_outputs, box_outputs, num_classes)  # (B, N, K), (B, N, 4)
    normalizer = num_positives.float().sum() + 1.0
    cls_targets = cls_targets.long()
    onehot = F.one_hot(cls_targets.clamp(min=0), num_classes) * (cls_targets >= 0)[..., None]  # (B, N, K)
    keep = (cls_targets != IGNORED)[..., None]  # (B, N, 1)
    x, z = logits.float(), onehot.float()
    ce = F.binary_cross_entropy_with_logits(x, z, reduction="none")
    focal = torch.exp(-params.focal_loss_gamma * z * x - params.focal_loss_gamma * F.softplus(-x)) * ce
    alpha = params.focal_loss_alpha
    focal = torch.where(z == 1.0, alpha * focal, (1.0 - alpha) * focal)
    cls_loss = torch.where(keep, focal, torch.zeros_like(focal)).sum() / (normalizer + 1e-20)
    box_loss = huber_loss_sum(deltas, box_targets, params.huber_loss_delta) / (normalizer * 4.0 + 1e-20)
    total = cls_loss + params.box_loss_weight * box_loss
    return {"total_loss": total, "cls_loss": cls_loss, "box_loss": box_loss}


def reference_l2(model: nn.Module, weight_decay: float) -> Tensor:
    """``l2_regularization`` before ``torch._foreach``: one square and one sum per conv kernel."""
    kernels = {id(m.weight): m.weight for m in model.modules() if isinstance(m, nn.Conv2d) and m.weight.requires_grad}
    return weight_decay * torch.stack([w.float().pow(2).sum() for w in kernels.values()]).sum() / 2.0


def make_inputs(batch: int, size: int, num_classes: int = 91, seed: int = 0, max_gt: int = 20,
                unmatched_threshold: float = 0.4):
    """Head maps and labelled targets for ``batch`` random images of ``size``² (up to ``max_gt`` boxes each)."""
    gen = torch.Generator().manual_seed(seed)
    cls, box = {}, {}
    for level in LEVELS:
        s = size // 2**level
        cls[level] = (torch.randn(batch, NUM_ANCHORS * num_classes, s, s, generator=gen) * 2.0 - 4.6)
        box[level] = torch.randn(batch, NUM_ANCHORS * 4, s, s, generator=gen) * 0.2
    anchors = Anchors((size, size)).boxes
    gts = []
    for _ in range(batch):
        g = int(torch.randint(1, max_gt + 1, (), generator=gen))
        corner = torch.rand(g, 2, generator=gen) * size * 0.8
        extent = torch.rand(g, 2, generator=gen) * size * 0.4 + 8.0
        boxes = torch.cat([corner, (corner + extent).clamp(max=size)], dim=1)
        gts.append((boxes, torch.randint(1, num_classes, (g,), generator=gen)))
    cls_t, box_t, npos = label_batch(gts, anchors, LabelerParams(0.5, unmatched_threshold))
    return cls, box, cls_t, box_t, npos


def _leaf(maps: dict[int, Tensor]) -> dict[int, Tensor]:
    return {k: v.detach().clone().requires_grad_(True) for k, v in maps.items()}


def _grads(maps: dict[int, Tensor]) -> Tensor:
    return torch.cat([maps[k].grad.flatten() for k in sorted(maps)])


def _step(fn, cls, box, targets, num_classes):
    for m in (*cls.values(), *box.values()):
        m.grad = None
    out = fn(cls, box, *targets, LossParams(), num_classes)
    out["total_loss"].backward()
    return out


def _cpu_info() -> str:
    from spinenet.deploy.benchmark import lscpu_fields

    fields = lscpu_fields()
    if not fields:
        return platform.processor() or "unknown CPU"
    flags = [f for f in fields.get("Flags", "").split() if f.startswith(("avx", "fma", "amx"))]
    return f"{fields.get('Model name', '?')}; {len(flags)} SIMD flags: {' '.join(flags)}"


def _time(fns: dict[str, object], reps: int) -> dict[str, list[float]]:
    """Run every callable once per round, in alternating order, ``reps`` rounds after one warm-up round."""
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(reps + 1):
        for name in names if r % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            fns[name]()
            if r:
                times[name].append(time.perf_counter() - t0)
    return times


def _row(name: str, times: list[float], base: float | None) -> str:
    med = statistics.median(times)
    ratio = f"{base / med:>7.2f}x" if base else f"{'-':>8}"
    return f"{name:<28} {med * 1e3:>10.1f} {min(times) * 1e3:>10.1f} {ratio}"


def _labeller_rows(size: int, reps: int, num_gt: int = 20) -> None:
    """The reductions of ``labeler.match`` that changed (argmax + gather -> max), on one image's IoU matrix."""
    gen = torch.Generator().manual_seed(1)
    anchors = Anchors((size, size)).boxes
    corner = torch.rand(num_gt, 2, generator=gen) * size * 0.8
    gt = torch.cat([corner, corner + torch.rand(num_gt, 2, generator=gen) * size * 0.3 + 8.0], dim=1)
    sim = box_iou_yxyx(gt, anchors)

    def before():
        matches = sim.argmax(dim=0)
        return sim.gather(0, matches[None, :])[0], sim.argmax(dim=1)

    def after():
        return sim.max(dim=0), sim.max(dim=1).indices

    assert torch.equal(before()[0], after()[0].values) and torch.equal(before()[1], after()[1])
    assert torch.equal(sim.argmax(dim=0), after()[0].indices)
    fns = {"argmax(0)+gather, argmax(1)": before, "max(0), max(1)": after,
           "label_anchors (whole, today)": lambda: label_anchors(gt, torch.ones(num_gt, dtype=torch.long), anchors)}
    times = _time(fns, max(reps, 20))
    base = statistics.median(times["argmax(0)+gather, argmax(1)"])
    print(f"\n{f'labeller, {num_gt} GTs x {len(anchors)}':<28} {'median ms':>10} {'min ms':>10} {'speed-up':>8}")
    for name in fns:
        print(_row(name, times[name], None if name.startswith("label_anchors") else base))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=640, help="square input size, a multiple of 128")
    ap.add_argument("--num_classes", type=int, default=91)
    ap.add_argument("--reps", type=int, default=7, help="timed rounds (medians reported)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--unmatched_threshold", type=float, default=0.5,
                    help="labeller threshold; below 0.5 some anchors are ignored (the reference uses 0.5)")
    ap.add_argument("--compiled", action="store_true", help="also time torch.compile(retinanet_loss) (Inductor)")
    ap.add_argument("--skip_l2", action="store_true", help="no L2 rows (they build SpineNet-49S)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    k = args.num_classes
    print(f"CPU: {_cpu_info()}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads (OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}), python {sys.version.split()[0]}")
    cls0, box0, *targets = make_inputs(args.batch, args.size, k, unmatched_threshold=args.unmatched_threshold)
    n_el = sum(v.numel() for v in cls0.values())
    print(f"batch {args.batch}, {args.size}x{args.size}, {k} classes: {targets[0].shape[1]} anchors, "
          f"{n_el / 1e6:.1f} M logits; {int(targets[2].sum())} positive, "
          f"{int((targets[0] == IGNORED).sum())} ignored anchors; float32, forward + backward")

    fns = {"reference (one-hot)": reference_loss, "fused": retinanet_loss}
    if args.compiled:  # the plain-op path fused by Inductor; the compile itself is not timed
        fns["fused, torch.compile"] = torch.compile(retinanet_loss, fullgraph=True)
    maps = {name: (_leaf(cls0), _leaf(box0)) for name in fns}
    t0 = time.perf_counter()
    outs = {name: _step(fns[name], *maps[name], targets, k) for name in fns}
    if args.compiled:
        print(f"first calls (compiles included): {time.perf_counter() - t0:.0f} s")
    times = _time({name: (lambda n=name: _step(fns[n], *maps[n], targets, k)) for name in fns}, args.reps)

    ref, new = outs["reference (one-hot)"], outs["fused"]
    new, ref = {k: float(v.detach()) for k, v in new.items()}, {k: float(v.detach()) for k, v in ref.items()}
    rel = {key: abs(new[key] - ref[key]) / abs(ref[key]) for key in ref}
    g_ref, g_new = _grads(maps["reference (one-hot)"][0]), _grads(maps["fused"][0])
    g_err = float((g_new - g_ref).abs().max() / g_ref.abs().max())
    for name in list(fns)[2:]:
        g = _grads(maps[name][0])
        print(f"{name}: total_loss {float(outs[name]['total_loss'].detach()):.6f}, class-map gradients max |diff| / "
              f"max |grad| = {float((g - g_ref).abs().max() / g_ref.abs().max()):.1e}")
    b_err = float((_grads(maps["fused"][1]) - _grads(maps["reference (one-hot)"][1])).abs().max())

    print(f"\n{'loss fwd+bwd':<28} {'median ms':>10} {'min ms':>10} {'speed-up':>8}")
    base = statistics.median(times["reference (one-hot)"])
    for name in fns:
        print(_row(name, times[name], base))
    print(f"ratio (median reference / median fused): {base / statistics.median(times['fused']):.2f}x")
    print("values: " + ", ".join(f"{key} {new[key]:.6f} (rel. diff {rel[key]:.1e})" for key in ref))
    print(f"gradients: class maps max |diff| / max |grad| = {g_err:.1e}; box maps max |diff| = {b_err:.1e}")

    _labeller_rows(args.size, args.reps)
    if not args.skip_l2:
        from spinenet.registry import create_model

        model = create_model("retinanet_spinenet49s", num_classes=k)
        l2_fns = {"reference_l2 (per kernel)": reference_l2, "l2_regularization": l2_regularization}

        def l2_step(fn):
            model.zero_grad(set_to_none=True)
            fn(model, 4e-5).backward()

        l2_times = _time({name: (lambda f=fn: l2_step(f)) for name, fn in l2_fns.items()}, args.reps)
        l2_base = statistics.median(l2_times["reference_l2 (per kernel)"])
        print(f"\n{'L2 fwd+bwd (SpineNet-49S)':<28} {'median ms':>10} {'min ms':>10} {'speed-up':>8}")
        for name in l2_fns:
            print(_row(name, l2_times[name], l2_base))
        print(f"values: reference {float(reference_l2(model, 4e-5).detach()):.8f}, "
              f"l2_regularization {float(l2_regularization(model, 4e-5).detach()):.8f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
