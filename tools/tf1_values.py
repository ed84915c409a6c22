"""Values of a TF1 reference graph: the test images, informative weights, BN calibration helpers, freezing and
running a frozen graph. Split out of ``tools/tf1_reference.py`` (which re-exports every name here, so the tools
built on it keep calling ``ref.make_images``, ``ref.assign`` …). TensorFlow is passed in (``tf``: compat.v1).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

OUTPUT_NODES = ("NumDetections", "DetectionBoxes", "DetectionClasses", "DetectionScores", "ImageInfo")
OUTPUT_KEYS = ("num_detections", "detection_boxes", "detection_classes", "detection_scores", "image_info")
LEVELS = range(3, 8)




def make_images(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Smooth structured uint8 RGB images (waves, blobs, rectangles, mild noise): (n, size, size, 3)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    out = []
    for _ in range(n):
        img = np.zeros((size, size, 3), np.float32)
        for c in range(3):
            for _ in range(3):
                fy, fx = rng.uniform(0.5, 4, 2)
                img[..., c] += 40 * np.sin(2 * np.pi * (fy * yy + fx * xx) + rng.uniform(0, 2 * np.pi))
        for _ in range(6):
            cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.03, 0.2)
            img += rng.uniform(-120, 120, 3) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None]
        for _ in range(4):
            y0, x0 = rng.integers(0, size * 3 // 4, 2)
            h, w = rng.integers(size // 10, size // 3, 2)
            img[y0:y0 + h, x0:x0 + w] = 0.5 * img[y0:y0 + h, x0:x0 + w] + rng.uniform(0, 255, 3)
        img += 128 + rng.normal(0, 4, img.shape)
        out.append(np.clip(np.round(img), 0, 255).astype(np.uint8))
    return np.stack(out) if out else np.zeros((0, size, size, 3), np.uint8)


def variable_name(v) -> str:
    return v.name[:-2] if v.name.endswith(":0") else v.name


_ASSIGN_OPS: dict[int, dict] = {}  # id(graph) -> {variable name: (placeholder, assign op)}


def assign(tf, sess, values: dict) -> None:
    """Assign {variable: value} in one run (one ``Variable.load`` per variable costs a graph optimisation each)."""
    graph = sess.graph
    cache = _ASSIGN_OPS.setdefault(id(graph), {})
    feed, ops = {}, []
    for v, value in values.items():
        if v.name not in cache:
            with graph.as_default():
                ph = tf.placeholder(v.dtype.base_dtype, v.shape)
                cache[v.name] = (ph, tf.assign(v, ph))
        ph, op = cache[v.name]
        feed[ph] = value
        ops.append(op)
    if ops:
        sess.run(ops, feed)


def redraw(tf, sess, rng: np.random.Generator) -> None:
    """Informative values for every trainable variable (moving statistics are set by calibration)."""
    new = {}
    for v in sorted(tf.global_variables(), key=variable_name):
        name, shape = variable_name(v), v.shape.as_list()
        leaf = name.rsplit("/", 1)[-1]
        if leaf in ("kernel", "pointwise_kernel"):
            value = rng.normal(0, 1 / np.sqrt(np.prod(shape[:-1])), shape)
        elif leaf == "depthwise_kernel":  # [kh, kw, C, 1]: kh * kw inputs per output (mobile blocks, separable head)
            value = rng.normal(0, 1 / np.sqrt(np.prod(shape[:2])), shape)
        elif leaf == "gamma":
            value = rng.uniform(0.5, 1.5, shape)
        elif leaf == "beta":
            value = rng.uniform(-0.3, 0.3, shape)
        elif leaf == "bias":
            value = rng.uniform(-0.1, 0.1, shape)
        else:
            continue
        new[v] = value.astype(np.float32)
    assign(tf, sess, new)


def read_values(tf, sess) -> dict[str, np.ndarray]:
    variables = tf.global_variables()
    return dict(zip([variable_name(v) for v in variables], sess.run(variables), strict=True))


def load_values(tf, sess, values: dict[str, np.ndarray], *, required: bool = True) -> list[str]:
    """Assign ``values`` by name; returns the names of this graph's variables that had none."""
    missing, new = [], {}
    for v in tf.global_variables():
        name = variable_name(v)
        if name in values:
            new[v] = values[name]
        elif required:
            raise KeyError(f"no value for {name}")
        else:
            missing.append(name)
    assign(tf, sess, new)
    return missing


def calibrate_predictors(tf, sess, feed, raw: dict, rng: np.random.Generator) -> None:
    """Rescale predictor kernels: class logits (minus bias) spread with std 0.8 or max |.| 5, whichever is
    smaller, around a bias U(-2.75, -2.25); box deltas std 0.25 or max |.| 1.5, bias U(-0.05, 0.05)."""
    variables = {variable_name(v): v for v in tf.global_variables()}
    maps = sess.run(raw, feed)
    for net, key, std, peak, bias_range in (("class_net/class-predict", "cls", 0.8, 5.0, (-2.75, -2.25)),
                                            ("box_net/box-predict", "box", 0.25, 1.5, (-0.05, 0.05))):
        kernel = variables.get(f"retinanet/{net}/kernel", variables.get(f"retinanet/{net}/pointwise_kernel"))
        bias = variables[f"retinanet/{net}/bias"]
        b_old = sess.run(bias)
        z = np.concatenate([(maps[f"{key}_{l}"] - b_old).ravel() for l in LEVELS])
        z = z - z.mean()
        scale = min(std / (z.std() + 1e-12), peak / (np.abs(z).max() + 1e-12))
        assign(tf, sess, {kernel: sess.run(kernel) * np.float32(scale),
                          bias: rng.uniform(*bias_range, b_old.shape).astype(np.float32)})


def session(tf, graph, threads: int):
    config = tf.ConfigProto(intra_op_parallelism_threads=threads, inter_op_parallelism_threads=threads)
    return tf.Session(graph=graph, config=config)


def freeze(tf, sess, graph, path: Path) -> list[str]:
    """Write the frozen serving graph; returns the names of its Const nodes that hold variables' values."""
    with graph.as_default():
        frozen = tf.graph_util.convert_variables_to_constants(sess, graph.as_graph_def(), list(OUTPUT_NODES))
    path.write_bytes(frozen.SerializeToString())
    var_names = {variable_name(v) for v in graph.get_collection("variables")}
    return sorted(n.name for n in frozen.node if n.op == "Const" and any(
        n.name == v or n.name.startswith(v + "/") for v in var_names))


def run_frozen(tf, path: Path, images: np.ndarray, threads: int, raw_names: dict[str, str]) -> dict[str, np.ndarray]:
    """The frozen graph's five outputs and raw maps (by tensor name) for each image, batched."""
    graph_def = tf.GraphDef.FromString(path.read_bytes())
    graph = tf.Graph()
    with graph.as_default():
        tf.import_graph_def(graph_def, name="")
    fetch = {k: f"{n}:0" for k, n in zip(OUTPUT_KEYS, OUTPUT_NODES, strict=True)}
    fetch.update(raw_names)
    with session(tf, graph, threads) as sess:
        runs = [sess.run(fetch, {"Placeholder:0": img[None]}) for img in images]
    return {k: np.concatenate([r[k] for r in runs]) for k in fetch}
