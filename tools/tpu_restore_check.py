"""Restore a `spinenet convert --to tpu` checkpoint into Google's unmodified TF1 TPU code and compare outputs.

Two interpreters: this project's (torch) and one with TensorFlow 2.20 + tf_keras (``--tf_python``; see
``shared/spec/tf1-checkpoint.md`` and tools/tf1_reference.py, whose graph builders are reused). Steps:

1. ``spinenet convert --to tpu --checkpoint PT --output WORK/tf1`` (``--optimizer_slots`` with ``--slots``);
2. in TensorFlow (``--tf_side``, run as a subprocess): parameters as the seed's ``freeze_graph.py`` builds them
   (``config_generator('retinanet')``, then the written ``params.yaml`` with ``is_strict=True``), the TPU code's
   serving graph at ``--image_size``; the graph's variables against the checkpoint's (missing / unexpected /
   wrong shape; ``global_step`` and ``/Momentum`` are training state), a strict ``tf.train.Saver`` restore of
   every graph variable, the raw class/box maps and five serving outputs on two uint8 images; then the seed's
   route: the same graph built with TF1 reference variables (as TF 1.15 builds it) written out as a GraphDef
   (binary here: text output is broken in this TF/protobuf pairing) and frozen by TF's own ``freeze_graph``
   tool with the seed's output nodes, and the frozen graph run again; with ``--slots`` also the TPU code's
   training graph (``RetinanetModel.train``: ``global_step`` + ``/Momentum``) checked for missing / unexpected
   variables and restored strictly;
3. back here: our model's raw maps in float64 (TF's float32 input) and detections against TF's.

    PYTHONPATH=src python tools/tpu_restore_check.py --checkpoint demo/shapes49s_fp16.pt --image_size 128 \\
        --tpu_src /work/tpu_src --tf_python /work/tfenv/bin/python --work /tmp/tpu_restore

Exits non-zero on any missing or unexpected variable, a failed restore or freeze, or a raw map that differs by
more than --rtol (default 2.5e-4) of its max |value|.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

TOOLS = Path(__file__).resolve().parent
OUTPUT_NODES = ("NumDetections", "DetectionBoxes", "DetectionClasses", "DetectionScores", "ImageInfo")
DETECTION_KEYS = ("detection_boxes", "detection_scores", "detection_classes")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="spinenet .pt checkpoint to write and check")
    p.add_argument("--tpu_src", required=True, help="local copy of github.com/tensorflow/tpu (holds models/)")
    p.add_argument("--tf_python", default="/work/tfenv/bin/python", help="Python with tensorflow 2.20 + tf_keras")
    p.add_argument("--work", required=True, help="scratch folder (the TF1 checkpoint, frozen graph, outputs)")
    p.add_argument("--image_size", type=int, default=640, help="square serving input, a multiple of 128")
    p.add_argument("--slots", action="store_true", help="write --optimizer_slots and check the training graph too")
    p.add_argument("--rtol", type=float, default=2.5e-4, help="max |Δ| of a raw map relative to its max |value|")
    p.add_argument("--seed", type=int, default=0, help="seed of the two test images")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    p.add_argument("--tf_side", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _reference_module():
    sys.path.insert(0, str(TOOLS))
    import tf1_reference  # noqa: E402  (sets TF_USE_LEGACY_KERAS; imports TensorFlow only when asked)

    return tf1_reference


# ---------------------------------------------------------------------------------------------------------
# TensorFlow side.
# ---------------------------------------------------------------------------------------------------------


def _variables(tf, graph) -> dict[str, list[int]]:
    from tf1_reference import variable_name

    with graph.as_default():
        return {variable_name(v): v.shape.as_list() for v in tf.global_variables()}


def _compare_sets(graph_vars: dict[str, list[int]], ckpt_vars: dict[str, list[int]], training_state_ok: bool):
    missing = sorted(set(graph_vars) - set(ckpt_vars))
    unexpected = sorted(n for n in set(ckpt_vars) - set(graph_vars)
                        if not (training_state_ok and (n == "global_step" or n.endswith("/Momentum"))))
    shapes = sorted(n for n in set(graph_vars) & set(ckpt_vars) if list(ckpt_vars[n]) != list(graph_vars[n]))
    return {"graph_variables": len(graph_vars), "missing": missing, "unexpected": unexpected, "shape_mismatch": shapes}


def tf_side(args: argparse.Namespace) -> None:
    ref = _reference_module()
    tf = ref.setup_reference_imports(Path(args.tpu_src).resolve())
    import tensorflow as tf2
    from configs import factory as config_factory
    from hyperparameters import params_dict
    from tensorflow.python.tools import freeze_graph as tf_freeze_graph

    tf2.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf2.config.threading.set_inter_op_parallelism_threads(args.threads)
    work, t0 = Path(args.work), time.time()
    folder = work / "tf1"
    prefix = tf.train.latest_checkpoint(str(folder))  # through the written `checkpoint` state file
    if prefix is None:
        sys.exit(f"{folder}: tf.train.latest_checkpoint found no checkpoint")
    images = np.load(work / "images.npz")["images_uint8"]
    size = images.shape[1]

    def params_for(training: dict | None = None):
        params = config_factory.config_generator("retinanet")
        params = params_dict.override_params_dict(params, str(folder / "params.yaml"), is_strict=True)
        params.override({"architecture": {"use_bfloat16": False}}, is_strict=True)
        if training:
            params.override(training, is_strict=False)
        params.validate()
        params.lock()
        return params

    params = params_for()
    reader = tf.train.NewCheckpointReader(prefix)
    ckpt_vars = {k: list(v) for k, v in reader.get_variable_to_shape_map().items()}
    report: dict = {"checkpoint": prefix, "tensorflow": tf2.__version__, "checkpoint_tensors": len(ckpt_vars),
                    "global_step": int(reader.get_tensor("global_step"))}

    graph, placeholder, outputs, raw, _ = ref.build_serving_graph(tf, params, size)
    report["serving"] = _compare_sets(_variables(tf, graph), ckpt_vars, training_state_ok=True)
    out: dict[str, np.ndarray] = {}
    with graph.as_default(), ref.session(tf, graph, args.threads) as sess:
        tf.train.Saver(var_list=tf.global_variables()).restore(sess, prefix)  # every graph variable, strictly
        runs = [sess.run({"outputs": outputs, "raw": raw}, {placeholder: img[None]}) for img in images]
    for k in (*outputs, *raw):
        out[k] = np.concatenate([r["outputs" if k in outputs else "raw"][k] for r in runs])
    report["serving"]["restored"] = True
    print(f"[tf] serving graph: {len(_variables(tf, graph))} variables restored, outputs computed "
          f"({time.time() - t0:.0f} s)", flush=True)

    # The seed's route: a TF 1.15-style graph (reference variables), its pbtxt, TF's freeze_graph tool.
    rgraph, _, _, rraw, _ = ref.build_serving_graph(tf, params, size, ref_variables=True)
    with rgraph.as_default():
        tf.train.Saver()
        # Binary, where the seed writes text: tf.train.write_graph(as_text=True) fails under TF 2.20 with the
        # protobuf that tf-models-official 2.20 installs (MessageToString() lost `float_format`); same GraphDef.
        tf.train.write_graph(rgraph.as_graph_def(), str(work), "inference_graph.pb", as_text=False)
    frozen_path = work / "spinenet_tf_310.pb"
    tf_freeze_graph.freeze_graph(str(work / "inference_graph.pb"), "", True, prefix, ",".join(OUTPUT_NODES),
                                 "save/restore_all", "save/Const:0", str(frozen_path), True, "")
    frozen = ref.run_frozen(tf, frozen_path, images, args.threads, {k: t.name for k, t in rraw.items()})
    out.update({f"frozen_{k}": v for k, v in frozen.items()})
    report["frozen"] = {"path": str(frozen_path), "bytes": frozen_path.stat().st_size,
                        "refvars_missing": _compare_sets(_variables(tf, rgraph), ckpt_vars, True)["missing"]}
    print(f"[tf] freeze_graph wrote {frozen_path} ({frozen_path.stat().st_size:,} bytes; {time.time() - t0:.0f} s)",
          flush=True)

    if args.slots:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="tpu_restore_train_") as tmp:
            tparams = params_for({"model_dir": tmp, "use_tpu": False, "enable_summary": False,
                                  "train": {"transpose_input": False}})
            tgraph = ref.build_training_graph(tf, tparams, size)
            report["training"] = _compare_sets(_variables(tf, tgraph), ckpt_vars, training_state_ok=False)
            with tgraph.as_default(), ref.session(tf, tgraph, args.threads) as tsess:
                tf.train.Saver(var_list=tf.global_variables()).restore(tsess, prefix)
                step = int(tsess.run(tf.train.get_global_step()))
            report["training"].update(restored=True, global_step=step)
        print(f"[tf] training graph restored ({time.time() - t0:.0f} s)", flush=True)
    np.savez_compressed(work / "tf_outputs.npz", **out)
    (work / "tf_report.json").write_text(json.dumps(report, indent=1))


# ---------------------------------------------------------------------------------------------------------
# Our side.
# ---------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.tf_side:
        tf_side(args)
        return 0
    if not args.checkpoint:
        sys.exit("--checkpoint is required")
    import torch

    from spinenet.cli import main as spinenet_main
    from spinenet.convert.parity import compare_detections, compare_maps
    from spinenet.deploy.export import ExportWrapper
    from spinenet.engine.checkpoint import checkpoint_config, load_state_dict_strict, read_checkpoint
    from spinenet.modeling.factory import build_retinanet

    torch.set_num_threads(args.threads)
    t0, work, size = time.time(), Path(args.work), args.image_size
    work.mkdir(parents=True, exist_ok=True)
    code = spinenet_main(["convert", "--to", "tpu", "--checkpoint", args.checkpoint, "--output", str(work / "tf1"),
                          "--overwrite"] + (["--optimizer_slots"] if args.slots else []))
    if code:
        return code
    images = _reference_module().make_images(np.random.default_rng(args.seed), 2, size)
    np.savez(work / "images.npz", images_uint8=images)
    cmd = [args.tf_python, __file__, "--tf_side", "--tpu_src", args.tpu_src, "--work", str(work),
           "--threads", str(args.threads)] + (["--slots"] if args.slots else [])
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "PYTHONPATH": ""}
    if subprocess.run(cmd, env=env).returncode:
        print("FAIL: the TensorFlow side failed (restore, freeze or graph building); see its error above")
        return 1
    tf_out = dict(np.load(work / "tf_outputs.npz"))
    report = json.loads((work / "tf_report.json").read_text())

    ckpt = read_checkpoint(args.checkpoint)
    cfg = checkpoint_config(ckpt, args.checkpoint)
    cfg.retinanet_parser.output_size = [size, size]  # anchors for the serving input, as TF's graph builds them
    model = build_retinanet(cfg)
    load_state_dict_strict(model, ckpt["model"], args.checkpoint)
    model.eval()
    wrapper = ExportWrapper(model, image_size=(size, size), postprocess="none")
    model64 = build_retinanet(cfg).double().eval()
    model64.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in model.state_dict().items()})
    rows, ok = [], True
    for i in range(len(images)):
        with torch.no_grad():
            x = wrapper.preprocess(torch.from_numpy(images[i:i + 1]))
            cls, box = model64(x.double())
            dets = model.detect(x)
        for prefix in ("", "frozen_"):
            maps = compare_maps(cls, box, {k[len(prefix):]: v[i:i + 1] for k, v in tf_out.items()
                                           if k.startswith(prefix + "cls_") or k.startswith(prefix + "box_")})
            rel = max(max(d.cls_max_abs / d.cls_scale, d.box_max_abs / d.box_scale) for d in maps)
            (det,) = compare_detections(dets, {k: tf_out[prefix + k][i:i + 1] for k in DETECTION_KEYS})
            rows.append((i, prefix or "session", rel, det))
            ok &= rel <= args.rtol and det.unmatched_ref == 0 and det.unmatched_ours == 0

    print(f"\n{args.checkpoint} -> {report['checkpoint']} ({report['checkpoint_tensors']} tensors, global_step "
          f"{report['global_step']}), TF {report['tensorflow']}, input {size}x{size}")
    for graph in ("serving", "training"):
        if graph in report:
            r = report[graph]
            print(f"{graph} graph: {r['graph_variables']} variables; missing {len(r['missing'])}, unexpected "
                  f"{len(r['unexpected'])}, wrong shape {len(r['shape_mismatch'])}; strict Saver restore: "
                  f"{'ok' if r.get('restored') else 'FAILED'}" + (f" (global_step {r['global_step']})"
                                                                 if "global_step" in r else ""))
            for key in ("missing", "unexpected", "shape_mismatch"):
                if r[key]:
                    print(f"  {key}: {', '.join(r[key][:8])}")
                    ok = False
    print(f"seed route: TF freeze_graph -> {report['frozen']['path']} ({report['frozen']['bytes']:,} bytes)")
    print("\nimage  TF graph  max|Δ|/max (raw maps, ours float64)  detections TF/ours/matched  max|Δbox| px  "
          "max|Δscore|  unmatched TF/ours (near-tie skipped)")
    for i, which, rel, d in rows:
        print(f"{'AB'[i]:5s}  {which:8s}  {rel:34.2e}  {d.num_ref:8d}/{d.num_ours}/{d.matched:<12d}  "
              f"{d.max_box_diff:12.4f}  {d.max_score_diff:11.2e}  {d.unmatched_ref}/{d.unmatched_ours} "
              f"({d.near_tie_skipped})")
    print(f"\n{'PASS' if ok else 'FAIL'} (rtol {args.rtol:g}; {time.time() - t0:.0f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
