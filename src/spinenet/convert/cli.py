"""``spinenet convert``: TensorFlow checkpoints -> self-describing spinenet checkpoints."""

from __future__ import annotations

import argparse

SOURCES = ("model-garden", "tpu", "tpu-frozen-graph")

EPILOG = """\
examples:
  spinenet convert --from tpu --checkpoint model.ckpt-231500 --output spinenet49s.pt
  spinenet convert --from tpu --checkpoint spinenet-49S-best.tar.gz --output spinenet49s.pt
  spinenet convert --from tpu-frozen-graph --checkpoint spinenet_tf_310.pb --output spinenet49s.pt
  spinenet convert --from model-garden --checkpoint ckpt/ckpt-1 --output spinenet49s.pt
  spinenet convert --from model-garden --checkpoint ckpt_dir/ --config_file spinenet49S_retinanet.yaml \\
      --params_override "{ architecture: { num_classes: 91 } }" --output model.pt

sources:
  tpu               TF1 Cloud TPU checkpoint (tensorflow/tpu, models/official/detection): the published
                    spinenet-*.tar.gz, its model.ckpt-N prefix, .index file, or a folder holding one
  tpu-frozen-graph  the same model frozen into a GraphDef .pb (e.g. the seed's spinenet_tf_310.pb)
  model-garden      TF2 Model Garden (tf-models-official) tf.train.Checkpoint

No TensorFlow is needed: checkpoints, archives and graphs are read directly. The variant, head size and
class count are read off the weights' shapes; --config_file / --params_override only set what the weights
can't tell (post-processing, training; for TF1 checkpoints also relu vs swish, which a frozen graph shows).
"""


def add_convert_parser(sub) -> None:
    p = sub.add_parser("convert", help="convert a TensorFlow checkpoint into a spinenet checkpoint",
                       description="Convert a TensorFlow SpineNet RetinaNet checkpoint into a self-describing "
                                   "PyTorch checkpoint (weights, variant, resolved config, label map).",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="source", required=True, choices=SOURCES,
                   help="layout of the checkpoint: tpu = TF1 Cloud TPU checkpoint, tpu-frozen-graph = its frozen "
                        ".pb, model-garden = TF2 Model Garden (tf-models-official)")
    p.add_argument("--checkpoint", "--checkpointpath", dest="checkpoint", required=True,
                   help="checkpoint prefix, .index file, folder holding one, .tar.gz (tpu) or .pb "
                        "(tpu-frozen-graph)")
    p.add_argument("--output", required=True, help="where to write the .pt checkpoint")
    p.add_argument("--config_file", default=None,
                   help="reference-format YAML (default: the packaged YAML of the detected variant)")
    p.add_argument("--params_override", default=None,
                   help="YAML/JSON string or file applied over the config (as the reference's flag)")
    p.add_argument("--label_map_file", default=None,
                   help="id:name CSV stored in the checkpoint (default: COCO's 80 classes when num_classes=91)")
    p.add_argument("--model_id", default=None, choices=["49S", "49", "96", "143", "190"],
                   help="force the SpineNet variant instead of detecting it from the weights")
    p.set_defaults(func=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    kwargs = dict(config_file=args.config_file, params_override=args.params_override,
                  label_map_file=args.label_map_file, model_id=args.model_id)
    if args.source == "model-garden":
        from spinenet.convert.model_garden import convert_model_garden

        result = convert_model_garden(args.checkpoint, args.output, **kwargs)
    else:
        from spinenet.convert.tpu import convert_tpu

        result = convert_tpu(args.checkpoint, args.output, frozen_graph=args.source == "tpu-frozen-graph", **kwargs)
    print(result.summary())
    return 0
