"""Record the per-block stochastic-depth (drop connect) rates that the reference codes actually apply.

``--source tf1``: Google's TF1 code (tensorflow/tpu, ``--tpu_src``), imported as ``tools/tf1_reference.py`` does;
each variant's backbone (``spinenet_builder``, the YAML's ``init_drop_connect_rate``) is built in training mode on
a 2x128x128x3 input while ``nn_ops.drop_connect`` records the rate of every call that applies one, with the
variable scope of the block it sits in.

``--source model_garden``: ``tf-models-official``'s ``SpineNet`` (``backbones.spinenet``), built eagerly with
``init_stochastic_depth_rate`` = the same rates; ``nn_layers.StochasticDepth`` records each layer it creates.

Each writes ``<out>/drop_rates_<source>.json``: ``{model_id: {"init_rate": r, "rates": [rate per block, in
creation order]}}``. Run from the repository root with TensorFlow's Python::

    OMP_NUM_THREADS=1 /work/tfenv/bin/python tools/drop_rate_reference.py --source tf1 \\
        --tpu_src /tmp/tpu-writer/tpu_src --out tests/fixtures/tf1_training
    OMP_NUM_THREADS=1 /work/tfenv/bin/python tools/drop_rate_reference.py --source model_garden \\
        --out tests/fixtures/tf1_training
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("49S", "49", "96", "143", "190")


def yaml_rate(model_id: str) -> float:
    """``spinenet.init_drop_connect_rate`` of the packaged reference YAML."""
    import yaml

    cfg = yaml.safe_load((REPO / "src" / "spinenet" / "configs" / f"spinenet{model_id}_retinanet.yaml").read_text())
    return float(cfg["spinenet"]["init_drop_connect_rate"])


def record_tf1(tpu_src: Path) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import tf1_reference as ref

    tf = ref.setup_reference_imports(tpu_src)
    from modeling.architecture import nn_ops, spinenet

    out = {}
    for model_id in VARIANTS:
        rate, calls = yaml_rate(model_id), []
        real = nn_ops.drop_connect

        def record(inputs, is_training, drop_connect_rate, _calls=calls, _real=real):
            if is_training and drop_connect_rate:
                _calls.append([tf.get_variable_scope().name, float(drop_connect_rate)])
            return _real(inputs, is_training, drop_connect_rate)

        nn_ops.drop_connect = record
        try:
            with tf.Graph().as_default():
                net = spinenet.spinenet_builder(model_id, init_drop_connect_rate=rate)
                net(tf.placeholder(tf.float32, [2, 128, 128, 3]), is_training=True)
        finally:
            nn_ops.drop_connect = real
        out[model_id] = {"init_rate": rate, "rates": [c[1] for c in calls], "scopes": [c[0] for c in calls]}
        print(f"TF1 SpineNet-{model_id}: {len(calls)} blocks with drop connect", flush=True)
    return out


def record_model_garden() -> dict:
    import tensorflow as tf
    from official.vision.modeling.backbones import spinenet
    from official.vision.modeling.layers import nn_layers

    out = {}
    for model_id in VARIANTS:
        rate, rates = yaml_rate(model_id), []
        real = nn_layers.StochasticDepth.__init__

        def record(self, stochastic_depth_drop_rate, *a, _rates=rates, _real=real, **k):
            _rates.append(float(stochastic_depth_drop_rate))
            _real(self, stochastic_depth_drop_rate, *a, **k)

        nn_layers.StochasticDepth.__init__ = record
        try:
            sc = spinenet.SCALING_MAP[model_id]
            spinenet.SpineNet(input_specs=tf.keras.layers.InputSpec(shape=[None, 128, 128, 3]),
                              endpoints_num_filters=sc["endpoints_num_filters"],
                              resample_alpha=sc["resample_alpha"], block_repeats=sc["block_repeats"],
                              filter_size_scale=sc["filter_size_scale"], init_stochastic_depth_rate=rate)
        finally:
            nn_layers.StochasticDepth.__init__ = real
        out[model_id] = {"init_rate": rate, "rates": rates}
        print(f"Model Garden SpineNet-{model_id}: {len(rates)} StochasticDepth layers", flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--source", required=True, choices=["tf1", "model_garden"])
    p.add_argument("--tpu_src", help="local copy of github.com/tensorflow/tpu (for --source tf1)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    if args.source == "tf1":
        if not args.tpu_src:
            sys.exit("--source tf1 needs --tpu_src (a copy of github.com/tensorflow/tpu)")
        data = record_tf1(Path(args.tpu_src).resolve())
    else:
        data = record_model_garden()
    import tensorflow as tf

    data = {"source": args.source, "tensorflow_version": tf.__version__,
            "command": " ".join(["tools/drop_rate_reference.py", *(argv if argv is not None else sys.argv[1:])]),
            "variants": data}
    path = Path(args.out) / f"drop_rates_{args.source}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
