"""The report: one table line per row, the issue's done-when ratios against their targets, and the JSON file.

The targets are the issue's (13, "Done when"): end-to-end batch-1 latency <= 3 ms; forward throughput at
batch 32 bf16 >= 3x torchvision in the same run; end to end with NMS >= 2,000 images/s; training at batch 64
bf16 >= 3x torchvision (the step timed here with anchor labelling inside it on both sides, and ``spinenet
train`` itself from its own log).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

E2E_LATENCY_TARGET_MS = 3.0
FORWARD_RATIO_TARGET = 3.0
E2E_THROUGHPUT_TARGET = 2000.0
TRAIN_RATIO_TARGET = 3.0
RATIO_BATCH = 32

# Sort order of the table: the done-when kinds first.
WHAT_ORDER = {"forward": 0, "end-to-end": 1, "postprocess": 2, "train": 3, "loader": 4, "train (CLI)": 5}


def finite(obj):
    """JSON has no NaN or infinity: such floats (a diverged loss, say) are written as strings."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def write_json(path: str, data: dict) -> None:
    """Atomically (a kill mid-write leaves the previous complete file)."""
    from spinenet.io_checks import write_text_atomic

    write_text_atomic(Path(path), json.dumps(finite(data), indent=1, allow_nan=False, default=str))


def ok_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if "error" not in r and "images_per_s" in r]


def best(rows, **match) -> dict | None:
    cands = [r for r in ok_rows(rows) if all(r.get(k) == v for k, v in match.items())]
    return max(cands, key=lambda r: r["images_per_s"], default=None)


def describe(r: dict | None) -> str:
    if r is None:
        return "not measured"
    return f"{r['model']} {r['what']} [{r['variant']}] batch {r['batch']} {r['precision']}"


def ratio(name: str, value, target: float, comparison: str, detail: str) -> dict:
    met = None
    if value is not None and math.isfinite(value):
        met = value <= target if comparison == "<=" else value >= target
    return {"name": name, "value": None if value is None else round(value, 3), "target": target,
            "comparison": comparison, "met": met, "detail": detail}


def _versus(name: str, mine: dict | None, peer: dict | None, target: float) -> dict:
    value = mine["images_per_s"] / peer["images_per_s"] if mine and peer else None
    detail = f"{describe(mine)} vs {describe(peer)}"
    if value:
        detail += f": {mine['images_per_s']:.1f} vs {peer['images_per_s']:.1f} images/s"
    return ratio(name, value, target, ">=", detail)


def compute_ratios(rows: list[dict], args) -> list[dict]:
    rb = RATIO_BATCH if RATIO_BATCH in args.batch_sizes else max(args.batch_sizes)
    rp = "bf16" if "bf16" in args.precisions else args.precisions[0]
    out = []
    lat = [r for r in ok_rows(rows) if r["model"] == "spinenet" and r["what"] == "end-to-end" and r["batch"] == 1]
    fastest = min(lat, key=lambda r: r["ms_median"], default=None)
    out.append(ratio("end-to-end latency at batch 1 (ms, NMS included)", fastest and fastest["ms_median"],
                     E2E_LATENCY_TARGET_MS, "<=", f"fastest: {describe(fastest)}"))
    peer = best(rows, model="torchvision", what="forward", batch=rb, precision=rp)
    out.append(_versus(f"forward throughput at batch {rb} {rp}, best variant / torchvision",
                       best(rows, model="spinenet", what="forward", batch=rb, precision=rp), peer,
                       FORWARD_RATIO_TARGET))
    out.append(_versus(f"forward throughput at batch {rb} {rp}, eager vs eager / torchvision",
                       best(rows, model="spinenet", what="forward", batch=rb, precision=rp, variant="eager"), peer,
                       FORWARD_RATIO_TARGET))
    e2e = best(rows, model="spinenet", what="end-to-end")
    out.append(ratio("end-to-end throughput (images/s, NMS included)", e2e and e2e["images_per_s"],
                     E2E_THROUGHPUT_TARGET, ">=", f"best: {describe(e2e)}"))
    if e2e:
        peer_e2e = best(rows, model="torchvision", what="end-to-end", batch=e2e["batch"], precision=e2e["precision"])
        if peer_e2e:
            out.append(_versus(f"end-to-end throughput at batch {e2e['batch']} {e2e['precision']} / torchvision "
                               "(information, no target in the issue)", e2e, peer_e2e, 1.0))
    peer_t = best(rows, model="torchvision", what="train", labels_in_step=True)
    step = best(rows, model="spinenet", what="train", labels_in_step=True)
    out.append(_versus(f"training throughput at batch {args.train_batch} {args.train_precision}, spinenet train's "
                       "step (labelling inside) / torchvision's", step, peer_t, TRAIN_RATIO_TARGET))
    cli = best(rows, model="spinenet", what="train (CLI)")
    out.append(_versus(f"training throughput at batch {args.train_batch} {args.train_precision}, `spinenet train` "
                       "itself (its log) / torchvision's step", cli, peer_t, TRAIN_RATIO_TARGET))
    loader = best(rows, model="spinenet", what="loader")
    if loader and step:
        out.append(_versus("spinenet train's loader / its step (information: below 1, training is input-bound)",
                           loader, step, 1.0))
    return out


def format_row(r: dict) -> str:
    name = "spinenet" if r["model"] == "spinenet" else "torchvision"
    head = f"{name:11} {r['what']:11} {r['batch']:>4} {r['precision']:5}"
    if "error" in r:
        return f"{head} {'ERROR':>9} {'':>9} {'':>10} {'':>9} {'':>7}  {r['variant']}: {r['error']}"
    dets = f"{r['detections_per_image']:7.1f}" if "detections_per_image" in r else f"{'':>7}"
    peak = f"{r['peak_mib']:9.0f}" if isinstance(r.get("peak_mib"), (int, float)) else f"{'n/a':>9}"
    return (f"{head} {r['ms_median']:9.3f} {r['ms_p90']:9.3f} {r['images_per_s']:10.1f} {peak} "
            f"{dets}  {r['variant']}")


TABLE_HEADER = (f"{'model':11} {'what':11} {'batch':>4} {'prec.':5} {'ms median':>9} {'ms p90':>9} "
                f"{'images/s':>10} {'peak MiB':>9} {'dets/im':>7}  variant")


def print_report(bench) -> None:
    env, args = bench.env, bench.args
    rows = sorted(bench.rows, key=lambda r: (not r.get("done_when", False), WHAT_ORDER.get(r["what"], 9),
                                             r["batch"], r["precision"], r["model"] != "spinenet"))
    machine = env.get("gpu") or f"CPU ({env.get('cpu_model') or env.get('machine')}, {env.get('cpu_count')} cores)"
    print()
    print(f"== SpineNet-49S vs torchvision retinanet_resnet50_fpn, {args.image_size}x{args.image_size}, "
          f"{machine}; torch {env.get('torch')}, torchvision {env.get('torchvision')}"
          + (f", CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}" if env.get("gpu") else "")
          + f"; {bench.elapsed():.0f} s")
    print("ms: host wall time per batch, device synchronised after each call (median, p90); images/s = batch / "
          "median; peak MiB: " + ("max allocated above the row's start + the row's weights (loader rows: host "
                                  "peak RSS)" if env.get("gpu") else "process peak RSS"))
    print(TABLE_HEADER)
    done_when = True
    for r in rows:
        if done_when and not r.get("done_when", False):
            done_when = False
            print("-- optional rows")
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
