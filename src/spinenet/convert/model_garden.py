"""Import a TF Model Garden (``tf-models-official``) SpineNet RetinaNet checkpoint.

Layout (``shared/spec/model-garden-reference.md``): ``tf.train.Checkpoint(model=model)``. Backbone variables
sit under ``model/_backbone/layer_with_weights-N/``, where N follows Keras' topological layer order and so
carries no meaning by itself. The checkpoint's object graph, however, records each variable's full name
(``conv2d_5/kernel``, ``bottleneck_block_2/conv2d_1/kernel`` …); Keras numbers those per layer type in
*construction* order, which this module regenerates from our own module tree. That mapping is by rank
within a type, so checkpoints written in a process that had built other models first (``conv2d_301``)
convert the same way.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from spinenet.config import ExperimentConfig, load_config
from spinenet.convert.tf_checkpoint import TFCheckpointReader, parse_proto
from spinenet.modeling.layers import Bottleneck, ConvNormAct
from spinenet.modeling.spinenet import SCALING_MAP, SpineNet

BACKBONE = "model/_backbone/"
HEAD = "model/_head/"
SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
BN_FIELDS = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}


class ConversionError(ValueError):
    pass


@dataclass
class ConversionResult:
    output: Path
    model_id: str
    num_classes: int
    num_tensors: int
    num_params: int
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"wrote {self.output}: SpineNet-{self.model_id} RetinaNet, {self.num_classes} classes, "
                 f"{self.num_params:,} parameters from {self.num_tensors} TensorFlow tensors"]
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


def object_graph_names(reader: TFCheckpointReader) -> dict[str, str]:
    """checkpoint key -> variable full name, from the ``_CHECKPOINTABLE_OBJECT_GRAPH`` proto."""
    key = "_CHECKPOINTABLE_OBJECT_GRAPH"
    if key not in reader:
        raise ConversionError(f"{reader.prefix}: no object graph in the checkpoint; was it written by "
                              "tf.train.Checkpoint (Model Garden)?")
    graph = parse_proto(reader.get_tensor(key).item())
    names = {}
    for node in graph.get(1, []):  # TrackableObjectGraph.nodes
        for attr in parse_proto(node).get(2, []):  # TrackableObject.attributes (SerializedTensor)
            fields = parse_proto(attr)
            if 2 in fields and 3 in fields:  # full_name, checkpoint_key
                names[fields[3][-1].decode()] = fields[2][-1].decode()
    return names


def _layer_rank_key(name: str) -> tuple[str, int]:
    """``conv2d_12`` -> ("conv2d", 12); ``conv2d`` -> ("conv2d", 0)."""
    m = re.fullmatch(r"(.+?)(?:_(\d+))?", name)
    return m.group(1), int(m.group(2) or 0)


def backbone_layers_in_construction_order(backbone: SpineNet) -> Iterator[tuple[str, nn.Module]]:
    """(Keras layer type, our module) in the order Model Garden's ``SpineNet.__init__`` creates its layers."""

    def conv_bn(unit: ConvNormAct):
        yield "conv2d", unit.conv
        yield "batch_normalization", unit.norm

    yield from conv_bn(backbone.stem)
    for group in backbone.stem_blocks:
        for blk in group:
            yield "bottleneck_block", blk
    for block in backbone.blocks:
        for r in block.resample:
            yield from conv_bn(r.reduce)
            if r.down is not None:
                yield from conv_bn(r.down)
            yield from conv_bn(r.expand)
        for blk in block.group:
            yield ("bottleneck_block" if isinstance(blk, Bottleneck) else "residual_block"), blk
    for lvl in range(backbone.min_level, backbone.max_level + 1):
        yield from conv_bn(backbone.endpoints[str(lvl)])


def _block_units(blk: nn.Module) -> dict[str, ConvNormAct]:
    """Model Garden attribute names inside a Bottleneck/ResidualBlock -> our conv+BN units."""
    units = {"1": blk.conv1, "2": blk.conv2}
    if isinstance(blk, Bottleneck):
        units["3"] = blk.conv3
    if blk.shortcut is not None:
        units["shortcut"] = blk.shortcut
    return units


class _Assigner:
    """Collects target tensors, checking shapes and that nothing is assigned twice or left out."""

    def __init__(self, model: nn.Module, source: str):
        self.state = model.state_dict()
        self.param_names = {id(t): n for n, t in self.state.items()}
        self.names = {id(m): n for n, m in model.named_modules()}
        self.out: dict[str, torch.Tensor] = {}
        self.provenance: dict[str, str] = {}  # our tensor name -> TF layer it came from
        self.source = source

    def conv(self, module: nn.Conv2d, kernel: np.ndarray, bias: np.ndarray | None, key: str) -> None:
        self._put(module, "weight", np.transpose(kernel, (3, 2, 0, 1)), key)  # HWIO -> OIHW
        if bias is not None:
            self._put(module, "bias", bias, key)

    def depthwise(self, module: nn.Conv2d, kernel: np.ndarray, key: str) -> None:
        """A depthwise kernel ``[kh, kw, C, 1]`` -> ``(C, 1, kh, kw)`` (``groups=C``)."""
        self._put(module, "weight", np.transpose(kernel, (2, 3, 0, 1)), key)

    def separable(self, module: nn.Module, values: dict[str, np.ndarray], key: str) -> None:
        """Keras ``SeparableConv2D`` (``depthwise_kernel``, ``pointwise_kernel``, ``bias``) -> our
        :class:`~spinenet.modeling.head.SeparableConv2d`."""
        self.depthwise(module.depthwise, values["depthwise_kernel"], key)
        self.conv(module.pointwise, values["pointwise_kernel"], values["bias"], key)

    def bn(self, module: nn.BatchNorm2d, values: dict[str, np.ndarray], key: str) -> None:
        for tf_name, pt_name in BN_FIELDS.items():
            if tf_name not in values:
                raise ConversionError(f"{self.source}: {key} has no {tf_name}")
            self._put(module, pt_name, values[tf_name], key)

    def _put(self, module: nn.Module, attr: str, value: np.ndarray, key: str) -> None:
        name = f"{self.names[id(module)]}.{attr}"
        expected = tuple(self.state[name].shape)
        if tuple(value.shape) != expected:
            raise ConversionError(f"{self.source}: {key} has shape {tuple(value.shape)}, but {name} needs "
                                  f"{expected}; is this a checkpoint of another variant?")
        if name in self.out:
            raise ConversionError(f"{self.source}: {name} assigned twice (from {key})")
        self.out[name] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
        self.provenance[name] = key

    def finish(self) -> dict[str, torch.Tensor]:
        missing = [k for k in self.state if k not in self.out and not k.endswith("num_batches_tracked")]
        if missing:
            raise ConversionError(f"{self.source}: no checkpoint values for {len(missing)} tensors of the model, "
                                  f"e.g. {', '.join(missing[:5])}")
        for k, v in self.state.items():
            if k.endswith("num_batches_tracked"):
                self.out[k] = v.clone()
        return self.out


def _group_variables(reader: TFCheckpointReader, prefix: str) -> dict[str, dict[str, str]]:
    """``model/_backbone/layer_with_weights-N/<rest>`` -> {layer key: {rest: checkpoint key}}."""
    groups: dict[str, dict[str, str]] = defaultdict(dict)
    for key in reader.keys():
        if key.startswith(prefix) and key.endswith(SUFFIX):
            layer, _, rest = key[len(prefix):-len(SUFFIX)].partition("/")
            groups[layer][rest] = key
    return groups


def detect_layout(reader: TFCheckpointReader) -> str:
    keys = reader.keys()
    if any(k.startswith(BACKBONE) for k in keys) and any(k.startswith(HEAD) for k in keys):
        return "model-garden"
    if any(k.startswith(("spinenet/", "retinanet/", "class_net/", "box_net/")) or "/spinenet/" in k for k in keys):
        return "tpu"
    return "unknown"


def infer_architecture(reader: TFCheckpointReader, names: dict[str, str]) -> dict:
    """Variant, class count and head shape read off the checkpoint's tensor shapes."""
    src = reader.prefix
    try:
        cls_bias = reader.shape(f"{HEAD}_classifier/bias{SUFFIX}")[0]
        box_bias = reader.shape(f"{HEAD}_box_regressor/bias{SUFFIX}")[0]
        head_kernel = reader.shape(f"{HEAD}_cls_convs/0/kernel{SUFFIX}")
    except KeyError as e:
        raise ConversionError(f"{src}: not a Model Garden RetinaNet checkpoint (missing {e})") from e
    num_anchors = box_bias // 4
    num_convs = sum(1 for k in reader.keys() if re.fullmatch(rf"{HEAD}_cls_convs/\d+/kernel{SUFFIX}", k))
    # Backbone: endpoints width = head input; stem block filters give the width scale; block counts the repeats.
    layer_names = sorted({names[k].split("/")[0] for k in reader.keys() if k.startswith(BACKBONE) and k in names},
                         key=_layer_rank_key)
    num_blocks = sum(1 for n in layer_names if _layer_rank_key(n)[0] in ("bottleneck_block", "residual_block"))
    stem_first = min((n for n in layer_names if _layer_rank_key(n)[0] == "bottleneck_block"), key=_layer_rank_key)
    stem_f = next(reader.shape(k)[3] for k in reader.keys()
                  if k in names and names[k] == f"{stem_first}/{_conv_name_in_block(names, stem_first, 1)}/kernel")
    candidates = [mid for mid, sc in SCALING_MAP.items()
                  if sc.endpoints_num_filters == head_kernel[2] and int(64 * sc.filter_size_scale) == stem_f
                  and 17 * sc.block_repeats == num_blocks]
    return dict(num_classes=cls_bias // num_anchors, num_anchors=num_anchors, head_num_filters=head_kernel[3],
                head_num_convs=num_convs, candidates=candidates,
                summary=f"endpoints {head_kernel[2]}, stem block filters {stem_f}, {num_blocks} blocks")


def _conv_name_in_block(names: dict[str, str], block: str, index: int) -> str:
    """Full name (inside ``block``) of the conv behind ``_conv{index}``, e.g. ``conv2d_1``."""
    for key, full in names.items():
        if f"/_conv{index}/kernel" in key and full.startswith(block + "/"):
            return full.split("/")[1]
    raise ConversionError(f"block {block} has no _conv{index}")


def pair_backbone_layers(reader: TFCheckpointReader, names: dict[str, str],
                         construction_order: Iterable[tuple[str, nn.Module]], src: str, what: str
                         ) -> Iterator[tuple[str, str, dict[str, str], nn.Module]]:
    """(kind, checkpoint layer, its variables, our module) for every backbone layer of a Model Garden checkpoint.

    A Keras checkpoint numbers layers ``layer_with_weights-N`` in an order that is not construction order; the
    Keras layer name (``conv2d_7``, ``batch_normalization_12``, …) gives each one's type and its rank within the
    type, which pairs it with the same-rank module of that type in our construction order (SpineNet's and
    SpineNet-Mobile's alike). Counts per type must agree, or the checkpoint is another variant."""
    by_type: dict[str, list[tuple[int, str, dict[str, str]]]] = defaultdict(list)
    for layer, attrs in _group_variables(reader, BACKBONE).items():
        full = {names.get(k, "") for k in attrs.values()}
        tops = {f.split("/")[0] for f in full if f}
        if len(tops) != 1:
            raise ConversionError(f"{src}: can't tell which Keras layer {BACKBONE}{layer} is (names {sorted(full)})")
        kind, rank = _layer_rank_key(tops.pop())
        by_type[kind].append((rank, layer, attrs))
    ours: dict[str, list[nn.Module]] = defaultdict(list)
    for kind, module in construction_order:
        ours[kind].append(module)
    theirs_n = {k: len(v) for k, v in sorted(by_type.items())}
    ours_n = {k: len(v) for k, v in sorted(ours.items())}
    if theirs_n != ours_n:
        raise ConversionError(f"{src}: layer counts differ from {what}: checkpoint {theirs_n} vs model {ours_n}")
    for kind, entries in by_type.items():
        for (_, layer, attrs), module in zip(sorted(entries), ours[kind], strict=True):
            yield kind, layer, attrs, module


def map_weights(reader: TFCheckpointReader, names: dict[str, str], model: nn.Module,
                provenance: dict[str, str] | None = None) -> dict[str, torch.Tensor]:
    """Model Garden tensors -> our state dict (strict: every tensor of the model must be covered).

    ``provenance``, if given, is filled with our tensor name -> the TF layer (checkpoint path) it came from.
    """
    src = str(reader.prefix)
    a = _Assigner(model, src)
    backbone: SpineNet = model.backbone

    for kind, layer, attrs, module in pair_backbone_layers(reader, names, backbone_layers_in_construction_order(
            backbone), src, f"SpineNet-{backbone.model_id}"):
        where = f"{BACKBONE}{layer}"
        if kind == "conv2d":
            a.conv(module, reader.get_tensor(attrs["kernel"]), None, where)
        elif kind == "batch_normalization":
            a.bn(module, {f: reader.get_tensor(attrs[f]) for f in BN_FIELDS if f in attrs}, where)
        else:
            for suffix, unit in _block_units(module).items():
                conv_attr, norm_attr = ("_shortcut", "_norm0") if suffix == "shortcut" else (
                    f"_conv{suffix}", f"_norm{suffix}")
                if f"{conv_attr}/kernel" not in attrs:
                    raise ConversionError(f"{src}: {where} has no {conv_attr} (is this another variant?)")
                a.conv(unit.conv, reader.get_tensor(attrs[f"{conv_attr}/kernel"]), None, f"{where}/{conv_attr}")
                a.bn(unit.norm, {f: reader.get_tensor(attrs[f"{norm_attr}/{f}"]) for f in BN_FIELDS
                                 if f"{norm_attr}/{f}" in attrs}, f"{where}/{norm_attr}")

    map_head(a, reader, model.head)
    if provenance is not None:
        provenance.update(a.provenance)
    return a.finish()


def map_head(a: _Assigner, reader: TFCheckpointReader, head: nn.Module) -> None:
    """The head: convs shared across levels, BN per (level index, conv index); plain or separable convs."""

    def conv(module: nn.Module, k: str) -> None:
        kind = "plain" if isinstance(module, nn.Conv2d) else "separable"
        try:
            if isinstance(module, nn.Conv2d):
                a.conv(module, reader.get_tensor(k + "kernel" + SUFFIX), reader.get_tensor(k + "bias" + SUFFIX), k)
            else:  # SeparableConv2d
                a.separable(module, {leaf: reader.get_tensor(k + leaf + SUFFIX)
                                     for leaf in ("depthwise_kernel", "pointwise_kernel", "bias")}, k)
        except KeyError as e:
            raise ConversionError(f"{a.source}: {k} lacks {e} (a {kind} head conv was expected)") from None

    for tf_net, net in (("cls", head.class_net), ("box", head.box_net)):
        for i, c in enumerate(net.convs):
            conv(c, f"{HEAD}_{tf_net}_convs/{i}/")
        for li, lvl in enumerate(net.levels):
            for i, norm in enumerate(net.norms[str(lvl)]):
                k = f"{HEAD}_{tf_net}_norms/{li}/{i}/"
                a.bn(norm, {f: reader.get_tensor(k + f + SUFFIX) for f in BN_FIELDS}, k)
    for tf_name, c in (("_classifier", head.class_net.predict), ("_box_regressor", head.box_net.predict)):
        conv(c, f"{HEAD}{tf_name}/")


def build_config(arch: dict, model_id: str, config_file: str | os.PathLike | None,
                 params_override) -> ExperimentConfig:
    """The variant's YAML (or the user's), the user's override, then what the weights dictate."""
    from spinenet.registry import get_config, get_model_info

    from_weights = {
        "spinenet": {"model_id": model_id},
        "architecture": {"num_classes": arch["num_classes"], "convention": "model_garden"},
        "retinanet_head": {"num_filters": arch["head_num_filters"], "num_convs": arch["head_num_convs"]},
    }
    overrides = [o for o in (params_override, from_weights) if o]
    if config_file is not None:  # the weights decide the architecture; the user's file decides the rest
        return load_config(config_file, overrides)
    return get_config(get_model_info(model_id).name, params_override=overrides)


def convert_model_garden(checkpoint: str | os.PathLike, output: str | os.PathLike, *,
                         config_file: str | os.PathLike | None = None, params_override=None,
                         label_map_file: str | os.PathLike | None = None,
                         model_id: str | None = None) -> ConversionResult:
    """Convert a Model Garden checkpoint to a spinenet ``.pt`` (written atomically)."""
    from spinenet.modeling.factory import build_retinanet

    reader = TFCheckpointReader(checkpoint)
    layout = detect_layout(reader)
    if layout == "tpu":
        raise ConversionError(f"{reader.prefix} looks like a TF1 TPU checkpoint (variables named spinenet/…, "
                              "retinanet/…), not a Model Garden one: use --from tpu")
    if layout != "model-garden":
        raise ConversionError(f"{reader.prefix} is a TensorFlow checkpoint but not a Model Garden SpineNet "
                              f"RetinaNet one (first variables: {', '.join(reader.keys()[:4])})")
    names = object_graph_names(reader)
    from spinenet.convert.mobile_map import is_model_garden_mobile

    if is_model_garden_mobile(names):
        from spinenet.convert.mobile_convert import convert_model_garden_mobile

        return convert_model_garden_mobile(reader, names, output, config_file=config_file,
                                           params_override=params_override, label_map_file=label_map_file,
                                           model_id=model_id)
    arch = infer_architecture(reader, names)
    if model_id is None:
        if len(arch["candidates"]) != 1:
            raise ConversionError(f"{reader.prefix}: the weights ({arch['summary']}) match "
                                  f"{arch['candidates'] or 'no'} SpineNet variant(s); valid: "
                                  f"{', '.join(SCALING_MAP)}. Pass --model_id to choose.")
        model_id = arch["candidates"][0]
    cfg = build_config(arch, model_id, config_file, params_override)
    model = build_retinanet(cfg)
    state = map_weights(reader, names, model)
    model.load_state_dict(state, strict=True)

    out, n_params = save_converted(model, cfg, model_id, output, label_map_file,
                                   {"format": "model-garden", "checkpoint": str(reader.prefix)})
    return ConversionResult(out, model_id, cfg.architecture.num_classes, len(reader.keys()), n_params)


def save_converted(model: nn.Module, cfg, model_id: str, output: str | os.PathLike,
                   label_map_file: str | os.PathLike | None, source: dict[str, str]) -> tuple[Path, int]:
    """Write a converted model as the project's self-describing checkpoint (the label map from
    ``label_map_file``, else COCO's for 91 classes, else ``class_i``); returns its path and parameter count."""
    from spinenet.data.label_map import coco_label_map, read_label_map
    from spinenet.engine.checkpoint import make_checkpoint, save_checkpoint
    from spinenet.registry import get_model_info

    if label_map_file is not None:
        label_map = read_label_map(label_map_file)
    elif cfg.architecture.num_classes == 91:
        label_map = coco_label_map()
    else:
        label_map = {i: f"class_{i}" for i in range(1, cfg.architecture.num_classes)}
    ckpt = make_checkpoint(model, cfg, variant=get_model_info(model_id).name, label_map=label_map,
                           extra={"source": source})
    return save_checkpoint(ckpt, output), sum(p.numel() for p in model.parameters())
