"""Parity of `spinenet convert --from tpu` / `--from tpu-frozen-graph` against a TF1 reference recording.

Reads a folder written by ``tools/tf1_reference.py`` (TF1 checkpoint and/or training checkpoint, frozen graph
``spinenet_tf_310.pb``, ``reference.npz``, ``variables.json``), converts every checkpoint and frozen graph in it
with this project's importer (no TensorFlow involved) and prints:

* whether all conversions hold bit-identical weights (inference and training checkpoints, frozen graphs);
* raw class/box maps of the converted model (eval mode, uint8 input through the export's normalisation) against
  TF1's on input A (the BN calibration input) and B: max |Δ| relative to each map's max |value|;
* detections (``RetinaNet.detect``, TF1 conventions) against TF1's serving outputs as matched sets: count, max
  box Δ in pixels, max score Δ;
* the ONNX export (``spinenet export`` of the converted checkpoint, run by ONNX Runtime on the uint8 input)
  against the TF1 frozen graph's five outputs.

    python tools/tpu_parity.py /work/runs/tf1_49S
    python tools/tpu_parity.py tests/fixtures/tpu_tiny      (width-reduced: converted by mapping, not the CLI)
    python tools/tpu_parity.py DIR --rtol 2.5e-4            (a `tools/tf1_reference.py --family mobile` recording)

Exits non-zero when a map differs by more than --rtol of its max or the detections disagree away from ties.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

DETECTION_KEYS = ("detection_boxes", "detection_scores", "detection_classes")


def weight_sources(folder: Path) -> list[tuple[Path, bool]]:
    """(path, is frozen graph) of everything tools/tf1_reference.py may have written, checkpoints first."""
    candidates = [(folder / "model.ckpt", False), (folder / "train", False),
                  (folder / "train_checkpoint.tar.gz", False), (folder / "spinenet_tf_310.pb", True),
                  (folder / "spinenet_tf_310_refvars.pb", True)]
    found = [(p, g) for p, g in candidates if p.exists() or Path(f"{p}.index").exists()]
    if not any(not g for _, g in found) or not (folder / "spinenet_tf_310.pb").exists():
        raise FileNotFoundError(f"{folder} lacks a checkpoint or spinenet_tf_310.pb written by tools/tf1_reference.py")
    return found


def convert(src: Path, frozen: bool, meta: dict, work: Path):
    """(model, path of the written spinenet checkpoint or None): the CLI's converter for registry variants; for a
    width-reduced recording the mapping into the model its metadata describes."""
    from spinenet.convert.tpu import (
        convert_tpu,
        map_tpu_weights,
        model_from_reference_metadata,
        open_tpu_checkpoint,
        open_tpu_frozen_graph,
    )

    if meta.get("custom_scaling"):
        model = model_from_reference_metadata(meta)
        if frozen:
            state = map_tpu_weights(open_tpu_frozen_graph(src), model)
        else:
            with open_tpu_checkpoint(src) as w:
                state = map_tpu_weights(w, model)
        model.load_state_dict(state, strict=True)
        return model.eval(), None
    from spinenet.engine.checkpoint import load_model

    size = meta["image_size"]
    out = work / f"from_{src.name.replace('.', '_')}.pt"
    result = convert_tpu(src, out, frozen_graph=frozen, params_override={"retinanet_parser": {"output_size":
                                                                                              [size, size]}})
    print(result.summary())
    return load_model(out)[0], out


def onnx_outputs(model, ckpt: Path | None, images: np.ndarray, size: int, work: Path) -> dict[str, np.ndarray]:
    from spinenet.deploy.export import DETECTION_OUTPUTS, export_onnx
    from spinenet.deploy.runtimes import OnnxRuntimeSession

    path = work / "model.onnx"
    if ckpt is not None:  # the command line, as a user runs it
        from spinenet.cli import main

        code = main(["export", "--checkpoint", str(ckpt), "--output", str(path),
                     "--input_image_size", f"{size},{size}"])
        if code:
            raise SystemExit(f"spinenet export failed ({code})")
    else:
        export_onnx(model, path, image_size=(size, size))
    session = OnnxRuntimeSession(path, threads=torch.get_num_threads())
    runs = [session.run(images[i:i + 1]) for i in range(len(images))]
    keys = ("num_detections", "detection_boxes", "detection_classes", "detection_scores", "image_info")
    return {k: np.concatenate([r[n] for r in runs]) for k, n in zip(keys, DETECTION_OUTPUTS, strict=True)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path, help="output folder of tools/tf1_reference.py")
    p.add_argument("--rtol", type=float, default=1e-3, help="max |Δ| of a raw map relative to its max |value|")
    p.add_argument("--box_tol", type=float, default=0.5, help="matched detections: max box coordinate Δ (px)")
    p.add_argument("--no_onnx", action="store_true", help="skip the ONNX export comparison")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from spinenet.convert.parity import compare_detections, compare_maps
    from spinenet.deploy.export import ExportWrapper

    t0 = time.time()
    folder = args.folder
    meta = json.loads((folder / "variables.json").read_text())["metadata"]
    ref = dict(np.load(folder / "reference.npz"))
    size, images = meta["image_size"], ref["images_uint8"]
    with tempfile.TemporaryDirectory(prefix="tpu_parity_") as tmp:
        work = Path(tmp)
        sources = weight_sources(folder)
        (ckpt_src, _), graph_src = sources[0], folder / "spinenet_tf_310.pb"
        m_ckpt, ckpt_pt = convert(ckpt_src, False, meta, work)
        s1 = m_ckpt.state_dict()
        identity = []  # (source, bit-identical to the first checkpoint's weights)
        for src, frozen in sources[1:]:
            s2 = convert(src, frozen, meta, work)[0].state_dict()
            identity.append((src, s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)))
        identical = all(same for _, same in identity)

        rows = []
        ok = identical
        wrapper = ExportWrapper(m_ckpt, image_size=(size, size), postprocess="none")
        for i, label in enumerate(("A (BN calibration input)", "B (not calibrated on)")):
            with torch.no_grad():
                x = wrapper.preprocess(torch.from_numpy(images[i:i + 1]))
                cls, box = m_ckpt(x)
                dets = m_ckpt.detect(x)
            maps = compare_maps(cls, box, {k: v[i:i + 1] for k, v in ref.items() if k.startswith(("cls_", "box_"))})
            rel_cls = max(d.cls_max_abs / d.cls_scale for d in maps)
            rel_box = max(d.box_max_abs / d.box_scale for d in maps)
            input_diff = None
            if "input_normalized" in ref:
                input_diff = float(np.abs(x.permute(0, 2, 3, 1).numpy() - ref["input_normalized"][i:i + 1]).max())
            (det,) = compare_detections(dets, {k: ref[k][i:i + 1] for k in DETECTION_KEYS}, box_tol=args.box_tol)
            rows.append((label, rel_cls, rel_box, input_diff, det))
            ok &= max(rel_cls, rel_box) <= args.rtol and det.unmatched_ref == 0 and det.unmatched_ours == 0

        onnx_rows = []
        if not args.no_onnx:
            ours = onnx_outputs(m_ckpt, ckpt_pt, images, size, work)
            frozen = {k: ref[f"frozen_{k}"] for k in ("num_detections", "image_info", *DETECTION_KEYS)}
            report = compare_detections({k: torch.from_numpy(v) for k, v in ours.items()},
                                        {k: frozen[k] for k in DETECTION_KEYS}, box_tol=args.box_tol)
            for i, det in enumerate(report):
                onnx_rows.append((i, int(ours["num_detections"][i]), int(frozen["num_detections"][i]),
                                  bool(np.array_equal(ours["image_info"][i], frozen["image_info"][i])), det))
                ok &= det.unmatched_ref == 0 and det.unmatched_ours == 0

    family = "SpineNet-Mobile" if meta.get("family") == "mobile" else "SpineNet"
    variant = f"{family}-{meta['model_id']}" + (" (width-reduced)" if meta.get("custom_scaling") else "")
    print(f"\n{variant} @ {size}x{size}, TF {meta.get('tensorflow_version')}, BN statistics from "
          f"{meta.get('calibration_images', 1)} image(s) (input A first)")
    print(f"checkpoint: {ckpt_src}\nfrozen graph: {graph_src}")
    ours_params = sum(t.numel() for t in m_ckpt.parameters())
    print(f"trainable parameters: ours {ours_params:,}, TF1 {meta.get('trainable_params', 0):,} "
          f"({'equal' if ours_params == meta.get('trainable_params') else 'DIFFERENT'})")
    print(f"weights bit-identical to {ckpt_src.name}'s ({len(s1)} tensors):")
    for src, same in identity:
        print(f"  {src.name:28s} {'yes' if same else 'NO'}")
    floor = meta.get("frozen_vs_session_max_relative_map_diff")
    if floor is not None:
        print(f"TF1 against itself (frozen graph vs session), raw maps max |Δ|/max: {floor:.2e}")
    print("\ninput                     max|Δcls|/max  max|Δbox|/max  detections ref/ours/matched  "
          "max|Δbox| px  max|Δscore|  unmatched ref/ours (near-tie skipped)")
    for label, rc, rb, _, d in rows:
        print(f"{label:25s} {rc:13.2e}  {rb:13.2e}  {d.num_ref:8d}/{d.num_ours}/{d.matched:<11d}  "
              f"{d.max_box_diff:12.4f}  {d.max_score_diff:11.2e}  {d.unmatched_ref}/{d.unmatched_ours} "
              f"({d.near_tie_skipped})")
    for label, _, _, input_diff, _ in rows:
        if input_diff is not None:
            print(f"normalised input {label[0]}: max |Δ| vs TF1 {input_diff:.2e}")
    if onnx_rows:
        how = "`spinenet export` of the converted checkpoint" if ckpt_pt else "export_onnx of the mapped model"
        print(f"\nONNX ({how}, ONNX Runtime, uint8 input) vs TF1 frozen graph, five outputs:")
        print("input  NumDetections ours/TF1  ImageInfo equal  matched  max|Δbox| px  max|Δscore|  "
              "unmatched ref/ours (near-tie skipped)")
        for i, n_ours, n_tf, info_eq, d in onnx_rows:
            print(f"{'AB'[i]:5s}  {n_ours:8d}/{n_tf:<13d}  {'yes' if info_eq else 'NO':15s}  {d.matched:7d}  "
                  f"{d.max_box_diff:12.4f}  {d.max_score_diff:11.2e}  {d.unmatched_ref}/{d.unmatched_ours} "
                  f"({d.near_tie_skipped})")
    print(f"\n{'PASS' if ok else 'FAIL'} (rtol {args.rtol:g}, box tol {args.box_tol:g} px; {time.time() - t0:.0f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
