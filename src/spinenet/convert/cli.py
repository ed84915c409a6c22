"""``spinenet convert``: TensorFlow checkpoints -> self-describing spinenet checkpoints, and back to TF1 TPU."""

from __future__ import annotations

import argparse

SOURCES = ("model-garden", "tpu", "tpu-frozen-graph")
TARGETS = ("tpu",)

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

SpineNet-Mobile checkpoints (TF1 spinenet_mbconv, Model Garden spinenet_mobile: 49, 49S, 49XS) convert with the
same commands; the family and variant are read off the weights.

No TensorFlow is needed: checkpoints, archives and graphs are read directly. The variant, head size and
class count are read off the weights' shapes; --config_file / --params_override only set what the weights
can't tell (post-processing, training; for TF1 checkpoints also relu vs swish, which a frozen graph shows).

back to TensorFlow (no TensorFlow needed either):
  spinenet convert --to tpu --checkpoint model.pt --output tf1_ckpt/ [--step N] [--optimizer_slots] [--overwrite]
      writes tf1_ckpt/model.ckpt-N.{index,data-00000-of-00001}, checkpoint and params.yaml: a TF1 Saver checkpoint
      with the tensorflow/tpu code's variable names and layouts plus global_step, for the seed's route:
        python freeze_graph.py --model=retinanet --config_file=tf1_ckpt/params.yaml \\
            --checkpointpath=tf1_ckpt/model.ckpt-N --output=tf1_ckpt
        atc --model=tf1_ckpt/spinenet_tf_310.pb --framework=3 ...
      params.yaml holds the network's settings (variant, classes, activation, head, anchors): use it, not the
      stock YAML. --optimizer_slots adds zero /Momentum slots, needed only to resume training with the TPU code.
      Refused: model_garden-convention models, and a folder already holding a checkpoint (unless --overwrite).
"""


def add_convert_parser(sub) -> None:
    p = sub.add_parser("convert", help="convert a TensorFlow checkpoint into a spinenet checkpoint, or back",
                       description="Convert a TensorFlow SpineNet RetinaNet checkpoint into a self-describing "
                                   "PyTorch checkpoint (weights, variant, resolved config, label map), or (--to tpu) "
                                   "a spinenet checkpoint into a TF1 Cloud TPU checkpoint.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    direction = p.add_mutually_exclusive_group(required=True)
    direction.add_argument("--from", dest="source", choices=SOURCES,
                           help="layout of the checkpoint: tpu = TF1 Cloud TPU checkpoint, tpu-frozen-graph = its "
                                "frozen .pb, model-garden = TF2 Model Garden (tf-models-official)")
    direction.add_argument("--to", dest="target", choices=TARGETS,
                           help="write a spinenet .pt checkpoint as: tpu = TF1 Cloud TPU Saver checkpoint (folder)")
    p.add_argument("--checkpoint", "--checkpointpath", dest="checkpoint", required=True,
                   help="checkpoint prefix, .index file, folder holding one, .tar.gz (tpu) or .pb "
                        "(tpu-frozen-graph); with --to: the spinenet .pt checkpoint")
    p.add_argument("--output", required=True,
                   help="where to write the .pt checkpoint (with --to tpu: the output folder)")
    p.add_argument("--config_file", default=None,
                   help="reference-format YAML (default: the packaged YAML of the detected variant)")
    p.add_argument("--params_override", default=None,
                   help="YAML/JSON string or file applied over the config (as the reference's flag)")
    p.add_argument("--label_map_file", default=None,
                   help="id:name CSV stored in the checkpoint (default: COCO's 80 classes when num_classes=91)")
    p.add_argument("--model_id", default=None, choices=["49S", "49", "96", "143", "190", "49XS"],
                   help="force the SpineNet variant instead of detecting it from the weights (for a SpineNet-Mobile "
                        "checkpoint: 49, 49S or 49XS)")
    to = p.add_argument_group("--to tpu")
    to.add_argument("--step", type=int, default=None,
                    help="global_step, also the checkpoint's name (default: the training step stored in the .pt, "
                         "else 0)")
    to.add_argument("--optimizer_slots", action="store_true",
                    help="also write a zero /Momentum slot per trainable variable (to resume training with the "
                         "TPU code; inference and freeze_graph.py don't need them)")
    to.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in --output")
    p.set_defaults(func=run_convert)


def run_convert(args: argparse.Namespace) -> int:
    if args.target is not None:
        from spinenet.convert.tpu_writer import export_tpu

        given = [f"--{k}" for k in ("config_file", "params_override", "label_map_file", "model_id")
                 if getattr(args, k) is not None]
        if given:
            raise ValueError(f"{', '.join(given)}: only for --from; --to tpu takes the model and its config from "
                             "the .pt checkpoint")
        print(export_tpu(args.checkpoint, args.output, step=args.step, optimizer_slots=args.optimizer_slots,
                         overwrite=args.overwrite).summary())
        return 0
    given = [f"--{k}" for k in ("step", "optimizer_slots", "overwrite") if getattr(args, k) not in (None, False)]
    if given:
        raise ValueError(f"{', '.join(given)}: only for --to tpu")
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
