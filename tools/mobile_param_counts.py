"""Count the parameters of SpineNet-Mobile RetinaNet (49, 49S, 49XS) as each reference's own code builds it.

``--reference model_garden``: tf-models-official's ``retinanet_mobile_coco`` experiment with each YAML's model
settings (``coco_spinenet{49,49s,49xs}_mobile_tpu.yaml``: model_id, head num_filters, input size, activation),
built by ``official.vision.modeling.factory.build_retinanet`` with an L2 regularizer so the number of regularized
kernels (``len(model.losses)``) is counted too.

``--reference tpu``: the TF1 code (``tensorflow/tpu`` at ``--tpu_src``): ``configs/spinenet/
spinenet-mbconv49_retinanet.yaml`` with ``spinenet_mbconv.model_id`` and ``retinanet_head.num_filters`` set per
variant (TF1 ships only the 49 YAML), backbone + RetinaNet head built in a graph on a 1 x S x S x 3 placeholder;
trainable variables counted, and those the TF1 trainer regularizes (``regularization_variable_regex``).

Prints one JSON object; ``benchmarks/RESULTS.md`` and ``tests/modeling/test_mobile_param_counts.py`` hold the
numbers. Runs only in the TensorFlow venv, e.g.::

    /work/tfenv/bin/python tools/mobile_param_counts.py --reference model_garden
    /work/tfenv/bin/python tools/mobile_param_counts.py --reference tpu --tpu_src /tmp/tpu-writer/tpu_src
"""

import argparse
import json
import os
import re
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Per variant: (YAML model_id, head num_filters = endpoints_num_filters, input size, Model Garden activation).
VARIANTS = {"49": ("49", 48, 384, "hard_swish"), "49S": ("49S", 40, 384, "hard_swish"),
            "49XS": ("49XS", 24, 256, "swish")}


def count_model_garden() -> dict:
    import numpy as np
    import tf_keras
    from official.core import exp_factory
    from official.vision.configs import retinanet as _retinanet_cfg  # noqa: F401  (registers the experiments)
    from official.vision.modeling import factory

    out = {}
    for name, (model_id, filters, size, activation) in VARIANTS.items():
        cfg = exp_factory.get_exp_config("retinanet_mobile_coco")
        m = cfg.task.model
        m.backbone.spinenet_mobile.model_id = model_id
        m.head.num_filters = filters
        m.input_size = [size, size, 3]
        m.norm_activation.activation = activation
        m.anchor.aspect_ratios = [0.5, 1.0, 2.0]
        spec = tf_keras.layers.InputSpec(shape=[None, size, size, 3])
        model = factory.build_retinanet(spec, m, l2_regularizer=tf_keras.regularizers.l2(1.5e-5))
        model(np.zeros([1, size, size, 3], np.float32), training=True)  # the head builds its variables lazily
        trainable = int(sum(np.prod(v.shape) for v in model.trainable_variables))
        backbone = int(sum(np.prod(v.shape) for v in model.backbone.trainable_variables))
        out[name] = {"trainable": trainable, "backbone": backbone, "head": trainable - backbone,
                     "num_classes": m.num_classes, "regularized_kernels": len(model.losses)}
    return out


def count_tpu(tpu_src: Path) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from tf1_reference import setup_reference_imports

    tf = setup_reference_imports(tpu_src)
    from configs import factory as config_factory
    from hyperparameters import params_dict
    from modeling.architecture import factory

    yaml = tpu_src / "models/official/detection/configs/spinenet/spinenet-mbconv49_retinanet.yaml"
    out = {}
    for name, (model_id, filters, size, _) in VARIANTS.items():
        params = config_factory.config_generator("retinanet")
        params = params_dict.override_params_dict(params, str(yaml), is_strict=True)
        params.override({"architecture": {"use_bfloat16": False}, "spinenet_mbconv": {"model_id": model_id},
                         "retinanet_head": {"num_filters": filters}}, is_strict=True)
        graph = tf.Graph()
        with graph.as_default():
            images = tf.placeholder(tf.float32, [1, size, size, 3])
            feats = factory.backbone_generator(params)(images, is_training=True)
            factory.retinanet_head_generator(params)(feats, is_training=True)
            variables = tf.trainable_variables()
            backbone = [v for v in variables if v.name.startswith("spinenet_mbconv/")]
            regex = re.compile(params.train.regularization_variable_regex)
            trainable = int(sum(v.shape.num_elements() for v in variables))
            out[name] = {"trainable": trainable,
                         "backbone": int(sum(v.shape.num_elements() for v in backbone)),
                         "head": trainable - int(sum(v.shape.num_elements() for v in backbone)),
                         "num_classes": params.architecture.num_classes,
                         "regularized_kernels": sum(1 for v in variables if regex.match(v.name))}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", required=True, choices=["model_garden", "tpu"])
    p.add_argument("--tpu_src", type=Path, default=Path("/tmp/tpu-writer/tpu_src"),
                   help="a copy of github.com/tensorflow/tpu (for --reference tpu)")
    args = p.parse_args(argv)
    result = count_model_garden() if args.reference == "model_garden" else count_tpu(args.tpu_src)
    print(json.dumps({"reference": args.reference, "counts": result}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
