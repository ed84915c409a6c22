"""Import TF1 Cloud TPU (``tensorflow/tpu`` ``models/official/detection``) SpineNet RetinaNet weights.

Two sources, one mapping (``shared/spec/tf1-checkpoint.md``):

* a ``tf.compat.v1.train.Saver`` checkpoint (``model.ckpt-231500``), given as its prefix, its ``.index``, a
  folder holding one, or a published ``.tar.gz`` (extracted safely into a temporary folder);
* a frozen serving graph (``spinenet_tf_310.pb``), whose ``Const`` nodes carry the variables' values under the
  variables' own names (or, for graphs frozen through read ops, ``<var>/read`` / ``<var>/Read/ReadVariableOp``).

Variable names come from ``tf.layers`` auto-numbering (``conv2d``, ``conv2d_1``, …, ``batch_normalization_k``),
the counters restarting in every variable scope, in creation order. :func:`tf1_variable_layout` regenerates
them from our module tree: the stem and the two stem block groups in scope ``spinenet`` (in a block with a
projection the shortcut is created first), each scale-permuted block's two resamplings in
``spinenet/sub_policy{i}/resample_with_alpha_resample_{i}_{0|1}`` and its block group in
``spinenet/sub_policy{i}/scale_permuted_block_{i+2}``, then the endpoints back in ``spinenet``; the head's
shared convs ``retinanet/{class,box}_net/{class,box}-{i}``, its per-level BNs ``…-{i}-{level}`` and the
predictors ``…-predict``. The numbering is by creation order, so it is regenerated, never sorted as strings
(``conv2d_10`` sorts before ``conv2d_2``). Class-predict channels are ``anchor * num_classes + class`` in both
frameworks, so kernels only move from HWIO to OIHW. ``global_step`` and the optimizer's ``/Momentum`` slots
are ignored.
"""

from __future__ import annotations

import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from spinenet.config import ExperimentConfig, load_config
from spinenet.convert.graphdef import FrozenGraph
from spinenet.convert.model_garden import (
    BN_FIELDS,
    ConversionError,
    ConversionResult,
    _Assigner,
    detect_layout,
    save_converted,
)
from spinenet.convert.tf_checkpoint import TFCheckpointError, TFCheckpointReader
from spinenet.modeling.layers import Bottleneck, ConvNormAct
from spinenet.modeling.spinenet import SCALING_MAP, SpineNet, level_filters

__all__ = ["TPUWeights", "CheckpointWeights", "FrozenGraphWeights", "TPUArchitecture", "open_tpu_checkpoint",
           "open_tpu_frozen_graph", "tf1_variable_layout", "infer_tpu_architecture", "map_tpu_weights",
           "convert_tpu", "model_from_reference_metadata"]

SOURCES = {"tpu": "TF1 TPU checkpoint", "tpu-frozen-graph": "TF1 frozen graph"}
WEIGHT_LEAVES = ("kernel", "bias", *BN_FIELDS)
MODEL_SCOPES = ("spinenet/", "retinanet/")
# Graphs frozen through read ops name the Const after the read instead of the variable.
READ_SUFFIXES = ("/read", "/Read/ReadVariableOp", "/ReadVariableOp")


def _ignored(name: str) -> bool:
    """Training state that is not part of the model: the step counter and the optimizer's slots."""
    return name == "global_step" or name.endswith("/Momentum")


# ---------------------------------------------------------------------------------------------------------
# Sources: a name -> array view over a checkpoint or a frozen graph.
# ---------------------------------------------------------------------------------------------------------


class TPUWeights(Protocol):
    source: str  # file shown in messages
    kind: str  # "checkpoint" | "frozen graph"

    def names(self) -> list[str]: ...

    def shape(self, name: str) -> tuple[int, ...]: ...

    def get(self, name: str) -> np.ndarray: ...


class CheckpointWeights:
    """The tensors of a TF1 ``Saver`` checkpoint (training state included; the mapping skips it)."""

    kind = "checkpoint"

    def __init__(self, reader: TFCheckpointReader, source: str | None = None) -> None:
        self.reader = reader
        self.source = source or str(reader.prefix)

    def names(self) -> list[str]:
        return [n for n, _, dtype in self.reader.list_variables() if dtype != "string"]

    def shape(self, name: str) -> tuple[int, ...]:
        return self.reader.shape(name)

    def get(self, name: str) -> np.ndarray:
        return self.reader.get_tensor(name)


class FrozenGraphWeights:
    """The variable values folded into a frozen graph's ``Const`` nodes, by variable name."""

    kind = "frozen graph"

    def __init__(self, graph: FrozenGraph) -> None:
        self.graph = graph
        self.source = str(graph.path)
        self._node_of: dict[str, str] = {}  # variable name -> Const node name
        for node in graph.consts:
            var = node
            if not _is_weight_name(var):
                for suffix in READ_SUFFIXES:
                    if node.endswith(suffix) and _is_weight_name(node[: -len(suffix)]):
                        var = node[: -len(suffix)]
                        break
                else:
                    continue
            if var in self._node_of and self._node_of[var] == var:
                continue  # the variable's own Const wins over a read-op copy
            self._node_of[var] = node

    def names(self) -> list[str]:
        return sorted(self._node_of)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.graph.const_shape(self._node(name))

    def get(self, name: str) -> np.ndarray:
        return self.graph.const_value(self._node(name))

    def node_name(self, name: str) -> str:
        return self._node(name)

    def _node(self, name: str) -> str:
        try:
            return self._node_of[name]
        except KeyError:
            raise KeyError(f"{self.source} has no Const for variable {name!r}") from None


# A tf.layers conv/BN of the backbone (auto-named) or of the head (named by the code).
_LAYER_NAME = re.compile(r"(conv2d|batch_normalization)(_\d+)?|(class|box)-(\d+|\d+-\d+|predict)")


def _is_weight_name(name: str) -> bool:
    """A variable's name (``<layer>/<kernel|bias|gamma|…>``), not e.g. swish's ``beta`` scalar of a frozen graph."""
    parts = name.rsplit("/", 2)
    return len(parts) == 3 and parts[2] in WEIGHT_LEAVES and bool(_LAYER_NAME.fullmatch(parts[1]))


@contextmanager
def open_tpu_checkpoint(path: str | os.PathLike) -> Iterator[CheckpointWeights]:
    """A TF1 checkpoint given as a prefix, ``.index``, folder (searched recursively) or ``.tar.gz``/``.tgz``."""
    p = Path(path)
    if p.is_file() and _is_tarball(p):
        with tempfile.TemporaryDirectory(prefix="spinenet-tpu-") as tmp:
            _safe_extract(p, Path(tmp))
            prefix = _find_checkpoint(Path(tmp), shown=p)
            yield CheckpointWeights(TFCheckpointReader(prefix), f"{p}:{prefix.relative_to(tmp)}")
        return
    if p.is_file() and p.suffix == ".pb":
        raise ConversionError(f"{p} is a GraphDef (.pb), not a checkpoint: convert it with --from tpu-frozen-graph")
    if p.is_dir():
        p = _find_checkpoint(p, shown=p)
    try:
        reader = TFCheckpointReader(p)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e}. A TF1 checkpoint is PREFIX.index + PREFIX.data-*, e.g. model.ckpt-231500; "
                                "a published .tar.gz or a folder holding one also works") from None
    yield CheckpointWeights(reader)


def open_tpu_frozen_graph(path: str | os.PathLike) -> FrozenGraphWeights:
    p = Path(path)
    if p.is_dir():
        pbs = sorted(p.glob("*.pb"))
        if len(pbs) != 1:
            raise FileNotFoundError(f"{p} is a folder holding {len(pbs)} .pb files; pass the frozen graph file")
        p = pbs[0]
    if (p.suffix == ".index" or ".data-" in p.name or (p.is_file() and _is_tarball(p))
            or (not p.exists() and Path(f"{p}.index").is_file())):
        raise ConversionError(f"{p} looks like a TF checkpoint, not a frozen graph: convert it with --from tpu")
    return FrozenGraphWeights(FrozenGraph(p))


def _is_tarball(p: Path) -> bool:
    if p.name.endswith((".tar.gz", ".tgz", ".tar")):
        return True
    return p.suffix not in (".index", ".pb") and ".data-" not in p.name and tarfile.is_tarfile(p)


def _safe_extract(tarball: Path, dest: Path) -> None:
    """Extract regular files and folders only; reject absolute paths, ``..``, links and devices."""
    try:
        with tarfile.open(tarball) as tar:
            for m in tar:
                rel = PurePosixPath(m.name)
                if rel.is_absolute() or ".." in rel.parts or m.name.startswith(("/", "\\")):
                    raise ConversionError(f"{tarball}: refusing to extract {m.name!r} (path outside the archive)")
                target = dest.joinpath(*rel.parts)
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                elif m.isfile():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    src = tar.extractfile(m)
                    assert src is not None
                    with src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
                else:
                    raise ConversionError(f"{tarball}: refusing to extract {m.name!r} (a link or special file); "
                                          "a checkpoint archive holds regular files only")
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ConversionError(f"{tarball} is not a readable .tar.gz ({type(e).__name__}: {e}); truncated "
                              "download? Fetch it again or extract it yourself and pass the folder") from None


def _find_checkpoint(folder: Path, shown: Path) -> Path:
    """The checkpoint prefix in ``folder`` or below: a ``checkpoint`` state file decides, else a single index."""
    indexes = sorted(folder.rglob("*.index"))
    if not indexes:
        pbs, archives = sorted(folder.rglob("*.pb")), sorted(folder.glob("*.tar.gz")) + sorted(folder.glob("*.tgz"))
        hint = ""
        if archives:
            hint = f"; it holds {archives[0].name}: pass the archive itself"
        elif pbs:
            hint = f"; it holds {pbs[0].name}: use --from tpu-frozen-graph for a frozen graph"
        raise FileNotFoundError(f"{shown} holds no TensorFlow checkpoint (no *.index file){hint}")
    dirs = sorted({i.parent for i in indexes})
    if len(dirs) == 1 and ((dirs[0] / "checkpoint").is_file() or len(indexes) == 1):
        from spinenet.convert.tf_checkpoint import _resolve_prefix

        return _resolve_prefix(dirs[0])
    names = ", ".join(str(i.relative_to(folder).with_suffix("")) for i in indexes[:6])
    raise ConversionError(f"{shown} holds {len(indexes)} checkpoints ({names}); pass the prefix of the one to "
                          "convert (extract the archive first)")


# ---------------------------------------------------------------------------------------------------------
# The layout: our modules in TF1 creation order, with their TF1 variable names.
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayoutEntry:
    tf_name: str  # variable prefix, e.g. spinenet/sub_policy3/scale_permuted_block_5/conv2d_2
    kind: str  # "conv" (kernel), "conv_bias" (kernel + bias) or "bn"
    module: nn.Module

    def variables(self) -> list[str]:
        leaves = {"conv": ("kernel",), "conv_bias": ("kernel", "bias"), "bn": tuple(BN_FIELDS)}[self.kind]
        return [f"{self.tf_name}/{leaf}" for leaf in leaves]


class _Scopes:
    """``tf.layers`` auto-naming: a counter per (variable scope, layer type)."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}
        self.entries: list[LayoutEntry] = []

    def unit(self, scope: str, unit: ConvNormAct) -> None:
        self.entries.append(LayoutEntry(self._name(scope, "conv2d"), "conv", unit.conv))
        self.entries.append(LayoutEntry(self._name(scope, "batch_normalization"), "bn", unit.norm))

    def _name(self, scope: str, base: str) -> str:
        k = self.counts.get((scope, base), 0)
        self.counts[(scope, base)] = k + 1
        return f"{scope}/{base}" if k == 0 else f"{scope}/{base}_{k}"


def _block_units_tf1_order(blk: nn.Module) -> list[ConvNormAct]:
    """A bottleneck/residual block's conv+BN units in the order the TF1 code creates them (shortcut first)."""
    units = [blk.shortcut] if blk.shortcut is not None else []
    units += [blk.conv1, blk.conv2] + ([blk.conv3] if isinstance(blk, Bottleneck) else [])
    return units


def tf1_variable_layout(model: nn.Module) -> list[LayoutEntry]:
    """Every conv/BN of a :class:`~spinenet.modeling.retinanet.RetinaNet` with its TF1 variable prefix."""
    backbone: SpineNet = model.backbone
    s = _Scopes()
    s.unit("spinenet", backbone.stem)
    for group in backbone.stem_blocks:  # stem_block_1, stem_block_2: no variable scope of their own
        for blk in group:
            for unit in _block_units_tf1_order(blk):
                s.unit("spinenet", unit)
    for i, block in enumerate(backbone.blocks):
        for j, r in enumerate(block.resample):
            scope = f"spinenet/sub_policy{i}/resample_with_alpha_resample_{i}_{j}"
            for unit in (r.reduce, r.down, r.expand):
                if unit is not None:
                    s.unit(scope, unit)
        for blk in block.group:
            for unit in _block_units_tf1_order(blk):
                s.unit(f"spinenet/sub_policy{i}/scale_permuted_block_{i + 2}", unit)
    for lvl in range(backbone.min_level, backbone.max_level + 1):
        s.unit("spinenet", backbone.endpoints[str(lvl)])
    entries = s.entries
    head = model.head
    for tf_net, net in (("class", head.class_net), ("box", head.box_net)):
        base = f"retinanet/{tf_net}_net/{tf_net}"
        entries += [LayoutEntry(f"{base}-{i}", "conv_bias", conv) for i, conv in enumerate(net.convs)]
        entries += [LayoutEntry(f"{base}-{i}-{lvl}", "bn", norm)
                    for lvl in net.levels for i, norm in enumerate(net.norms[str(lvl)])]
        entries.append(LayoutEntry(f"{base}-predict", "conv_bias", net.predict))
    return entries


# ---------------------------------------------------------------------------------------------------------
# Architecture from shapes.
# ---------------------------------------------------------------------------------------------------------


@dataclass
class TPUArchitecture:
    num_classes: int
    num_anchors: int
    head_num_filters: int
    head_num_convs: int
    endpoints_num_filters: int
    stem_filters: int  # level-2 block filters, int(64 * filter_size_scale)
    resample_filters: int  # first resampling's reduced width, int(stem_filters * resample_alpha)
    block_repeats: int
    candidates: list[str] = field(default_factory=list)

    @property
    def summary(self) -> str:
        return (f"endpoints {self.endpoints_num_filters}, level-2 filters {self.stem_filters}, resample width "
                f"{self.resample_filters}, {self.block_repeats} block(s) per group, head {self.head_num_convs}x"
                f"{self.head_num_filters}, {self.num_anchors} anchors x {self.num_classes} classes")


def _need_shape(w: TPUWeights, name: str) -> tuple[int, ...]:
    try:
        return w.shape(name)
    except KeyError:
        raise ConversionError(f"{w.source}: no {name} in this {w.kind}, so it is not a TF1 SpineNet RetinaNet "
                              f"({_what_it_holds(w)})") from None


def _what_it_holds(w: TPUWeights) -> str:
    names = [n for n in w.names() if not _ignored(n)]
    return f"{len(names)} tensors, e.g. {', '.join(names[:3])}" if names else "no tensors"


def infer_tpu_architecture(w: TPUWeights) -> TPUArchitecture:
    """Read the variant, head shape and class count off the tensor shapes."""
    names = set(w.names())
    cls_bias = _need_shape(w, "retinanet/class_net/class-predict/bias")[0]
    box_bias = _need_shape(w, "retinanet/box_net/box-predict/bias")[0]
    head0 = _need_shape(w, "retinanet/class_net/class-0/kernel")
    num_anchors = box_bias // 4
    if box_bias % 4 or not num_anchors or cls_bias % num_anchors:
        raise ConversionError(f"{w.source}: class-predict has {cls_bias} channels and box-predict {box_bias}: not "
                              "anchors x classes and anchors x 4")
    num_convs = sum(1 for n in names if re.fullmatch(r"retinanet/class_net/class-\d+/kernel", n))
    projection = _need_shape(w, "spinenet/conv2d_1/kernel")  # stem_block_1's projection shortcut, 64 -> 4f
    reduce = _need_shape(w, "spinenet/sub_policy0/resample_with_alpha_resample_0_0/conv2d/kernel")
    block0 = sum(1 for n in names if re.fullmatch(r"spinenet/sub_policy0/scale_permuted_block_2/conv2d(_\d+)?/kernel",
                                                  n))
    arch = TPUArchitecture(num_classes=cls_bias // num_anchors, num_anchors=num_anchors,
                           head_num_filters=head0[3], head_num_convs=num_convs, endpoints_num_filters=head0[2],
                           stem_filters=projection[3] // 4, resample_filters=reduce[3], block_repeats=block0 // 3)
    arch.candidates = [mid for mid, sc in SCALING_MAP.items()
                       if sc.endpoints_num_filters == arch.endpoints_num_filters
                       and level_filters(2, sc.filter_size_scale) == arch.stem_filters
                       and int(arch.stem_filters * sc.resample_alpha) == arch.resample_filters
                       and sc.block_repeats == arch.block_repeats]
    return arch


# ---------------------------------------------------------------------------------------------------------
# Mapping.
# ---------------------------------------------------------------------------------------------------------


def map_tpu_weights(w: TPUWeights, model: nn.Module, provenance: dict[str, str] | None = None,
                    notes: list[str] | None = None) -> dict[str, torch.Tensor]:
    """TF1 tensors -> ``model``'s state dict, strictly: every tensor of the model is assigned exactly once and
    every weight under ``spinenet/`` and ``retinanet/`` is used. Training state (``global_step``, ``/Momentum``)
    is skipped; other tensors outside the model's scopes are listed in ``notes``.
    """
    a = _Assigner(model, w.source)
    available = set(w.names())
    used: set[str] = set()
    for entry in tf1_variable_layout(model):
        missing = [v for v in entry.variables() if v not in available]
        if missing:
            close = [n for n in available if n.startswith(entry.tf_name.rsplit("/", 1)[0] + "/")][:4]
            raise ConversionError(f"{w.source}: {w.kind} has no {missing[0]} (needed for "
                                  f"{type(entry.module).__name__}); is it another SpineNet variant or head size? "
                                  f"Tensors in that scope: {close or 'none'}")
        values = {v.rsplit("/", 1)[-1]: w.get(v) for v in entry.variables()}
        used.update(entry.variables())
        if entry.kind == "bn":
            a.bn(entry.module, values, entry.tf_name)
        else:
            a.conv(entry.module, values["kernel"], values.get("bias"), entry.tf_name)
    left = sorted(n for n in available - used if not _ignored(n))
    in_model = [n for n in left if n.startswith(MODEL_SCOPES)]
    if in_model:
        raise ConversionError(f"{w.source}: {len(in_model)} weights of the {w.kind} have no place in SpineNet-"
                              f"{model.backbone.model_id} (e.g. {', '.join(in_model[:4])}); is it a checkpoint of "
                              "another variant? Omit --model_id / --config_file to detect the variant from the weights")
    if left and notes is not None:
        notes.append(f"ignored {len(left)} tensors outside spinenet/ and retinanet/: {', '.join(left[:5])}")
    if provenance is not None:
        provenance.update(a.provenance)
    return a.finish()


def _graph_facts(w: FrozenGraphWeights) -> dict[str, Any]:
    """What a frozen graph tells beyond its weights: the activation and the input shape."""
    ops = w.graph.ops("spinenet/")
    activation = None
    if any("swish" in op.lower() for op in ops) or "Sigmoid" in ops:
        activation = "swish"
    elif "Relu" in ops:
        activation = "relu"
    inputs = [(n.name, n.shape(), n.dtype) for n in w.graph.placeholders()]
    return {"activation": activation, "inputs": inputs}


def _build_config(arch: TPUArchitecture, model_id: str, config_file: str | os.PathLike | None, params_override,
                  activation: str | None) -> ExperimentConfig:
    """The variant's YAML (or the user's), the user's override, then what the weights dictate."""
    from spinenet.registry import get_config, get_model_info

    from_weights: dict[str, Any] = {
        "spinenet": {"model_id": model_id},
        "architecture": {"num_classes": arch.num_classes, "convention": "tpu"},
        "retinanet_head": {"num_filters": arch.head_num_filters, "num_convs": arch.head_num_convs},
    }
    if activation is not None:
        from_weights["batch_norm_activation"] = {"activation": activation}
    overrides = [o for o in (params_override, from_weights) if o]
    if config_file is not None:
        return load_config(config_file, overrides)
    return get_config(get_model_info(model_id).name, params_override=overrides)


def _check_config_variant(config_file: str | os.PathLike | None, params_override, model_id: str,
                          arch: TPUArchitecture, source: str) -> None:
    """A --config_file naming another variant than the weights is an error, not a silent pick."""
    if config_file is None:
        return
    stated = load_config(config_file, [params_override] if params_override else None).spinenet.model_id
    if stated != model_id:
        from spinenet.registry import get_model_info

        raise ConversionError(f"{source} holds SpineNet-{model_id} weights ({arch.summary}), but {config_file} "
                              f"describes SpineNet-{stated}: pass the matching config "
                              f"({get_model_info(model_id).config_file}) or omit --config_file")


def convert_tpu(checkpoint: str | os.PathLike, output: str | os.PathLike, *, frozen_graph: bool = False,
                config_file: str | os.PathLike | None = None, params_override=None,
                label_map_file: str | os.PathLike | None = None, model_id: str | None = None) -> ConversionResult:
    """Convert a TF1 TPU checkpoint (or, with ``frozen_graph``, a frozen ``.pb``) to a spinenet ``.pt``."""
    if frozen_graph:
        return _convert(open_tpu_frozen_graph(checkpoint), output, "tpu-frozen-graph", config_file,
                        params_override, label_map_file, model_id)
    try:
        with open_tpu_checkpoint(checkpoint) as weights:
            return _convert(weights, output, "tpu", config_file, params_override, label_map_file, model_id)
    except TFCheckpointError as e:
        raise ConversionError(f"{e}. The checkpoint is damaged (an interrupted copy or download?); fetch it "
                              "again") from None


def _convert(w: TPUWeights, output: str | os.PathLike, fmt: str, config_file, params_override, label_map_file,
             model_id: str | None) -> ConversionResult:
    from spinenet.modeling.factory import build_retinanet

    _check_layout(w)
    arch = infer_tpu_architecture(w)
    notes: list[str] = []
    if model_id is None:
        if not arch.candidates:
            raise ConversionError(f"{w.source}: the weights ({arch.summary}) match no SpineNet variant "
                                  f"({', '.join(SCALING_MAP)}); a width-reduced or modified backbone can't be "
                                  "described by a config (--model_id forces a variant, if its shapes fit)")
        if len(arch.candidates) > 1:
            raise ConversionError(f"{w.source}: the weights ({arch.summary}) match SpineNet variants "
                                  f"{', '.join(arch.candidates)}; pass --model_id to choose")
        model_id = arch.candidates[0]
    _check_config_variant(config_file, params_override, model_id, arch, w.source)
    activation = None
    if isinstance(w, FrozenGraphWeights):
        facts = _graph_facts(w)
        activation = facts["activation"]
        for name, shape, _ in facts["inputs"]:
            if shape and len(shape) == 4:
                notes.append(f"the graph's input {name} is {'x'.join(str(d) for d in shape)}; export with "
                             f"--input_image_size {shape[1]},{shape[2]} for the same signature")
        if activation:
            notes.append(f"activation {activation}: read off the graph's ops")
    cfg = _build_config(arch, model_id, config_file, params_override, activation)
    if activation is None:
        notes.append(f"activation {cfg.batch_norm_activation.activation}: from the config (the weights can't tell "
                     "relu from swish; for a relu checkpoint add --params_override "
                     "'{batch_norm_activation: {activation: relu}}')")
    if cfg.anchor.num_scales * len(cfg.anchor.aspect_ratios) != arch.num_anchors:
        raise ConversionError(f"{w.source}: the head predicts {arch.num_anchors} anchors per location but the config "
                              f"has {cfg.anchor.num_scales} scales x {len(cfg.anchor.aspect_ratios)} aspect ratios")
    model = build_retinanet(cfg)
    state = map_tpu_weights(w, model, notes=notes)
    model.load_state_dict(state, strict=True)

    out, n_params = save_converted(model, cfg, model_id, output, label_map_file,
                                   {"format": fmt, "checkpoint": w.source})
    used = sum(1 for n in w.names() if not _ignored(n) and n.startswith(MODEL_SCOPES))
    return ConversionResult(out, model_id, cfg.architecture.num_classes, used, n_params, notes)


def _check_layout(w: TPUWeights) -> None:
    if isinstance(w, CheckpointWeights):
        layout = detect_layout(w.reader)
        if layout == "model-garden":
            raise ConversionError(f"{w.source} looks like a Model Garden checkpoint (variables under model/_backbone/ "
                                  "and model/_head/), not a TF1 TPU one: use --from model-garden")
    names = w.names()
    if not any(n.startswith("spinenet/") for n in names) or not any(n.startswith("retinanet/") for n in names):
        raise ConversionError(f"{w.source} is not a TF1 SpineNet RetinaNet {w.kind}: it has no spinenet/… and "
                              f"retinanet/… variables ({_what_it_holds(w)})")


# ---------------------------------------------------------------------------------------------------------
# Width-reduced reference models (test fixtures): the model a tools/tf1_reference.py recording describes.
# ---------------------------------------------------------------------------------------------------------


def model_from_reference_metadata(meta: dict) -> nn.Module:
    """The TF1-convention RetinaNet (eval mode) that ``tools/tf1_reference.py``'s ``variables.json`` metadata
    describes, width-reduced SCALING_MAP entries included."""
    from spinenet.convert.parity import reference_retinanet

    p = meta["params"]
    arch, bn, post = p["architecture"], p["batch_norm_activation"], p["postprocess"]
    return reference_retinanet(
        str(p["spinenet"]["model_id"]), meta["scaling_map_entry"], "tpu",
        levels=(arch["min_level"], arch["max_level"]), num_classes=arch["num_classes"],
        head=(p["retinanet_head"]["num_convs"], p["retinanet_head"]["num_filters"]),
        bn=dict(activation=bn["activation"], bn_momentum=1.0 - bn["batch_norm_momentum"],
                bn_eps=bn["batch_norm_epsilon"]),
        anchor=p["anchor"],
        postprocess={k: post[k] for k in ("max_total_size", "nms_iou_threshold", "score_threshold",
                                          "pre_nms_num_boxes", "nms_version")})
