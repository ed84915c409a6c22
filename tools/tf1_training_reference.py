"""Record one training step of Google's TF1 Cloud TPU SpineNet RetinaNet (tensorflow/tpu) for the CI replay.

Runs the reference code itself, unmodified, as ``tools/tf1_reference.py`` does (same imports, same width
reduction, same informative weights), under TensorFlow 2.20 with ``tf_keras``:

1. the TPU code's training parser (``dataloader.factory.parser_generator(params, TRAIN)``) on synthetic
   COCO-style ``tf.Example`` records (PNG images of odd sizes; boxes normalised as ``create_coco_tf_record.py``
   writes them; one crowd box; one image without boxes). Its random draws are pinned: while the parser graph
   is built, ``tf.random_uniform`` (the only random op the parser uses: the flip coin, the scale, the crop
   offset) returns the recorded constants instead, in the parser's draw order;
2. the TPU code's ``RetinanetModel.train`` (the estimator ``model_fn``'s training branch) on the parsed batch,
   stochastic depth off (``init_drop_connect_rate: null``), with the YAML's optimiser, warm-up learning rate,
   L2 decay and gradient clipping; ``global_step`` 0. The gradients are those ``train_op`` applies (the input of
   ``tf.clip_by_global_norm``, captured), fetched with the losses and maps in the same run as ``train_op`` (BN
   update ops included);
3. a second training graph with ``gradient_clip_norm`` on the other side of the measured global gradient norm
   (a quarter of it when the YAML's clip doesn't bind, four times it when it does), so that one of the two
   steps is clipped and the other isn't;
4. the learning rate of ``learning_rates.learning_rate_generator`` at steps 0, 1, mid warm-up, warm-up end
   and each boundary.

Writes into ``--out``:

* ``training.npz``: ``raw_image_<i>`` (uint8); the parser's ``parsed_{image,image_info,boxes,classes,
  num_positives}_<i>`` and ``parsed_{cls,box}_targets_<level>_<i>``; the training-mode maps ``train_{cls,box}_<l>``
  (NHWC); ``before/<var>`` (weights and BN moving statistics), ``grad/<var>`` (trainable), ``after/<var>`` (after
  the YAML-clipped step, moving statistics included), ``after_clip2/<var>`` and ``grad_clip2/<var>`` (the second
  clip's step and the gradients it applied);
  ``lr_steps`` / ``lr_values``;
* ``training.json``: params, scaling entry, the images' annotations and draws, scalars (losses, learning rate,
  global gradient norm, second clip norm), variable names, TF version and this command line.

Weights: ``tf1_reference.redraw`` (kernels N(0, 1/fan_in), BN gamma/beta, biases), the class-predict bias at the
head's prior -log(99) jittered by U(-0.1, 0.1), BN moving mean U(-0.2, 0.2) and variance U(0.5, 1.5).

Run from the repository root, e.g.::

    OMP_NUM_THREADS=1 /work/tfenv/bin/python tools/tf1_training_reference.py --tpu_src /tmp/tpu-writer/tpu_src \\
        --out tests/fixtures/tf1_training
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tf1_reference as ref  # noqa: E402  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

LEVELS = ref.LEVELS
# Synthetic COCO images: (height, width, [(x, y, w, h) pixels, category, iscrowd], draws).
# draws = (flip coin, scale coin, offset coin y, offset coin x): U[0, 1) values the parser's tf.random_uniform
# calls return in order (flip if > 0.5; scale = min + (max - min) * coin; offset = trunc(max_offset * coin)).
IMAGES: list[dict[str, Any]] = [
    {"height": 97, "width": 141, "draws": [0.73, 0.81, 0.37, 0.61],
     "annotations": [([10.0, 12.5, 40.0, 30.0], 1, 0), ([70.2, 40.0, 55.5, 50.0], 3, 0),
                     ([5.0, 60.0, 20.0, 25.0], 2, 1), ([100.0, 5.0, 12.0, 9.0], 4, 0)]},
    {"height": 150, "width": 111, "draws": [0.21, 0.12, 0.83, 0.44],
     "annotations": [([3.0, 7.0, 90.0, 120.0], 2, 0), ([50.0, 100.0, 30.0, 20.0], 1, 0),
                     ([0.0, 0.0, 6.0, 5.0], 4, 0)]},
    {"height": 131, "width": 131, "draws": [0.94, 0.45, 0.06, 0.91], "annotations": []},
]


TINY = {"image_size": 128, "num_classes": 5, "head_filters": 16, "filter_size_scale": 0.0625,
        "endpoints_num_filters": 16, "block_repeats": 1}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--tpu_src", required=True, help="local copy of github.com/tensorflow/tpu (holds models/)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--model_id", default="49S", choices=["49S", "49", "96", "143", "190"])
    p.add_argument("--full", action="store_true",
                   help="the real variant: no width reduction, 91 classes, the YAML's head and output size (the tiny "
                        "defaults below apply otherwise)")
    p.add_argument("--image_size", type=int, default=None, help="retinanet_parser.output_size (square; tiny: 128)")
    p.add_argument("--num_classes", type=int, default=None, help="tiny: 5")
    p.add_argument("--head_filters", type=int, default=None, help="tiny: 16")
    p.add_argument("--filter_size_scale", type=float, default=None, help="tiny: 0.0625")
    p.add_argument("--endpoints_num_filters", type=int, default=None, help="tiny: 16")
    p.add_argument("--resample_alpha", type=float, default=None)
    p.add_argument("--block_repeats", type=int, default=None, help="tiny: 1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if not args.full:
        for key, value in TINY.items():
            if getattr(args, key) is None:
                setattr(args, key, value)
    args.config_file = ref.REPO / "src" / "spinenet" / "configs" / f"spinenet{args.model_id}_retinanet.yaml"
    args.params_override = ""
    return args


def make_example(tf, image: np.ndarray, spec: dict) -> bytes:
    """A tf.Example as ``create_coco_tf_record.py`` writes it: PNG bytes, boxes normalised by width/height."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    h, w = spec["height"], spec["width"]
    anns = spec["annotations"]
    feats = {"image/encoded": [buf.getvalue()], "image/height": [h], "image/width": [w],
             "image/source_id": [b"0"],
             "image/object/bbox/xmin": [a[0][0] / w for a in anns],
             "image/object/bbox/xmax": [(a[0][0] + a[0][2]) / w for a in anns],
             "image/object/bbox/ymin": [a[0][1] / h for a in anns],
             "image/object/bbox/ymax": [(a[0][1] + a[0][3]) / h for a in anns],
             "image/object/class/label": [a[1] for a in anns],
             "image/object/is_crowd": [a[2] for a in anns],
             "image/object/area": [a[0][2] * a[0][3] for a in anns]}

    def feature(key, v):  # typed by key: an image without boxes has empty lists
        if key in ("image/encoded", "image/source_id"):
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=v))
        if "bbox" in key or key.endswith("area"):
            return tf.train.Feature(float_list=tf.train.FloatList(value=v))
        return tf.train.Feature(int64_list=tf.train.Int64List(value=v))

    return tf.train.Example(features=tf.train.Features(
        feature={k: feature(k, v) for k, v in feats.items()})).SerializeToString()


def run_parser(tf, params, example: bytes, draws: list[float], threads: int) -> dict[str, np.ndarray]:
    """The reference parser on one record, ``tf.random_uniform`` pinned to ``draws`` while its graph is built."""
    from dataloader import anchor, mode_keys
    from dataloader import factory as data_factory

    queue = list(draws)
    real, real_label = tf.random_uniform, anchor.AnchorLabeler.label_anchors
    seen: dict[str, Any] = {}

    def label_anchors(self, gt_boxes, gt_labels):  # records the parser's final boxes and classes
        seen["boxes"], seen["classes"] = gt_boxes, gt_labels[:, 0]
        return real_label(self, gt_boxes, gt_labels)

    def pinned(shape, minval=0, maxval=None, dtype=None, seed=None, name=None):
        """``random_uniform``'s own arithmetic, ``coin * (max - min) + min`` in float32, on a pinned coin."""
        del dtype, seed, name
        n = int(np.prod(shape)) if shape else 1
        if len(queue) < n:
            raise RuntimeError("the parser drew more random numbers than were pinned")
        values, queue[:n] = queue[:n], []
        coin = tf.constant(np.asarray(values, np.float32).reshape(shape))
        lo = tf.constant(minval, tf.float32)
        hi = tf.constant(1.0 if maxval is None else maxval, tf.float32)
        return coin * (hi - lo) + lo

    graph = tf.Graph()
    with graph.as_default():
        tf.random_uniform, anchor.AnchorLabeler.label_anchors = pinned, label_anchors
        try:
            image, labels = data_factory.parser_generator(params, mode_keys.TRAIN)(tf.constant(example))
        finally:
            tf.random_uniform, anchor.AnchorLabeler.label_anchors = real, real_label
        if queue:
            raise RuntimeError(f"the parser drew fewer random numbers than pinned ({len(queue)} left)")
        fetch = {"image": image, "image_info": labels["image_info"], "num_positives": labels["num_positives"],
                 "boxes": seen["boxes"], "classes": seen["classes"]}
        fetch.update({f"cls_targets_{l}": labels["cls_targets"][l] for l in LEVELS})
        fetch.update({f"box_targets_{l}": labels["box_targets"][l] for l in LEVELS})
        with ref.session(tf, graph, threads) as sess:
            return sess.run(fetch)


def build_train(tf, params, batch: dict[str, np.ndarray]):
    """The reference's training graph on constant inputs: (graph, spec, model, gradients, train vars)."""
    from modeling import factory

    graph = tf.Graph()
    with graph.as_default():
        tf.train.create_global_step()
        images = tf.constant(batch["image"])
        labels = {"cls_targets": {l: tf.constant(batch[f"cls_targets_{l}"]) for l in LEVELS},
                  "box_targets": {l: tf.constant(batch[f"box_targets_{l}"]) for l in LEVELS},
                  "num_positives": tf.constant(batch["num_positives"]),
                  "image_info": tf.constant(batch["image_info"])}
        model = factory.model_generator(params)
        build_outputs, seen = model.build_outputs, {}

        def capture(*a, **k):  # the raw training-mode maps, for the loss stage and the forward's float floor
            seen.update(build_outputs(*a, **k))
            return seen

        model.build_outputs = capture
        # The gradients train_op applies: compute_gradients' output, as base_model.train hands it to
        # clip_by_global_norm (fetched in the same run as train_op, so the step is exactly these gradients').
        clip, clipped = tf.clip_by_global_norm, {}

        def capture_clip(t_list, clip_norm, *a, **k):
            clipped["grads"] = list(t_list)
            return clip(t_list, clip_norm, *a, **k)

        tf.clip_by_global_norm = capture_clip
        try:
            spec = model.train(images, labels)
        finally:
            tf.clip_by_global_norm = clip
        if "grads" not in clipped:
            raise RuntimeError("gradient_clip_norm must be > 0: the recorder takes the gradients from the clipping")
        model.outputs = seen
        train_vars = tf.trainable_variables()
    return graph, spec, model, clipped["grads"], train_vars


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    t0 = time.time()
    tf = ref.setup_reference_imports(Path(args.tpu_src).resolve())
    import tensorflow as tf2

    tf2.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf2.config.threading.set_inter_op_parallelism_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    args.custom_scaling = ref.install_custom_scaling(args)
    import tempfile

    tmp = tempfile.mkdtemp(prefix="tf1_training_")
    train_overrides = {"model_dir": tmp, "use_tpu": False, "enable_summary": False,
                       "train": {"transpose_input": False}, "spinenet": {"init_drop_connect_rate": None},
                       **({"retinanet_parser": {"output_size": [args.image_size, args.image_size]}}
                          if args.image_size else {})}
    params = ref.build_params(args, training_overrides=train_overrides)
    from modeling.architecture import spinenet

    rng = np.random.default_rng(args.seed)
    rec: dict[str, np.ndarray] = {}
    parsed = []
    for i, spec in enumerate(IMAGES):
        image = ref.make_images(rng, 1, max(spec["height"], spec["width"]))[0][:spec["height"], :spec["width"]]
        image = np.ascontiguousarray(image)
        rec[f"raw_image_{i}"] = image
        out_i = run_parser(tf, params, make_example(tf, image, spec), spec["draws"], args.threads)
        parsed.append(out_i)
        for k, v in out_i.items():
            rec[f"parsed_{k}_{i}"] = v
        print(f"image {i} {spec['height']}x{spec['width']}: {len(out_i['boxes'])} boxes, "
              f"{out_i['num_positives']:.0f} positives, image_info {out_i['image_info'].tolist()}", flush=True)
    batch = {k: np.stack([p[k] for p in parsed]) for k in parsed[0] if k not in ("boxes", "classes")}

    scalars: dict[str, Any] = {}
    graph, spec, model, grads, train_vars = build_train(tf, params, batch)
    names = [ref.variable_name(v) for v in train_vars]
    with graph.as_default(), ref.session(tf, graph, args.threads) as sess:
        sess.run(tf.global_variables_initializer())
        ref.redraw(tf, sess, rng)
        # The head's own class prior (bias -log((1 - 0.01) / 0.01)), jittered, instead of redraw's U(-0.1, 0.1):
        # the losses and gradients of a network at the start of training.
        bias = [v for v in tf.global_variables() if ref.variable_name(v) == "retinanet/class_net/class-predict/bias"]
        ref.assign(tf, sess, {bias[0]: (-np.log(99.0) + rng.uniform(-0.1, 0.1, bias[0].shape.as_list()))
                              .astype(np.float32)})
        stats = {v: (rng.uniform(-0.2, 0.2, v.shape.as_list()) if v.name.endswith("moving_mean:0")
                     else rng.uniform(0.5, 1.5, v.shape.as_list())).astype(np.float32)
                 for v in tf.global_variables() if "/moving_" in v.name}
        ref.assign(tf, sess, stats)
        before = ref.read_values(tf, sess)
        summ = model._summaries
        fetch = {"total_loss": spec.kwargs["loss"], "cls_loss": summ["cls_loss"], "box_loss": summ["box_loss"],
                 "model_loss": summ["model_loss"], "l2_loss": summ["l2_regularization_loss"],
                 "learning_rate": summ["learning_rate"], "grads": grads,
                 "global_norm": tf.linalg.global_norm(grads),
                 "maps": {f"{kind}_{l}": model.outputs[f"{kind}_outputs"][l]
                          for kind in ("cls", "box") for l in LEVELS}}
        r = sess.run({**fetch, "train_op": spec.kwargs["train_op"]})
        after = ref.read_values(tf, sess)
    scalars.update({k: float(np.asarray(r[k]).reshape(-1)[0]) for k in fetch if k not in ("grads", "maps")})
    rec.update({f"train_{k}": v for k, v in r["maps"].items()})
    print(f"losses: {json.dumps(scalars)} ({time.time() - t0:.0f} s)", flush=True)
    model_names = sorted(k for k in before if k.startswith(("spinenet/", "retinanet/"))
                         and not k.endswith("/Momentum"))
    for k in model_names:
        rec[f"before/{k}"] = before[k]
        rec[f"after/{k}"] = after[k]
    for n, g in zip(names, r["grads"], strict=True):
        rec[f"grad/{n}"] = g

    # The other side of the clipping threshold: a quarter of the measured norm if the YAML's clip doesn't bind,
    # four times the norm if it does.
    binds = scalars["global_norm"] > float(params.train.gradient_clip_norm)
    clip = scalars["global_norm"] * (4.0 if binds else 0.25)
    cparams = ref.build_params(args, training_overrides={**train_overrides, "train": {
        **train_overrides["train"], "gradient_clip_norm": clip}})
    cgraph, cspec, _, cgrads, _ = build_train(tf, cparams, batch)
    with cgraph.as_default(), ref.session(tf, cgraph, args.threads) as csess:
        csess.run(tf.global_variables_initializer())
        ref.load_values(tf, csess, before, required=False)
        cr = csess.run({"grads": cgrads, "train_op": cspec.kwargs["train_op"]})
        clipped = ref.read_values(tf, csess)
    for n, g in zip(names, cr["grads"], strict=True):  # this graph's own gradients (equal up to TF's rounding)
        rec[f"grad_clip2/{n}"] = g
    for k in model_names:
        if not k.rsplit("/", 1)[-1].startswith("moving_"):
            rec[f"after_clip2/{k}"] = clipped[k]
    scalars["second_clip_norm"] = clip

    # Learning rate schedule.
    from modeling import learning_rates

    lr_cfg = params.train.learning_rate
    steps = sorted({0, 1, lr_cfg.warmup_steps // 2, lr_cfg.warmup_steps - 1, lr_cfg.warmup_steps,
                    *[s - 1 for s in lr_cfg.learning_rate_steps], *lr_cfg.learning_rate_steps,
                    params.train.total_steps - 1})
    lgraph = tf.Graph()
    with lgraph.as_default():
        step_ph = tf.placeholder(tf.int64, [])
        lr_t = learning_rates.learning_rate_generator(lr_cfg, params.train.total_steps)(step_ph)
        with ref.session(tf, lgraph, args.threads) as lsess:
            lrs = [float(lsess.run(lr_t, {step_ph: s})) for s in steps]
    rec["lr_steps"] = np.asarray(steps, np.int64)
    rec["lr_values"] = np.asarray(lrs, np.float32)

    meta = {
        "command": " ".join(["tools/tf1_training_reference.py", *(argv if argv is not None else sys.argv[1:])]),
        "model_id": args.model_id, "scaling_map_entry": spinenet.SCALING_MAP[params.spinenet.model_id],
        "image_size": int(params.retinanet_parser.output_size[0]), "seed": args.seed, "params": params.as_dict(),
        "images": IMAGES,
        "scalars": scalars, "trainable": names, "model_variables": model_names,
        "tensorflow_version": tf2.__version__,
    }
    np.savez_compressed(out / "training.npz", **rec)
    (out / "training.json").write_text(json.dumps(meta, indent=0, default=str))
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"clip {clip:.4g}; lr {dict(zip(steps, lrs, strict=True))}")
    print(f"wrote {out} ({size / 1e6:.2f} MB) in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
