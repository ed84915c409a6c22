"""Make a TensorFlow Model Garden SpineNet-RetinaNet parity fixture.

Builds the RetinaNet of TensorFlow Model Garden (`tf-models-official`, experiment
`retinanet_spinenet_coco`) with a SpineNet backbone, redraws every weight so that the
outputs are informative (random init gives constant logits), sets the BatchNorm moving
statistics from one training-mode pass over other images, and writes into ``--output``:

* ``ckpt.index`` + ``ckpt.data-00000-of-00001``: ``tf.train.Checkpoint(model=model)``;
* ``reference.npz``: uint8 images, the normalized float input, raw per-level head outputs
  (``cls_3..7``, ``box_3..7``, NHWC), Model Garden's anchors per level (``anchors_3..7``,
  ``[H, W, A*4]`` yxyx pixels) and the detections of its detection generator
  (``detection_boxes/scores/classes``, ``num_detections``), all from a ``tf.function``
  graph-mode call with ``training=False``;
* ``variables.json``: ``[name, shape, dtype, full_name]`` of every checkpoint entry, the mapping of
  ``model/_backbone/layer_with_weights-N`` to semantic SpineNet layers, and metadata.

Runs only with TensorFlow + tf-models-official (not the ``spinenet`` package), e.g.::

    .venv-tf/bin/python tools/model_garden_fixture.py --model_id 49S --output out/
    .venv-tf/bin/python tools/model_garden_fixture.py --model_id tiny \\
        --image_size 128 --num_images 1 --output tests/fixtures/model_garden_tiny
"""

import argparse
import json
import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402
from official.core import exp_factory  # noqa: E402
from official.vision.configs import retinanet as _retinanet_cfg  # noqa: E402,F401
from official.vision.modeling import factory  # noqa: E402
from official.vision.modeling.backbones import spinenet as mg_spinenet  # noqa: E402
from official.vision.ops import anchor as mg_anchor  # noqa: E402
from official.vision.ops import preprocess_ops  # noqa: E402
from tensorflow.core.protobuf import trackable_object_graph_pb2  # noqa: E402

# Width-reduced SpineNet for a small CI fixture (injected into Model Garden's SCALING_MAP).
TINY_SCALING = {"endpoints_num_filters": 16, "filter_size_scale": 0.0625, "resample_alpha": 0.5, "block_repeats": 1}
HEAD_FILTERS = {"49S": 128, "49": 256, "96": 256, "143": 256, "190": 512, "tiny": 16}
HEAD_CONVS = {"190": 7}  # TF1 YAMLs; 4 otherwise
LEVELS = range(3, 8)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model_id", default="49S", choices=["49S", "49", "96", "143", "190", "tiny"])
    p.add_argument("--image_size", type=int, default=640, help="square input side (multiple of 128)")
    p.add_argument("--num_classes", type=int, default=None, help="default 91 (tiny: 5)")
    p.add_argument("--head_filters", type=int, default=None, help="default from the TF1 YAMLs")
    p.add_argument("--head_convs", type=int, default=None, help="default 4 (190: 7)")
    p.add_argument("--num_images", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--params_only", action="store_true", help="only build and count parameters")
    p.add_argument("--time_runs", type=int, default=0,
                   help="also time graph-mode inference (forward alone, and with decoding + NMS) at --time_batch over "
                        "N runs after 3 warm-ups, into timing.json")
    p.add_argument("--time_batch", type=int, default=1, help="batch size of the --time_runs timing (default 1)")
    return p.parse_args(argv)


def build_model(args):
    """Builds the Model Garden RetinaNet; returns (model, model config, scaling entry, roles)."""
    if args.model_id == "tiny":
        mg_spinenet.SCALING_MAP["tiny"] = dict(TINY_SCALING)
    cfg = exp_factory.get_exp_config("retinanet_spinenet_coco")
    m = cfg.task.model
    m.backbone.spinenet.model_id = args.model_id
    m.head.num_filters = args.head_filters
    m.head.num_convs = args.head_convs
    m.num_classes = args.num_classes
    m.input_size = [args.image_size, args.image_size, 3]
    m.min_level, m.max_level = 3, 7
    m.backbone.spinenet.min_level, m.backbone.spinenet.max_level = 3, 7
    m.anchor.anchor_size = 3.0 if args.model_id in ("49S", "49", "96", "tiny") else 4.0
    m.anchor.num_scales = 3  # aspect_ratios stay Model Garden's [0.5, 1.0, 2.0]
    spec = tf_keras.layers.InputSpec(shape=[None, args.image_size, args.image_size, 3])
    roles = []
    with _RecordBackboneRoles(roles):
        model = factory.build_retinanet(spec, m, l2_regularizer=None)
    return model, m, dict(mg_spinenet.SCALING_MAP[args.model_id]), roles


class _RecordBackboneRoles:
    """Wraps SpineNet's builder methods to record which Keras layer plays which role.

    Each recorded role is (semantic name, layer object); layers are found by walking the
    Keras history of a builder's output tensor back to its input tensor.
    """

    def __init__(self, roles):
        self.roles, self.saved = roles, {}

    @staticmethod
    def _layers_between(out, inp):
        seen, order = set(), []

        def walk(t):
            if t is inp or id(t) in seen:
                return
            seen.add(id(t))
            layer, node_index, _ = t._keras_history
            for parent in layer._inbound_nodes[node_index].keras_inputs:
                walk(parent)
            if layer.weights and layer not in order:
                order.append(layer)

        walk(out)
        return order

    def __enter__(self):
        cls, roles, me = mg_spinenet.SpineNet, self.roles, self
        orig = {k: getattr(cls, k) for k in ("_resample_with_alpha", "_block_group", "_build_stem", "_build_endpoints")}
        self.saved = orig
        resample_count = [0]

        def resample(self_, inputs, **kw):
            x = orig["_resample_with_alpha"](self_, inputs=inputs, **kw)
            ls = me._layers_between(x, inputs)
            names = (
                ["conv1x1", "bn1x1", "conv3x3s2", "bn3x3s2", "conv_out", "bn_out"]
                if len(ls) == 6
                else ["conv1x1", "bn1x1", "conv_out", "bn_out"]
            )
            i, j = divmod(resample_count[0], 2)
            resample_count[0] += 1
            roles.extend((f"block{i}/resample{j}/{n}", l) for n, l in zip(names, ls, strict=True))
            return x

        def block_group(self_, inputs, name="block_group", **kw):
            x = orig["_block_group"](self_, inputs=inputs, name=name, **kw)
            prefix = name if name.startswith("stem") else f"block{int(name.rsplit('_', 1)[1]) - 1}/group"
            roles.extend((f"{prefix}/{r}", l) for r, l in enumerate(me._layers_between(x, inputs)))
            return x

        def stem(self_, inputs):
            out = orig["_build_stem"](self_, inputs=inputs)
            ls = [l for l in me._layers_between(out[0], inputs) if not hasattr(l, "_conv1")]
            roles.extend(zip(["stem/conv", "stem/bn"], ls, strict=True))
            return out

        def endpoints(self_, net):
            out = orig["_build_endpoints"](self_, net=net)
            for lv in sorted(out, key=int):
                ls = me._layers_between(out[lv], net[lv])
                roles.extend(zip([f"endpoint{lv}/conv", f"endpoint{lv}/bn"], ls, strict=True))
            return out

        cls._resample_with_alpha, cls._block_group = resample, block_group
        cls._build_stem, cls._build_endpoints = stem, endpoints
        return self

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            setattr(mg_spinenet.SpineNet, k, v)


def seed_everything(seed):
    tf.random.set_seed(seed)
    tf_keras.utils.set_random_seed(seed)


def make_images(rng, n, size):
    """Smooth, structured uint8 RGB images: low-frequency waves, blobs and rectangles."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    imgs = []
    for _ in range(n):
        img = np.zeros((size, size, 3), np.float32)
        for c in range(3):
            for _ in range(3):
                fy, fx, ph = rng.uniform(0.5, 4, 2).tolist() + [rng.uniform(0, 2 * np.pi)]
                img[..., c] += 40 * np.sin(2 * np.pi * (fy * yy + fx * xx) + ph)
        for _ in range(6):
            cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.03, 0.2)
            img += rng.uniform(-120, 120, 3) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None]
        for _ in range(4):
            y0, x0 = rng.integers(0, size * 3 // 4, 2)
            h, w = rng.integers(size // 10, size // 3, 2)
            img[y0 : y0 + h, x0 : x0 + w] = 0.5 * img[y0 : y0 + h, x0 : x0 + w] + rng.uniform(0, 255, 3)
        img += 128 + rng.normal(0, 4, img.shape)
        imgs.append(np.clip(np.round(img), 0, 255).astype(np.uint8))
    return np.stack(imgs)


def normalize(images_uint8):
    """Model Garden's serving normalization: (x - 255*mean) / (255*std) on 0..255 floats."""
    x = tf.cast(images_uint8, tf.float32)
    return preprocess_ops.normalize_image(x, offset=preprocess_ops.MEAN_RGB, scale=preprocess_ops.STDDEV_RGB)


def redraw_weights(model, rng):
    """Kernels ~ N(0, 1/fan_in), BN gamma ~ U(0.5, 1.5), beta ~ U(-0.3, 0.3), biases small.

    A depthwise kernel ``[kh, kw, C, 1]`` (SpineNet-Mobile's blocks and resamplings, the separable head) sees
    ``kh * kw`` inputs per output; every other kernel (pointwise ones included) ``prod(shape[:-1])``."""
    for v in model.variables:
        name, shape = v.name, v.shape.as_list()
        if name.endswith("kernel:0"):
            fan_in = np.prod(shape[:2]) if name.endswith("depthwise_kernel:0") else np.prod(shape[:-1])
            val = rng.normal(0, 1 / np.sqrt(fan_in), shape)
        elif name.endswith("gamma:0"):
            val = rng.uniform(0.5, 1.5, shape)
        elif name.endswith("beta:0"):
            val = rng.uniform(-0.3, 0.3, shape)
        elif name.endswith("bias:0"):
            val = rng.uniform(-0.1, 0.1, shape)
        else:
            continue  # moving statistics: set by set_bn_statistics
        v.assign(val.astype(np.float32))


def set_bn_statistics(model, images):
    """One training-mode pass with momentum 0 => moving stats = that batch's statistics."""
    # Backbone BNs are BatchNormalization, head BNs SyncBatchNormalization (not a subclass).
    bns = [l for l in model.submodules if hasattr(l, "moving_variance") and hasattr(l, "momentum")]
    drops = [l for l in model.submodules if hasattr(l, "_drop_rate")]
    saved = [b.momentum for b in bns], [d._drop_rate for d in drops]
    for b in bns:
        b.momentum = 0.0
    for d in drops:  # stochastic depth off for the statistics pass
        d._drop_rate = 0.0
    model(images, training=True)
    for b, mom in zip(bns, saved[0], strict=True):
        b.momentum = mom
    for d, rate in zip(drops, saved[1], strict=True):
        d._drop_rate = rate


def calibrate_predictors(model, x, rng):
    """Rescales the predictor kernels so that outputs are informative but never saturate.

    Class logits: spread (logit - bias) scaled to std 0.8 or max |.| 5, whichever is smaller,
    around a bias of about -2.5 (scores stay below sigmoid(2.75), so no ties at 1.0). Box deltas:
    std 0.25 or max |.| 1.5, whichever is smaller.
    """
    head = model.head
    out = model(x, training=False)
    for layer, key, std, peak, bias in (
        (head._classifier, "cls_outputs", 0.8, 5.0, (-2.75, -2.25)),
        (head._box_regressor, "box_outputs", 0.25, 1.5, (-0.05, 0.05)),
    ):
        b_old = layer.bias.numpy()
        z = np.concatenate([(out[key][str(l)].numpy() - b_old).ravel() for l in LEVELS])
        z = z - z.mean()
        kernel = layer.pointwise_kernel if hasattr(layer, "pointwise_kernel") else layer.kernel  # separable head
        kernel.assign(kernel * min(std / (z.std() + 1e-12), peak / (np.abs(z).max() + 1e-12)))
        layer.bias.assign(rng.uniform(*bias, b_old.shape).astype(np.float32))


def count(ws):
    return int(sum(np.prod(w.shape.as_list()) for w in ws))


def main(argv=None):
    args = parse_args(argv)
    args.num_classes = args.num_classes or (5 if args.model_id == "tiny" else 91)
    args.head_filters = args.head_filters or HEAD_FILTERS[args.model_id]
    args.head_convs = args.head_convs or HEAD_CONVS.get(args.model_id, 4)
    seed_everything(args.seed)
    model, mcfg, scaling, roles = build_model(args)
    meta = {
        "model_id": args.model_id,
        "scaling_map_entry": scaling,
        "scaling_map_injected": args.model_id == "tiny",
        "stochastic_depth_drop_rate": mcfg.backbone.spinenet.stochastic_depth_drop_rate,
    }

    def backbone_layer_map():
        # layer_with_weights-N -> semantic role (the pruned level-2 block's layers are absent).
        role_of = {id(l): r for r, l in roles}
        weighted = [l for l in model.backbone.layers if l.weights]
        return {
            "backbone_layer_map": {f"layer_with_weights-{n}": role_of[id(l)] for n, l in enumerate(weighted)},
            "pruned_backbone_layers": sorted(r for r, l in roles if l not in weighted),
        }

    return record(args, model, mcfg, meta, backbone_layer_map, label=f"SpineNet-{args.model_id}")


def record(args, model, mcfg, family_meta, extra_json, label):
    """Everything after building: informative weights, the recording, the checkpoint and ``variables.json``.

    Shared by the SpineNet and the SpineNet-Mobile fixtures (``tools/model_garden_mobile_fixture.py``):
    ``family_meta`` is the variant's part of the metadata, ``extra_json()`` returns further top-level entries of
    ``variables.json`` (called after the weights are final)."""
    out_dir = pathlib.Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)

    size = args.image_size
    images = make_images(rng, args.num_images, size)
    x = normalize(images)
    # BN statistics from the test images plus enough other images that even the 1x1..5x5
    # level-7 maps give stable statistics.
    num_stats = args.num_images + max(4, min(32, (1280 // size) ** 2))
    x_stats = tf.concat([x, normalize(make_images(rng, num_stats - args.num_images, size))], 0)
    model(x[:1], training=False)  # builds the (lazy) head
    params = {
        "total": count(model.trainable_weights),
        "backbone": count(model.backbone.trainable_weights),
        "head": count(model.head.trainable_weights),
        "non_trainable": count(model.non_trainable_weights),
    }
    print(
        f"{label} RetinaNet @{size}: trainable params total {params['total']:,} "
        f"= backbone {params['backbone']:,} + head {params['head']:,}; "
        f"non-trainable (BN moving stats) {params['non_trainable']:,}",
        flush=True,
    )
    if args.params_only:
        return params

    redraw_weights(model, rng)
    set_bn_statistics(model, x_stats)
    calibrate_predictors(model, x, rng)

    image_shape = tf.constant([[size, size]] * args.num_images, tf.float32)

    @tf.function
    def infer(x, image_shape):
        return model(x, image_shape=image_shape, training=False)

    out = infer(x, image_shape)
    if args.time_runs:
        b = args.time_batch  # the first image, repeated: the batch the latency is measured at
        _time_inference(model, tf.repeat(x[:1], b, axis=0), tf.repeat(image_shape[:1], b, axis=0), args.time_runs,
                        out_dir)
    anchors = mg_anchor.Anchor(
        min_level=3,
        max_level=7,
        num_scales=mcfg.anchor.num_scales,
        aspect_ratios=list(mcfg.anchor.aspect_ratios),
        anchor_size=mcfg.anchor.anchor_size,
        image_size=(size, size),
    ).multilevel_boxes
    ref = {"images_uint8": images, "input_normalized": x.numpy(), "image_shape": image_shape.numpy()}
    for l in LEVELS:
        ref[f"cls_{l}"] = out["cls_outputs"][str(l)].numpy()
        ref[f"box_{l}"] = out["box_outputs"][str(l)].numpy()
        ref[f"anchors_{l}"] = anchors[str(l)].numpy()
    for k in ("detection_boxes", "detection_scores", "detection_classes", "num_detections"):
        ref[k] = out[k].numpy()
    np.savez_compressed(out_dir / "reference.npz", **ref)
    cls_all = np.concatenate([ref[f"cls_{l}"].ravel() for l in LEVELS])
    box_all = np.concatenate([ref[f"box_{l}"].ravel() for l in LEVELS])
    print(
        f"class logits mean {cls_all.mean():.3f} std {cls_all.std():.3f}; box deltas std "
        f"{box_all.std():.3f} max|.| {np.abs(box_all).max():.3f}; num_detections "
        f"{ref['num_detections'].tolist()}; top scores {ref['detection_scores'][:, 0].tolist()}"
    )

    prefix = tf.train.Checkpoint(model=model).write(str(out_dir / "ckpt"))
    reader = tf.train.load_checkpoint(prefix)
    dtypes = reader.get_variable_to_dtype_map()
    # Full variable names (``conv2d_5/kernel``) from the checkpoint's object graph: the converter maps by them.
    graph = trackable_object_graph_pb2.TrackableObjectGraph.FromString(
        reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    full_names = {a.checkpoint_key: a.full_name for node in graph.nodes for a in node.attributes}
    variables = [[n, list(s), dtypes[n].name, full_names.get(n, "")] for n, s in tf.train.list_variables(prefix)]

    gen = model.detection_generator.get_config()
    meta = {
        **family_meta,
        "image_size": size,
        "num_images": args.num_images,
        "seed": args.seed,
        "num_classes": args.num_classes,
        "head_num_filters": args.head_filters,
        "head_num_convs": args.head_convs,
        "min_level": 3,
        "max_level": 7,
        "anchor": {
            "num_scales": mcfg.anchor.num_scales,
            "aspect_ratios": list(mcfg.anchor.aspect_ratios),
            "anchor_size": mcfg.anchor.anchor_size,
        },
        "norm_activation": mcfg.norm_activation.as_dict(),
        "detection_generator": {k: v for k, v in gen.items() if k != "tflite_post_processing_config"},
        "trainable_params": params,
        "tensorflow_version": tf.__version__,
        "tf_keras_version": tf_keras.__version__,
        "tf_models_official_version": _dist_version("tf-models-official"),
        "input_normalization": "(float(x_uint8) - 255*mean) / (255*std), mean "
        f"{list(preprocess_ops.MEAN_NORM)}, std {list(preprocess_ops.STDDEV_NORM)}"
        " (preprocess_ops.normalize_image with MEAN_RGB/STDDEV_RGB, as serving)",
        "inference_call": "tf.function(model)(input_normalized, image_shape=[[S, S]]*B, "
        "training=False): anchors from anchor.Anchor(image_size=(S, S)) "
        "inside RetinaNetModel.call; boxes clipped to [0, S]",
        "weights": "redrawn: kernels N(0,1/fan_in), gamma U(0.5,1.5), beta U(-0.3,0.3), "
        "conv biases U(-0.1,0.1); predictor kernels rescaled (cls spread std 0.8 or "
        "max 5, box std 0.25 or max 1.5, whichever smaller), "
        "class bias U(-2.75,-2.25), box bias U(-0.05,0.05) (see calibrate_predictors); "
        "BN moving stats = batch stats of one training-mode pass (stochastic depth "
        f"off) on the {args.num_images} test images + {num_stats - args.num_images} others",
    }
    with open(out_dir / "variables.json", "w") as f:
        json.dump(
            {"metadata": meta, **extra_json(), "variables": variables},
            f,
            indent=1,
        )
    print(f"wrote {out_dir}: ckpt.*, reference.npz, variables.json ({len(variables)} entries)")
    return params


def _time_inference(model, x, image_shape, runs, out_dir):
    """Median graph-mode latency (of ``x``'s batch) of the raw forward and of forward + decoding + NMS."""
    import time

    @tf.function
    def full(x, image_shape):
        return model(x, image_shape=image_shape, training=False)

    @tf.function
    def raw(x):
        feats = model.backbone(x)
        if model.decoder is not None:  # SpineNet RetinaNet has no decoder (identity)
            feats = model.decoder(feats)
        return model.head(feats)

    timing = {}
    for name, fn in (("forward", lambda: raw(x)), ("forward_postprocess", lambda: full(x, image_shape))):
        for _ in range(3):
            tf.nest.map_structure(lambda t: t.numpy(), fn())
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            tf.nest.map_structure(lambda t: t.numpy(), fn())
            times.append((time.perf_counter() - t0) * 1000)
        timing[name] = {"median_ms": float(np.median(times)), "min_ms": float(np.min(times)), "runs": runs,
                        "batch": int(x.shape[0])}
    timing["threads"] = {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                         "inter_op": tf.config.threading.get_inter_op_parallelism_threads()}
    with open(out_dir / "timing.json", "w") as f:
        json.dump(timing, f, indent=1)
    print("timing:", json.dumps(timing))


def _dist_version(name):
    from importlib import metadata

    return metadata.version(name)


if __name__ == "__main__":
    main()
