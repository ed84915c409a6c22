"""Where does TF1's float32 training-mode forward lose precision? (issue 14, the ``--full`` recording)

The replay of ``tools/tf1_training_reference.py --full`` found TF's float32 training-mode maps 200x further from
our float64 maps than our float32 maps are. This script settles whether that is a formula difference or
rounding, by running the unmodified reference forward (``RetinanetModel.build_outputs`` in training mode, the
recording's weights and parsed batch) three ways and comparing each with ours:

* ``f32``: as recorded (must reproduce the recording's ``train_*`` maps bit for bit);
* ``f64``: the same graph built on a float64 input (the legacy ``tf.layers`` take the input's dtype, so every
  variable and op is float64): equal to our float64 maps unless a formula differs;
* ``f32m64``: float32, except that each BatchNorm's batch moments (``BatchNormalizationBase._moments``, i.e.
  ``tf.nn.moments``) are computed on the input cast to float64 and rounded once to float32.

Two steps, two interpreters (TensorFlow and torch live in different environments)::

    SPINENET_TF1_TRAINING=DIR PYTHONPATH=src python benchmarks/tf1_forward_precision.py ours --out OUT
    /work/tfenv/bin/python benchmarks/tf1_forward_precision.py tf --tpu_src TPU --recording DIR --out OUT

The ``tf`` step prints the table (max over levels of max|a - b| / max|b|).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LEVELS = [3, 4, 5, 6, 7]
VARIANTS = ("f32", "f64", "f32m64")


def ours(out: Path) -> None:
    """Our training-mode maps (float32 and float64) on the recording named by ``SPINENET_TF1_TRAINING``."""
    import torch

    if not os.environ.get("SPINENET_TF1_TRAINING"):
        sys.exit("ours: set SPINENET_TF1_TRAINING to the recording's folder (tools/tf1_training_reference.py --out)")
    sys.path.insert(0, str(ROOT / "tests" / "engine"))
    import test_tf1_training_parity as t

    meta = t.json.loads((t.FIXTURE / "training.json").read_text())
    with np.load(t.FIXTURE / "training.npz") as z:
        rec = {k: z[k] for k in z.files if k.startswith(("before/", "parsed_image_"))}
    images = torch.from_numpy(np.stack([rec[f"parsed_image_{i}"] for i in range(len(meta["images"]))]))
    maps = {}
    with torch.no_grad():
        # ours32cl: the NHWC batch only permuted (channels-last strides), as the reference's layout would be.
        for name, dtype, layout in (("ours64", torch.float64, torch.contiguous_format),
                                    ("ours32", torch.float32, torch.contiguous_format),
                                    ("ours32cl", torch.float32, torch.channels_last)):
            x = images.permute(0, 3, 1, 2).to(dtype).contiguous(memory_format=layout)
            cls, box = t._model(rec, meta).to(dtype)(x)
            for level in LEVELS:
                maps[f"{name}_cls_{level}"] = cls[level].permute(0, 2, 3, 1).numpy()
                maps[f"{name}_box_{level}"] = box[level].permute(0, 2, 3, 1).numpy()
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "ours.npz", **maps)
    print(f"wrote {out / 'ours.npz'}")


def reference(args: argparse.Namespace) -> dict[str, np.ndarray]:
    """The reference's training-mode forward in each variant, on the recording's weights and batch."""
    sys.path.insert(0, str(ROOT / "tools"))
    import tf1_reference as ref
    import tf1_training_reference as trr

    targs = trr.parse_args(["--full", "--tpu_src", args.tpu_src, "--out", str(args.out)])
    tf = ref.setup_reference_imports(Path(args.tpu_src).resolve())
    targs.custom_scaling = ref.install_custom_scaling(targs)
    params = ref.build_params(targs, training_overrides={
        "model_dir": str(args.out / "model_dir"), "use_tpu": False, "enable_summary": False,
        "train": {"transpose_input": False}, "spinenet": {"init_drop_connect_rate": None}})
    from dataloader import mode_keys
    from tf_keras.src.layers.normalization import batch_normalization as bn

    from modeling import factory

    with np.load(Path(args.recording) / "training.npz") as z:
        rec = {k: z[k] for k in z.files if k.startswith(("before/", "parsed_image_", "train_"))}
    images = np.stack([rec[f"parsed_image_{i}"] for i in range(3)])
    weights = {k[len("before/"):]: v for k, v in rec.items() if k.startswith("before/")}
    maps = {f"rec_{k[len('train_'):]}": v for k, v in rec.items() if k.startswith("train_")}
    real_moments = bn.BatchNormalizationBase._moments

    def moments64(self, inputs, axes, keep_dims, mask=None):
        mean, var = real_moments(self, tf.cast(inputs, tf.float64), axes, keep_dims, mask=mask)
        return tf.cast(mean, inputs.dtype), tf.cast(var, inputs.dtype)

    for variant in VARIANTS:
        t0, dtype = time.time(), np.float64 if variant == "f64" else np.float32
        bn.BatchNormalizationBase._moments = moments64 if variant == "f32m64" else real_moments
        graph = tf.Graph()
        try:
            with graph.as_default():
                tf.train.create_global_step()
                outputs = factory.model_generator(params).build_outputs(
                    tf.constant(images.astype(dtype)), {}, mode_keys.TRAIN)
                fetch = {f"{kind}_{level}": outputs[f"{kind}_outputs"][level]
                         for kind in ("cls", "box") for level in LEVELS}
                with ref.session(tf, graph, args.threads) as sess:
                    sess.run(tf.global_variables_initializer())
                    variables = [v for v in tf.global_variables() if ref.variable_name(v) in weights]
                    ref.assign(tf, sess, {v: weights[ref.variable_name(v)].astype(v.dtype.base_dtype.as_numpy_dtype)
                                          for v in variables})
                    result = sess.run(fetch)
        finally:
            bn.BatchNormalizationBase._moments = real_moments
        if any(v.dtype != dtype for v in result.values()):
            raise RuntimeError(f"{variant}: the graph did not run in {dtype.__name__}")
        print(f"{variant}: {len(variables)} variables loaded, {time.time() - t0:.0f} s", flush=True)
        maps.update({f"{variant}_{k}": v for k, v in result.items()})
    return maps


def rel(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("step", choices=["ours", "tf"])
    p.add_argument("--out", type=Path, required=True, help="scratch folder (ours.npz is shared by the two steps)")
    p.add_argument("--tpu_src", help="tf: local copy of github.com/tensorflow/tpu")
    p.add_argument("--recording", help="tf: the folder tools/tf1_training_reference.py --full wrote")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    if args.step == "ours":
        ours(args.out)
        return
    if not (args.tpu_src and args.recording):
        sys.exit("tf: --tpu_src and --recording are required")
    if not (args.out / "ours.npz").exists():
        sys.exit(f"tf: {args.out / 'ours.npz'} is missing; run the 'ours' step first with the project's venv")
    maps = {**reference(args), **dict(np.load(args.out / "ours.npz"))}
    for a, b in (("f32", "rec"), ("f64", "ours64"), ("ours32", "ours64"), ("rec", "ours64"), ("f32", "f64"),
                 ("f32m64", "ours64"), ("ours32cl", "ours64")):
        worst = [max(rel(maps[f"{a}_{kind}_{lv}"], maps[f"{b}_{kind}_{lv}"]) for lv in LEVELS)
                 for kind in ("cls", "box")]
        print(f"{a:>7s} vs {b:<7s} cls {worst[0]:.2e}  box {worst[1]:.2e}")


if __name__ == "__main__":
    main()
