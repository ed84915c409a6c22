"""Make a TensorFlow Model Garden SpineNet-Mobile RetinaNet parity fixture.

The sibling of ``tools/model_garden_fixture.py`` for the mobile family: builds Model Garden's
``retinanet_mobile_coco`` experiment (backbone ``spinenet_mobile``: MBConv blocks with squeeze-and-excitation,
separable-convolution head) with the model section of the variant's published YAML (``tools/mobile_variants.py``),
then records exactly as the SpineNet fixture does (``record``: informative weights, BN statistics from a
training-mode pass, calibrated predictors, raw maps, detections, ``ckpt.*``, ``reference.npz``,
``variables.json``). ``variables.json`` also lists the backbone's weighted Keras layers in topological order
(``backbone_layers``: ``layer_with_weights-N``, Keras name, class), which is what the importer's mapping rests on.

Runs only with TensorFlow + tf-models-official, e.g.::

    OMP_NUM_THREADS=1 /work/tfenv/bin/python tools/model_garden_mobile_fixture.py --model_id 49S --output out/
    /work/tfenv/bin/python tools/model_garden_mobile_fixture.py --model_id tiny --num_images 2 \\
        --output tests/fixtures/model_garden_mobile_tiny
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tf_keras  # noqa: E402
from mobile_variants import MOBILE_YAMLS, TINY_SCALING  # noqa: E402
from model_garden_fixture import record, seed_everything  # noqa: E402
from official.core import exp_factory  # noqa: E402
from official.vision.configs import retinanet as _retinanet_cfg  # noqa: E402,F401
from official.vision.modeling import factory  # noqa: E402
from official.vision.modeling.backbones import spinenet_mobile as mg_mobile  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model_id", default="49", choices=list(MOBILE_YAMLS))
    p.add_argument("--image_size", type=int, default=None, help="square input side (default: the YAML's)")
    p.add_argument("--num_classes", type=int, default=None, help="default 91 (tiny: 5)")
    p.add_argument("--num_images", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--params_only", action="store_true", help="only build and count parameters")
    p.add_argument("--time_runs", type=int, default=0, help="also time graph-mode inference (see the SpineNet tool)")
    p.add_argument("--time_batch", type=int, default=1)
    return p.parse_args(argv)


def build_model(args):
    """Model Garden's mobile RetinaNet with the YAML's model section; returns (model, model config, scaling)."""
    if args.model_id == "tiny":
        mg_mobile.SCALING_MAP["tiny"] = dict(TINY_SCALING)
    y = MOBILE_YAMLS[args.model_id]
    cfg = exp_factory.get_exp_config("retinanet_mobile_coco")
    m = cfg.task.model
    m.backbone.spinenet_mobile.model_id = args.model_id
    m.backbone.spinenet_mobile.se_ratio = 0.2
    m.backbone.spinenet_mobile.stochastic_depth_drop_rate = 0.2
    m.backbone.spinenet_mobile.min_level, m.backbone.spinenet_mobile.max_level = 3, 7
    m.head.num_filters, m.head.num_convs, m.head.use_separable_conv = y["head_num_filters"], 4, True
    m.norm_activation.activation = y["activation"]
    m.norm_activation.norm_epsilon, m.norm_activation.norm_momentum = 0.001, 0.99
    m.anchor.anchor_size, m.anchor.num_scales, m.anchor.aspect_ratios = 3.0, 3, [0.5, 1.0, 2.0]
    m.num_classes = args.num_classes
    m.input_size = [args.image_size, args.image_size, 3]
    m.min_level, m.max_level = 3, 7
    spec = tf_keras.layers.InputSpec(shape=[None, args.image_size, args.image_size, 3])
    model = factory.build_retinanet(spec, m, l2_regularizer=None)
    return model, m, dict(mg_mobile.SCALING_MAP[args.model_id])


def main(argv=None):
    args = parse_args(argv)
    y = MOBILE_YAMLS[args.model_id]
    args.image_size = args.image_size or y["input_size"]
    args.num_classes = args.num_classes or (5 if args.model_id == "tiny" else 91)
    args.head_filters, args.head_convs = y["head_num_filters"], 4
    seed_everything(args.seed)
    model, mcfg, scaling = build_model(args)
    meta = {
        "family": "spinenet_mobile",
        "model_id": args.model_id,
        "scaling_map_entry": scaling,
        "scaling_map_injected": args.model_id == "tiny",
        "se_ratio": mcfg.backbone.spinenet_mobile.se_ratio,
        "expand_ratio": mcfg.backbone.spinenet_mobile.expand_ratio,
        "stochastic_depth_drop_rate": mcfg.backbone.spinenet_mobile.stochastic_depth_drop_rate,
        "head_use_separable_conv": mcfg.head.use_separable_conv,
        "yaml": f"coco_spinenet{args.model_id.lower()}_mobile_tpu.yaml" if args.model_id != "tiny" else None,
    }

    def backbone_layers():
        weighted = [l for l in model.backbone.layers if l.weights]
        return {"backbone_layers": [[f"layer_with_weights-{n}", l.name, type(l).__name__]
                                    for n, l in enumerate(weighted)]}

    return record(args, model, mcfg, meta, backbone_layers, label=f"SpineNet-Mobile-{args.model_id}")


if __name__ == "__main__":
    main()
