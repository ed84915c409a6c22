"""Build Google's TF1 Cloud TPU SpineNet RetinaNet (tensorflow/tpu) and record a parity reference.

Runs the reference code itself, unmodified, from a local copy of the ``tensorflow/tpu`` sources
(``--tpu_src``, the folder holding ``models/official/{detection,efficientnet}`` and ``models/hyperparameters``)
under TensorFlow 2.20 with ``tf_keras`` (see ``shared/spec/tf1-checkpoint.md``). Nothing is downloaded.

1. parameters as ``export_saved_model.py`` builds them: ``config_generator('retinanet')``, the variant's YAML
   (``--config_file``, default the packaged ``spinenet<id>_retinanet.yaml``), ``--params_override``,
   ``use_bfloat16: false``;
2. the serving graph: ``serving_input_fn(batch 1, image_tensor)`` (uint8 ``Placeholder``) and
   ``build_predictions`` (outputs ``NumDetections``, ``DetectionBoxes``, ``DetectionClasses``,
   ``DetectionScores``, ``ImageInfo``);
3. informative weights: kernels N(0, 1/fan_in), BN gamma U(0.5, 1.5), beta U(-0.3, 0.3), head biases
   U(-0.1, 0.1); BN moving statistics from the graph's own update ops (a training-mode build of the same
   graph with ``batch_norm_momentum: 0`` and no stochastic depth) run once on input A (with
   ``--calibration_images N``: on a batch of A and N-1 other images, for small inputs whose level-7 maps are
   too small for stable statistics); then the predictor kernels are rescaled so class logits spread around a
   bias near -2.5 (scores pass 0.05, none saturates);
4. writes into ``--out``:

   * ``model.ckpt.{index,data-*}`` + ``checkpoint``: ``tf.compat.v1.train.Saver`` over the serving graph's
     variables (the TF1 inference layout; ``--no_inference_checkpoint`` skips it);
   * ``spinenet_tf_310.pb``: the frozen serving graph (``convert_variables_to_constants``); with
     ``--ref_variables_graph`` also ``spinenet_tf_310_refvars.pb``, the same graph built with TF1 reference
     variables (as TF 1.15, the seed's version, built it);
   * with ``--train_checkpoint folder|tarball``: the repo's own ``RetinanetModel.train`` graph saved with the
     same weights plus ``global_step`` and one (zero) ``/Momentum`` slot per trainable variable, as
     ``train/model.ckpt-<step>`` or packed like the published archives into ``train_checkpoint.tar.gz``;
   * ``reference.npz``: uint8 inputs A and B (``images_uint8``), TF's normalised input (``input_normalized``,
     NHWC; ``--no_normalized_input`` leaves it out), the raw per-level maps ``cls_3..7`` / ``box_3..7`` (NHWC),
     the five serving outputs (``num_detections``, ``detection_boxes``, ``detection_classes``,
     ``detection_scores``, ``image_info``) of the session, and the same five of the frozen graph re-imported
     (``frozen_*``);
   * ``variables.json``: name, shape and dtype of every variable of the serving graph, and metadata
     (parameters, scaling, versions, this command line, TF's own frozen-vs-session map difference).

``--layouts`` only builds the five variants' serving graphs and writes ``layouts.json.gz`` (names and shapes).

``--family mobile`` builds SpineNet-MBConv (``spinenet_mbconv.py``, separable head) instead: ``--model_id`` 49, 49S or
49XS from the repo's ``configs/spinenet/spinenet-mbconv49_retinanet.yaml`` (49S/49XS with Model Garden's head width
and input size, ``tools/mobile_variants.py``); the width flags apply to its SCALING_MAP (no ``--resample_alpha``).

Run with TensorFlow's Python, e.g. (one thread each, the machine is shared)::

    TF_USE_LEGACY_KERAS=1 /work/tfvenv/bin/python tools/tf1_reference.py --tpu_src /work/tpu_src \\
        --model_id 49S --out /work/runs/tf1_49S
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import types
from pathlib import Path
from typing import Any

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # tf.compat.v1.layers needs Keras 2 (tf_keras)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from tf1_values import (  # noqa: E402,F401  (re-exported: the tools built on this module call ref.<name>)
    LEVELS,
    OUTPUT_KEYS,
    OUTPUT_NODES,
    assign,
    calibrate_predictors,
    freeze,
    load_values,
    make_images,
    read_values,
    redraw,
    run_frozen,
    session,
    variable_name,
)

REPO = Path(__file__).resolve().parents[1]
MOBILE_YAML = "spinenet-mbconv49_retinanet.yaml"  # the tpu repo's only SpineNet-MBConv YAML (configs/spinenet/)
# family -> (params section naming the backbone, default --config_file of a --model_id)
FAMILIES = {
    "spinenet": ("spinenet", lambda a: REPO / "src" / "spinenet" / "configs" / f"spinenet{a.model_id}_retinanet.yaml"),
    "mobile": ("spinenet_mbconv", lambda a: Path(a.tpu_src) / "models/official/detection/configs/spinenet"
               / MOBILE_YAML),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--tpu_src", required=True, help="local copy of github.com/tensorflow/tpu (holds models/)")
    p.add_argument("--model_id", default="49S", choices=["49S", "49", "96", "143", "190", "49XS"])
    p.add_argument("--family", default="spinenet", choices=list(FAMILIES),
                   help="spinenet, or mobile: SpineNet-MBConv (spinenet_mbconv.py; --model_id 49, 49S or 49XS)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--config_file", default=None,
                   help="reference YAML (default: src/spinenet/configs/spinenet<model_id>_retinanet.yaml)")
    p.add_argument("--params_override", default="", help="YAML/JSON string applied after --config_file")
    p.add_argument("--image_size", type=int, default=None,
                   help="square serving input side, a multiple of 128 (default: the YAML's output_size)")
    p.add_argument("--num_classes", type=int, default=None, help="architecture.num_classes (default 91)")
    p.add_argument("--head_filters", type=int, default=None, help="retinanet_head.num_filters")
    width = p.add_argument_group("width reduction (a SCALING_MAP entry 'custom' is added in-process; the "
                                 "sources are not modified)")
    width.add_argument("--filter_size_scale", type=float, default=None)
    width.add_argument("--endpoints_num_filters", type=int, default=None)
    width.add_argument("--resample_alpha", type=float, default=None)
    width.add_argument("--block_repeats", type=int, default=None)
    p.add_argument("--calibration_images", type=int, default=1,
                   help="images whose batch statistics become the BN moving statistics: input A plus N-1 others "
                        "(default 1: A alone)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train_checkpoint", choices=["none", "folder", "tarball"], default="none",
                   help="also write a checkpoint of the repo's training graph (global_step, zero Momentum slots): "
                        "folder = train/model.ckpt-<step>, tarball = train_checkpoint.tar.gz (as published)")
    p.add_argument("--train_step", type=int, default=231500, help="global_step of the training checkpoint")
    p.add_argument("--ref_variables_graph", action="store_true",
                   help="also freeze the graph built with TF1 reference variables (spinenet_tf_310_refvars.pb)")
    p.add_argument("--no_inference_checkpoint", action="store_true",
                   help="don't write model.ckpt (e.g. when the training checkpoint holds the same weights)")
    p.add_argument("--no_normalized_input", action="store_true",
                   help="leave input_normalized out of reference.npz (it is as large as the images in float32)")
    p.add_argument("--layouts", action="store_true",
                   help="only write layouts.json.gz: variable names and shapes of all five variants' serving graphs")
    p.add_argument("--threads", type=int, default=1, help="TF intra/inter-op threads (default 1)")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------------------
# Making the reference code importable under TF 2.20 (no source patch).
# ---------------------------------------------------------------------------------------------------------


class _Spec:
    """Stand-in for EstimatorSpec / TPUEstimatorSpec / ServingInputReceiver: keeps its arguments."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def as_estimator_spec(self) -> _Spec:
        return self


def setup_reference_imports(tpu_src: Path):
    """Put the reference folders on sys.path and provide what TF 2.20 lacks; returns ``tf`` (compat.v1)."""
    models = tpu_src / "models"
    detection = models / "official" / "detection"
    for needed in (detection / "serving" / "detection.py", models / "hyperparameters" / "params_dict.py",
                   models / "official" / "efficientnet"):
        if not needed.exists():
            sys.exit(f"--tpu_src {tpu_src}: {needed} is missing; expected a copy of github.com/tensorflow/tpu with "
                     "models/official/detection, models/official/efficientnet and models/hyperparameters")
    sys.path[:0] = [str(detection), str(models), str(models / "official" / "efficientnet")]
    import tensorflow as tf

    # `official` must be the tpu repo's folder, not tf-models-official's package of the same name.
    official = types.ModuleType("official")
    official.__path__ = [str(models / "official")]
    sys.modules["official"] = official
    # tf.compat.v1.estimator was removed in TF 2.16; graph building only needs these names.
    est = types.ModuleType("tensorflow.compat.v1.estimator")
    est.ModeKeys = types.SimpleNamespace(TRAIN="train", EVAL="eval", PREDICT="infer")
    est.EstimatorSpec = _Spec
    est.tpu = types.SimpleNamespace(TPUEstimatorSpec=_Spec)
    est.export = types.SimpleNamespace(ServingInputReceiver=_Spec)
    sys.modules["tensorflow.compat.v1.estimator"] = est
    tf.compat.v1.disable_eager_execution()
    return tf.compat.v1


def build_params(args: argparse.Namespace, *, training_overrides: dict | None = None):
    from configs import factory as config_factory
    from hyperparameters import params_dict

    params = config_factory.config_generator("retinanet")
    params = params_dict.override_params_dict(params, str(args.config_file), is_strict=True)
    if family(args) == "mobile" and args.model_id != "49":  # TF1 ships only mbconv49's YAML
        from mobile_variants import tf1_override

        params = params_dict.override_params_dict(params, tf1_override(args.model_id), is_strict=True)
    params = params_dict.override_params_dict(params, args.params_override, is_strict=False)
    override: dict[str, Any] = {"architecture": {"use_bfloat16": False}}
    if args.num_classes is not None:
        override["architecture"]["num_classes"] = args.num_classes
    if args.head_filters is not None:
        override["retinanet_head"] = {"num_filters": args.head_filters}
    if args.custom_scaling is not None:
        override[FAMILIES[family(args)][0]] = {"model_id": "custom"}
    params.override(override, is_strict=True)
    if training_overrides:
        params.override(training_overrides, is_strict=False)
    params.validate()
    params.lock()
    return params


def install_custom_scaling(args: argparse.Namespace) -> dict | None:
    """A width-reduced SCALING_MAP entry 'custom' derived from --model_id's (None when none is asked for)."""
    module = scaling_module(family(args))
    fields = ("filter_size_scale", "endpoints_num_filters", "resample_alpha", "block_repeats")
    if all(getattr(args, f) is None for f in fields):
        return None
    entry = dict(module.SCALING_MAP[args.model_id])
    if args.resample_alpha is not None and "resample_alpha" not in entry:
        sys.exit(f"--resample_alpha: the {family(args)} family has no resampling width ratio")
    entry.update({f: getattr(args, f) for f in fields if getattr(args, f) is not None})
    module.SCALING_MAP["custom"] = entry
    return entry


def family(args: argparse.Namespace) -> str:
    """--family (tools that reuse this module with their own arguments build SpineNet)."""
    return getattr(args, "family", "spinenet")


def scaling_module(name: str):
    """The reference module holding the family's SCALING_MAP."""
    import importlib

    return importlib.import_module(f"modeling.architecture.{FAMILIES[name][0]}")


# ---------------------------------------------------------------------------------------------------------
# Graphs.
# ---------------------------------------------------------------------------------------------------------


def build_serving_graph(tf, params, size: int, *, ref_variables: bool = False):
    """(graph, placeholder, {name: output tensor}, raw maps {"cls_l"/"box_l": tensor}, normalised input)."""
    from serving import detection
    from tensorflow.python.ops import control_flow_util

    graph = tf.Graph()
    with graph.as_default():
        if ref_variables:
            tf.disable_resource_variables()
        control_flow_util.enable_control_flow_v2()
        receiver = detection.serving_input_fn(batch_size=1, desired_image_size=(size, size),
                                              stride=2 ** params.architecture.max_level, input_type="image_tensor")
        features = receiver.kwargs["features"]
        placeholder = receiver.kwargs["receiver_tensors"]["input"]
        predictions, model_outputs = detection.build_predictions(
            features, params, output_image_info=True, output_normalized_coordinates=False,
            cast_num_detections_to_float=False)
        if ref_variables:
            tf.enable_resource_variables()
    outputs = {k: predictions[k] for k in OUTPUT_KEYS}
    raw = {f"cls_{l}": model_outputs["cls_outputs"][l] for l in LEVELS}
    raw.update({f"box_{l}": model_outputs["box_outputs"][l] for l in LEVELS})
    return graph, placeholder, outputs, raw, features["images"]


def build_calibration_graph(tf, params, size: int, batch: int):
    """The same network in training mode (BN batch statistics + update ops); returns (graph, placeholder)."""
    from dataloader import mode_keys
    from serving import detection
    from tensorflow.python.ops import control_flow_util

    from modeling import factory

    graph = tf.Graph()
    with graph.as_default():
        control_flow_util.enable_control_flow_v2()
        receiver = detection.serving_input_fn(batch_size=batch, desired_image_size=(size, size),
                                              stride=2 ** params.architecture.max_level, input_type="image_tensor")
        features = receiver.kwargs["features"]
        factory.model_generator(params).build_outputs(features["images"], {"image_info": features["image_info"]},
                                                      mode=mode_keys.TRAIN)
    return graph, receiver.kwargs["receiver_tensors"]["input"]


def build_training_graph(tf, params, size: int):
    """The repo's ``RetinanetModel.train`` on zero targets: adds global_step and the Momentum slots."""
    from modeling import factory

    graph = tf.Graph()
    with graph.as_default():
        tf.train.create_global_step()
        images = tf.zeros([1, size, size, 3], tf.float32)
        cls_targets, box_targets = {}, {}
        num_anchors = params.anchor.num_scales * len(params.anchor.aspect_ratios)
        for l in LEVELS:
            s = size // 2**l
            cls_targets[l] = tf.fill([1, s, s, num_anchors], -1)
            box_targets[l] = tf.zeros([1, s, s, num_anchors * 4], tf.float32)
        labels = {"cls_targets": cls_targets, "box_targets": box_targets, "num_positives": tf.ones([1])}
        factory.model_generator(params).train(images, labels)
    return graph


# ---------------------------------------------------------------------------------------------------------
# Main.
# ---------------------------------------------------------------------------------------------------------


def write_layouts(tf, args: argparse.Namespace, path: Path) -> None:
    """Variable names and shapes of all five variants' serving graphs (shapes don't depend on the input size)."""
    import gzip

    layouts = {}
    for model_id in ("49S", "49", "96", "143", "190"):
        vargs = argparse.Namespace(**{**vars(args), "model_id": model_id, "custom_scaling": None,
                                      "num_classes": None, "head_filters": None, "params_override": "",
                                      "config_file": REPO / "src" / "spinenet" / "configs"
                                      / f"spinenet{model_id}_retinanet.yaml"})
        graph = build_serving_graph(tf, build_params(vargs), args.image_size or 256)[0]
        with graph.as_default():
            layouts[model_id] = [[variable_name(v), v.shape.as_list()] for v in tf.global_variables()]
        print(f"SpineNet-{model_id}: {len(layouts[model_id])} variables", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as f:  # gzip's header time is left at its default; content is what matters
        json.dump(layouts, f, separators=(",", ":"))
    print(f"wrote {path}")


def write_tarball(folder: Path, tarball: Path, arcname: str) -> None:
    import tarfile

    with tarfile.open(tarball, "w:gz") as tar:
        for f in sorted(folder.iterdir()):
            tar.add(f, arcname=f"{arcname}/{f.name}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    t0 = time.time()
    tf = setup_reference_imports(Path(args.tpu_src).resolve())
    import tensorflow as tf2

    tf2.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf2.config.threading.set_inter_op_parallelism_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.layouts:
        write_layouts(tf, args, out / "layouts.json.gz")
        return
    section, default_config = FAMILIES[family(args)]
    if args.config_file is None:
        args.config_file = default_config(args)
    args.custom_scaling = install_custom_scaling(args)
    params = build_params(args)
    size = args.image_size or int(params.retinanet_parser.output_size[0])

    meta: dict[str, Any] = {
        "command": " ".join(["tools/tf1_reference.py", *(argv if argv is not None else sys.argv[1:])]),
        "model_id": args.model_id, "custom_scaling": args.custom_scaling is not None, "family": family(args),
        "scaling_map_entry": scaling_module(family(args)).SCALING_MAP[getattr(params, section).model_id],
        "image_size": size, "seed": args.seed,
        "calibration_images": args.calibration_images, "params": params.as_dict(),
        "tensorflow_version": tf2.__version__,
    }

    graph, placeholder, outputs, raw, normalized = build_serving_graph(tf, params, size)
    with graph.as_default():
        variables = tf.global_variables()
        n_trainable = int(sum(np.prod(v.shape.as_list()) for v in tf.trainable_variables()))
    layout = [[variable_name(v), v.shape.as_list(), v.dtype.base_dtype.name] for v in variables]
    meta["num_variables"], meta["trainable_params"] = len(variables), n_trainable
    print(f"{family(args)} {args.model_id}{' (custom scaling)' if args.custom_scaling else ''} RetinaNet @{size}: "
          f"{len(variables)} variables, {n_trainable:,} trainable parameters (built in {time.time() - t0:.0f} s)",
          flush=True)

    rng = np.random.default_rng(args.seed)
    images = make_images(rng, 2, size)  # A (calibration input), B
    feed_a = {placeholder: images[:1]}
    calibration = np.concatenate([images[:1], make_images(rng, args.calibration_images - 1, size)])

    with session(tf, graph, args.threads) as sess:
        with graph.as_default():
            sess.run(tf.global_variables_initializer())
            redraw(tf, sess, rng)
            values = read_values(tf, sess)

        # BN moving statistics: the graph's own update ops, momentum 0, no stochastic depth, on input A.
        calib_params = build_params(args, training_overrides={
            "batch_norm_activation": {"batch_norm_momentum": 0.0},
            FAMILIES[family(args)][0]: {"init_drop_connect_rate": None}})
        cgraph, cplaceholder = build_calibration_graph(tf, calib_params, size, len(calibration))
        with cgraph.as_default(), session(tf, cgraph, args.threads) as csess:
            csess.run(tf.global_variables_initializer())
            load_values(tf, csess, values)
            updates = tf.get_collection(tf.GraphKeys.UPDATE_OPS)
            if not updates:
                sys.exit("the training-mode graph has no BN update ops")
            csess.run(updates, {cplaceholder: calibration})
            stats = {k: v for k, v in read_values(tf, csess).items() if "/moving_" in k}
        del cgraph
        print(f"BN statistics of {len(stats) // 2} layers set by {len(updates)} update ops from input A"
              f"{f' and {len(calibration) - 1} other images' if len(calibration) > 1 else ''} "
              f"({time.time() - t0:.0f} s)", flush=True)
        with graph.as_default():
            load_values(tf, sess, stats, required=False)
            calibrate_predictors(tf, sess, feed_a, raw, rng)
            values = read_values(tf, sess)

            ref: dict[str, np.ndarray] = {"images_uint8": images}
            runs = [sess.run({"outputs": outputs, "raw": raw, "normalized": normalized}, {placeholder: img[None]})
                    for img in images]
            if not args.no_normalized_input:
                ref["input_normalized"] = np.concatenate([r["normalized"] for r in runs])
            for k in OUTPUT_KEYS:
                ref[k] = np.concatenate([r["outputs"][k] for r in runs])
            for k in raw:
                ref[k] = np.concatenate([r["raw"][k] for r in runs])
            print(f"serving outputs recorded ({time.time() - t0:.0f} s)", flush=True)

            if not args.no_inference_checkpoint:
                saver = tf.train.Saver(var_list=variables, save_relative_paths=True)
                meta["checkpoint"] = Path(saver.save(sess, str(out / "model.ckpt"), write_meta_graph=False)).name
            const_names = freeze(tf, sess, graph, out / "spinenet_tf_310.pb")
    meta["frozen_graph_const_names"] = const_names[:8]

    raw_names = {k: t.name for k, t in raw.items()}
    frozen = run_frozen(tf, out / "spinenet_tf_310.pb", images, args.threads, raw_names)
    for k in OUTPUT_KEYS:
        ref[f"frozen_{k}"] = frozen[k]
    # TF against itself: the frozen graph is optimised differently (constants folded), so this is the
    # reference's own numerical noise on this network -- a floor for any other implementation.
    rel = max(float(np.abs(frozen[k] - ref[k]).max() / np.abs(ref[k]).max()) for k in raw_names)
    meta["frozen_vs_session_max_relative_map_diff"] = rel
    same = all(np.array_equal(frozen[k], ref[k]) for k in OUTPUT_KEYS)
    print(f"frozen graph vs session: raw maps max |Δ|/max {rel:.2e}; five outputs identical: {same}")

    if args.ref_variables_graph:
        rgraph, _, _, _, _ = build_serving_graph(tf, params, size, ref_variables=True)
        with rgraph.as_default(), session(tf, rgraph, args.threads) as rsess:
            load_values(tf, rsess, values)
            meta["frozen_refvars_const_names"] = freeze(tf, rsess, rgraph, out / "spinenet_tf_310_refvars.pb")[:8]
        refvars = run_frozen(tf, out / "spinenet_tf_310_refvars.pb", images, args.threads, raw_names)
        same = all(np.array_equal(refvars[k], frozen[k]) for k in OUTPUT_KEYS)
        print(f"reference-variable frozen graph written; outputs identical to the resource-variable one: {same}")

    if args.train_checkpoint != "none":
        meta["train_checkpoint"] = write_training_checkpoint(tf, args, size, values, out)
        print(f"training checkpoint: {meta['train_checkpoint']}", flush=True)

    np.savez_compressed(out / "reference.npz", **ref)
    (out / "variables.json").write_text(json.dumps({"metadata": meta, "variables": layout}, indent=0))
    cls_all = np.concatenate([ref[f"cls_{l}"].ravel() for l in LEVELS])
    print(f"class logits mean {cls_all.mean():.3f} std {cls_all.std():.3f} max {cls_all.max():.3f}; "
          f"num_detections {ref['num_detections'].tolist()}; top scores {ref['detection_scores'][:, 0].tolist()}")
    print(f"wrote {out} in {time.time() - t0:.0f} s")


def write_training_checkpoint(tf, args: argparse.Namespace, size: int, values: dict[str, np.ndarray],
                              out: Path) -> dict[str, Any]:
    """The repo's training graph with ``values`` for the model, ``global_step`` = --train_step and zero
    ``/Momentum`` slots, saved as ``train/model.ckpt-<step>`` (or packed into ``train_checkpoint.tar.gz``)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="tf1_reference_train_") as tmp:
        tparams = build_params(args, training_overrides={
            "model_dir": tmp, "use_tpu": False, "enable_summary": False, "train": {"transpose_input": False}})
        folder = out / "train" if args.train_checkpoint == "folder" else Path(tmp) / "ckpt"
        folder.mkdir(parents=True, exist_ok=True)
        tgraph = build_training_graph(tf, tparams, size)
        with tgraph.as_default(), session(tf, tgraph, args.threads) as tsess:
            tsess.run(tf.global_variables_initializer())
            missing = set(load_values(tf, tsess, values, required=False))
            extra = [v for v in tf.global_variables() if variable_name(v) in missing]
            # Zero slots: the importer must skip them either way, and zeros keep a committed fixture small.
            assign(tf, tsess, {v: np.asarray(args.train_step, v.dtype.base_dtype.as_numpy_dtype)
                               if variable_name(v) == "global_step" else np.zeros(v.shape.as_list(), np.float32)
                               for v in extra})
            prefix = tf.train.Saver(var_list=tf.global_variables(), save_relative_paths=True).save(
                tsess, str(folder / "model.ckpt"), global_step=args.train_step, write_meta_graph=False)
            info: dict[str, Any] = {"num_tensors": len(tf.global_variables()),
                                    "extra": sorted({variable_name(v).rsplit("/", 1)[-1] for v in extra}),
                                    "num_extra": len(extra)}
        if args.train_checkpoint == "tarball":
            arcname = f"spinenet-{args.model_id if args.custom_scaling is None else 'custom'}"
            write_tarball(folder, out / "train_checkpoint.tar.gz", arcname)
            info["path"] = f"train_checkpoint.tar.gz:{arcname}/{Path(prefix).name}"
        else:
            info["path"] = str(Path(prefix).relative_to(out))
    return info


if __name__ == "__main__":
    main()
