"""Accuracy-aware int8 quantization (``spinenet export --quantize int8 --max_ap_drop X``).

A loop of our own over a held-out set, in the spirit of NNCF's ``quantize_with_accuracy_control`` (which needs
NNCF, not a dependency here): measure the fp32 export's AP, quantize with the default float groups, and while
the AP drop exceeds the bound, keep one more layer group (:func:`~spinenet.deploy.quantize.layer_groups`) in
float. The order is set once by sensitivity: each still-int8 group is kept float alone and the AP it recovers
measured (one evaluation per group), then groups are backed off most sensitive first, one evaluation each,
until the drop is within bound. With every group float the export computes what the fp32 one does, so the loop
always ends.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from spinenet.deploy.quantize import DEFAULT_FLOAT_GROUPS, evaluate_onnx, layer_groups, quantize_int8


def quantize_within_ap_drop(fp32_path: str | os.PathLike, output: str | os.PathLike, images: Sequence[np.ndarray],
                            annotations: str | os.PathLike, images_dir: str | os.PathLike, max_ap_drop: float, *,
                            start_float: Sequence[str] = DEFAULT_FLOAT_GROUPS, backend: str = "openvino",
                            threads: int | None = None, log: Callable[[str], None] = print) -> dict:
    """Quantize ``fp32_path`` into ``output`` keeping layer groups float until the COCO AP on ``annotations``
    (``images_dir``) is at most ``max_ap_drop`` below the fp32 export's, measured with ``backend``.

    Returns ``{"fp32_ap", "int8_ap", "drop", "float_groups", "evaluations"}``; the same is in ``output``'s
    metadata (``spinenet.quantize.accuracy_control``).
    """
    import onnx

    if not max_ap_drop >= 0:
        raise ValueError(f"--max_ap_drop must be >= 0 (an AP difference such as 0.01), got {max_ap_drop}")
    output = Path(output)
    fp32_ap = evaluate_onnx(fp32_path, annotations, images_dir, backend=backend, threads=threads)["AP"]
    log(f"fp32 export: AP {fp32_ap:.4f} on {annotations} ({backend})")
    groups = list(layer_groups(onnx.load(fp32_path, load_external_data=False)))
    evaluations = 1
    cache = output.with_name(f".{output.stem}.calibration.json")  # ranges measured once, by the first call
    cache.unlink(missing_ok=True)

    def quantized_ap(float_groups: list[str], path: Path) -> float:
        nonlocal evaluations
        quantize_int8(fp32_path, path, images, float_groups=float_groups, calibration_cache=cache)
        evaluations += 1
        return evaluate_onnx(path, annotations, images_dir, backend=backend, threads=threads)["AP"]

    float_groups = [g for g in groups if any(g == s or g.startswith(s + ".") for s in start_float)]
    ap = quantized_ap(float_groups, output)
    log(f"int8, float groups {','.join(float_groups) or 'none'}: AP {ap:.4f} (drop {fp32_ap - ap:+.4f}, "
        f"bound {max_ap_drop})")
    if fp32_ap - ap > max_ap_drop:
        trial = output.with_name(f".{output.stem}.trial.onnx")
        try:
            gains = {}
            for g in (g for g in groups if g not in float_groups):  # sensitivity: each group float alone
                gains[g] = quantized_ap([*float_groups, g], trial) - ap
                log(f"  sensitivity: {g} float recovers AP {gains[g]:+.4f}")
            for g in sorted(gains, key=gains.get, reverse=True):
                float_groups.append(g)
                ap = quantized_ap(float_groups, trial)
                log(f"int8, float groups {','.join(float_groups)}: AP {ap:.4f} (drop {fp32_ap - ap:+.4f})")
                if fp32_ap - ap <= max_ap_drop:
                    break
            os.replace(trial, output)  # the last trial is the chosen one
        finally:
            trial.unlink(missing_ok=True)
            cache.unlink(missing_ok=True)
    cache.unlink(missing_ok=True)
    result = {"fp32_ap": fp32_ap, "int8_ap": ap, "drop": fp32_ap - ap, "float_groups": float_groups,
              "evaluations": evaluations}
    proto = onnx.load(output)
    meta = {p.key: p.value for p in proto.metadata_props}
    meta["spinenet.quantize.accuracy_control"] = (
        f"max_ap_drop {max_ap_drop} on {Path(annotations).name} ({backend}): fp32 AP {fp32_ap:.4f}, int8 AP "
        f"{ap:.4f}, drop {fp32_ap - ap:+.4f}, {evaluations} evaluations")
    onnx.helper.set_model_props(proto, meta)
    tmp = output.with_name(f".{output.name}.meta.tmp")
    onnx.save(proto, tmp)
    os.replace(tmp, output)
    return result
