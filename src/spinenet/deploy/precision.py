"""fp16 the way Huawei ATC compiles a model, emulated on an ONNX graph, and the ``--keep_dtype`` list that keeps
chosen nodes in fp32.

ATC compiles with ``--precision_mode=force_fp16`` unless told otherwise (:data:`ATC_PRECISION`): every operator
that has an fp16 implementation runs in fp16, whatever the source graph's dtype. A deployed model's accuracy on
an Ascend NPU is therefore its accuracy with every float tensor in fp16. :func:`emulate_fp16` rewrites an
exported graph so that ONNX Runtime computes it that way on a CPU:

* every operator's float outputs are rounded to fp16 (nearest even, overflow to inf, subnormals kept), and so
  are the float initializers and Constants it reads; ``Loop``/``If`` bodies likewise;
* the graph's inputs and outputs keep their dtypes (uint8 in, int32/float32 out), as ATC's do unless
  ``--input_fp16_nodes`` / ``--output_type`` say otherwise;
* nodes named in ``keep_fp32`` compute in fp32 from their (rounded) inputs and the original constants: what ATC
  does with the nodes of a ``--keep_dtype`` file (they keep the source graph's dtype).

What it measures: fp16 *storage* of every tensor, each operator computed in float32 from fp16 inputs and
rounded once. For a convolution that is what the NPU's cube unit does (fp16 inputs, fp32 accumulation, fp16
output); for elementwise +, -, *, / it is exactly fp16 arithmetic (float32 holds the exact product of two fp16
numbers, and rounding twice is innocuous there). It does not reproduce the NPU's own approximations of Exp and
Sigmoid or an fp16 accumulator in a vector reduction, so it is the floor of what fp16 costs, not a bound above.

:func:`postprocess_nodes` picks the nodes after the network's last convolutions (score top-k, box decoding,
clipping, IoU, NMS, output padding), and :func:`write_keep_dtype` writes their names in ATC's ``--keep_dtype``
format: ``spinenet export --keep_dtype FILE``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from spinenet.io_checks import write_text_atomic

# Transcribed from Huawei's ATC tool manual, CANN 6.0.1 commercial edition ("ATC工具使用指南", parameters
# --precision_mode: https://www.hiascend.com/doc_center/source/zh/canncommercial/601/inferapplicationdev/atctool/
# atctool_0090.html, and --keep_dtype: .../atctool/atctool_0095.html; both list Atlas 200/300/500 inference
# products, i.e. Ascend 310). The CANN 8.x/9.x manuals (atlasatcparam_16_0068 / _0074) say the same for these
# points and add --precision_mode_v2.
ATC_PRECISION = {
    "precision_mode_flag": "--precision_mode",
    "precision_mode_default": "force_fp16",
    "precision_mode_values": ("force_fp32", "force_fp16", "allow_fp32_to_fp16", "must_keep_origin_dtype",
                              "allow_mix_precision"),
    "keep_dtype_flag": "--keep_dtype",
    # "--keep_dtype does not take effect when --precision_mode is must_keep_origin_dtype"
    "keep_dtype_ignored_with": "must_keep_origin_dtype",
    # The file lists operator names (as in the original model) or types as OpType::TypeName (Ascend IR types),
    # "each operator on its own line"; manual example: "--keep_dtype=$HOME/execeptionlist.cfg
    # --precision_mode=force_fp16".
    "keep_dtype_line": r"^(OpType::[A-Za-z0-9_]+|[^\s]+)$",
    # Characters the manual allows in the file's path and name (CANN 6.0.1: letters, digits, _ - . : and Chinese).
    "keep_dtype_path": r"^[A-Za-z0-9_\-.:/\u4e00-\u9fff]+$",
    # --modify_mixlist (JSON black/white/gray lists by operator type) only applies with allow_mix_precision;
    # --op_precision_mode (an .ini of OpType=high_precision|high_performance) picks an operator's
    # implementation, not its dtype: neither is the tool for keeping nodes in fp32 under force_fp16.
}

_FLOAT, _HALF = TensorProto.FLOAT, TensorProto.FLOAT16
# Inputs whose ONNX type is float32 only (Resize's and Upsample's scales): left float32 in an fp16 graph.
_FLOAT32_ONLY_INPUTS = {("Resize", 2), ("Upsample", 1)}


def name_unnamed_nodes(proto: onnx.ModelProto) -> int:
    """Give every unnamed top-level node a unique name (``<OpType>_<index>``), in place; returns how many.

    ATC's ``--keep_dtype`` (and its error messages) name nodes; the TorchScript exporter leaves some nameless.
    """
    taken = {n.name for n in proto.graph.node if n.name}
    count = 0
    for i, node in enumerate(proto.graph.node):
        if node.name:
            continue
        name = f"{node.op_type}_{i}"
        while name in taken:
            name += "_"
        node.name = name
        taken.add(name)
        count += 1
    return count


def float_tensors(proto: onnx.ModelProto) -> set[str]:
    """Names of every float32 tensor of ``proto`` (subgraphs included), by strict shape inference."""
    inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    names: set[str] = set()

    def visit(graph: onnx.GraphProto) -> None:
        for v in [*graph.input, *graph.output, *graph.value_info]:
            if v.type.tensor_type.elem_type == _FLOAT:
                names.add(v.name)
        names.update(t.name for t in graph.initializer if t.data_type == _FLOAT)
        for node in graph.node:
            if node.op_type == "Constant" and _float_attr(node, "value") is not None:
                names.add(node.output[0])
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g)

    visit(inferred.graph)
    return names


def postprocess_nodes(proto: onnx.ModelProto) -> list[str]:
    """Names of the top-level nodes after the network's last convolutions that touch a float tensor.

    A node is post-processing when a layer (a Conv, or a MatMul/Gemm with a constant operand: the Winograd
    head's products) lies upstream of it and none downstream: box decoding, score sigmoid, top-k, clipping, IoU,
    NMS and output padding of a detection export (empty for a raw-maps export, whose outputs are the last
    layers'). Constants are left out (ATC folds them into the consumers). Named in graph order; unnamed nodes
    raise (run :func:`name_unnamed_nodes` first). Meant for ``--conv_algorithm direct`` exports (what ATC
    takes); in a Winograd export the head's output transforms (DepthToSpace, MatMul on computed operands) come
    after its last layer and are listed too, which keeps them fp32 and costs no accuracy.
    """
    graph = proto.graph
    floats = float_tensors(proto)
    constant = {t.name for t in graph.initializer} | {n.output[0] for n in graph.node if n.op_type == "Constant"}
    layer = [n.op_type in ("Conv", "ConvTranspose")
             or (n.op_type in ("MatMul", "Gemm") and any(x in constant for x in n.input)) for n in graph.node]
    producers = {out: i for i, n in enumerate(graph.node) for out in n.output}
    feeds_conv = [False] * len(graph.node)
    after_conv = [False] * len(graph.node)
    for i, node in enumerate(graph.node):  # topological order: upstream first
        after_conv[i] = any(after_conv[producers[x]] or layer[producers[x]]
                            for x in _all_inputs(node) if x in producers)
    for i in range(len(graph.node) - 1, -1, -1):  # downstream first
        node = graph.node[i]
        if layer[i] or feeds_conv[i]:
            for x in _all_inputs(node):
                if x in producers:
                    feeds_conv[producers[x]] = True
    names = []
    for i, node in enumerate(graph.node):
        if not after_conv[i] or feeds_conv[i] or layer[i] or node.op_type == "Constant":
            continue
        if not any(x in floats for x in [*_all_inputs(node), *node.output]):
            continue
        if not node.name:
            raise ValueError(f"node {i} ({node.op_type}) has no name; call name_unnamed_nodes first")
        names.append(node.name)
    return names


def write_keep_dtype(names: Iterable[str], path: str | os.PathLike) -> Path:
    """Write ATC's ``--keep_dtype`` file (one node name per line, :data:`ATC_PRECISION`) atomically."""
    path = Path(path)
    names = list(names)
    line = re.compile(ATC_PRECISION["keep_dtype_line"])
    bad = [n for n in names if not line.match(n)]
    if bad:
        raise ValueError(f"{path}: node names ATC's --keep_dtype file can't hold (one name per line, no spaces): "
                         f"{bad[:5]}; rename those nodes in the ONNX graph")
    if not re.match(ATC_PRECISION["keep_dtype_path"], str(path)):
        raise ValueError(f"{path}: ATC takes --keep_dtype paths of letters, digits, _ - . : / only; "
                         "choose another file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, "".join(f"{n}\n" for n in names))


def check_keep_dtype_request(path: str | os.PathLike, postprocess: str) -> None:
    """Refuse, before anything is written, a ``--keep_dtype`` file ATC could not take or that would be empty."""
    if postprocess == "none":
        raise ValueError(f"--keep_dtype {path}: a --postprocess none export ends at the head's convolutions and has "
                         "no post-processing nodes to keep in fp32; drop --keep_dtype or export --postprocess v1")
    if not re.match(ATC_PRECISION["keep_dtype_path"], str(path)):
        raise ValueError(f"--keep_dtype {path}: ATC takes paths of letters, digits, _ - . : / only; "
                         "choose another file name")


def write_export_keep_dtype(onnx_path: str | os.PathLike, path: str | os.PathLike) -> list[str]:
    """Write the ``--keep_dtype`` file of an exported graph (:func:`postprocess_nodes`); returns the names."""
    names = postprocess_nodes(onnx.load(onnx_path))
    if not names:
        raise ValueError(f"{onnx_path} has no post-processing nodes after its last convolution; no --keep_dtype "
                         "file written")
    write_keep_dtype(names, path)
    return names


def read_keep_dtype(path: str | os.PathLike) -> list[str]:
    """Node names and ``OpType::`` entries of a ``--keep_dtype`` file (blank lines skipped)."""
    return [ln.strip() for ln in Path(path).read_text().splitlines() if ln.strip()]


def export_postprocess_alone(model, path: str | os.PathLike, image_size: tuple[int, int],
                             pre_nms_topk: int | None = None) -> Path:
    """The detection export's post-processing alone as an ONNX graph: inputs ``cls_3..7, box_3..7`` (float32 NCHW
    raw maps, as a ``--postprocess none`` export returns them), outputs the first four detection outputs.

    For measuring what fp16 does to box decoding, IoU and NMS with chosen maps (large boxes, say), without the
    network in front. Same operators as the full export's post-processing (the TorchScript exporter, opset 13).
    """
    import warnings

    import torch

    from spinenet.deploy.export import DETECTION_OUTPUTS, ExportWrapper, raw_output_names
    from spinenet.deploy.postprocess_export import DEFAULT_PRE_NMS_TOPK, generate_detections_export

    wrapper = ExportWrapper(model, image_size=image_size).eval()
    topk = pre_nms_topk or DEFAULT_PRE_NMS_TOPK

    class PostprocessAlone(torch.nn.Module):
        def forward(self, *maps):
            n = len(wrapper.levels)
            dets = generate_detections_export(dict(zip(wrapper.levels, maps[:n], strict=True)),
                                              dict(zip(wrapper.levels, maps[n:], strict=True)), wrapper.anchors,
                                              wrapper.image_info, model.params.postprocess, topk,
                                              background_channel=model.head.background_channel)
            return (dets["num_detections"], dets["detection_boxes"], dets["detection_classes"],
                    dets["detection_scores"])

    with torch.no_grad():
        example = model(wrapper.preprocess(wrapper.example_input()))
    names = raw_output_names(wrapper.levels[0], wrapper.levels[-1])
    maps = tuple(example[0][lvl] for lvl in wrapper.levels) + tuple(example[1][lvl] for lvl in wrapper.levels)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(PostprocessAlone(), maps, str(path), dynamo=False, opset_version=13, input_names=list(names),
                          output_names=list(DETECTION_OUTPUTS[:4]), do_constant_folding=True)
    proto = onnx.load(path)
    name_unnamed_nodes(proto)
    onnx.save(onnx.shape_inference.infer_shapes(proto, strict_mode=True), path)
    return path


def emulate_fp16(proto: onnx.ModelProto, keep_fp32: Iterable[str] = ()) -> onnx.ModelProto:
    """A copy of ``proto`` that computes as if every float tensor were float16, except in the nodes named in
    ``keep_fp32`` (top-level node names; ``OpType::X`` keeps every top-level node of type X).

    Types stay float32 (an fp16-typed graph is no measurement on a CPU: ONNX Runtime runs the operators it has no
    fp16 kernel for in float32 and drops the Cast pairs between them, so chains of them never round: x*x/x with
    x = 300 gives 300, not inf). Instead each fp16 node's float outputs pass through
    ``Cast(to=FLOAT16) -> Cast(to=FLOAT)``, which rounds them (nearest even, overflow to inf, subnormals kept), and
    float initializers and Constants feeding fp16 nodes are rounded copies. Operators that only select or move
    values (:data:`_SELECTING_OPS`) get no Casts: with rounded inputs their outputs are fp16 values already. A
    kept node reads the rounded outputs of its fp16 producers (ATC's Cast fp16 -> fp32 is exact) and the original
    constants, and its outputs are not rounded. I/O dtypes unchanged.
    """
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    keep = set(keep_fp32)
    kept_types = {k.split("::", 1)[1] for k in keep if k.startswith("OpType::")}
    names = {n.name for n in model.graph.node}
    unknown = sorted(k for k in keep if not k.startswith("OpType::") and k not in names)
    if unknown:
        raise ValueError(f"keep_fp32 names nodes the graph lacks: {unknown[:5]} (export and list from one graph)")
    floats = float_tensors(model)
    _Emulator(model.graph, floats, keep, kept_types).run()
    _clear_value_info(model.graph)
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    return model


# Operators whose float outputs are elements of their float inputs (or exact functions of them: Floor, Neg):
# fp16 values in, fp16 values out, no rounding needed.
_SELECTING_OPS = frozenset({"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Gather",
                            "GatherElements", "Concat", "Split", "Slice", "TopK", "Where", "Max", "Min", "MaxPool",
                            "Relu", "Clip", "Pad", "Expand", "Tile", "ReduceMax", "ReduceMin", "Neg", "Abs",
                            "Floor", "Ceil"})


class _Emulator:
    """Rewrites one graph in place for :func:`emulate_fp16`. ``rounded``: float tensors holding fp16 values."""

    def __init__(self, graph: onnx.GraphProto, floats: set[str], keep: set[str], kept_types: set[str],
                 all_half: bool = False, outer: _Emulator | None = None):
        self.graph, self.floats, self.keep, self.kept_types = graph, floats, keep, kept_types
        self.all_half, self.outer = all_half, outer
        self.rounded: set[str] = set()
        self.consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer if t.data_type == _FLOAT}
        self.init_names = set(self.consts)
        self.local = {x for n in graph.node for x in n.output} | {i.name for i in graph.input} | self.init_names
        self.cache: dict[str, str] = {}
        self.new_nodes: list[onnx.NodeProto] = []
        self.new_inits: list[onnx.TensorProto] = []

    def half(self, node: onnx.NodeProto) -> bool:
        return self.all_half or not (node.name in self.keep or node.op_type in self.kept_types)

    def rounded_input(self, name: str) -> str:
        """``name`` rounded to fp16: itself, a rounded copy of a constant, or a Cast pair."""
        if name in self.rounded:
            return name
        if name not in self.local and self.outer is not None:
            return self.outer.rounded_input(name)  # a body's reference to an outer-scope tensor
        if name not in self.cache:
            new = f"{name}__fp16"
            if name in self.consts:
                value = _round_half(self.consts[name])
                if name in self.init_names:
                    self.new_inits.append(numpy_helper.from_array(value, new))
                else:
                    self.new_nodes.append(helper.make_node("Constant", [], [new], name=f"{name}__const_fp16",
                                                           value=numpy_helper.from_array(value)))
            else:
                self.new_nodes += _cast_pair(name, new)
            self.cache[name] = new
        return self.cache[name]

    def run(self) -> None:
        graph = self.graph
        for inp in graph.input:
            if self.all_half and inp.name in self.floats:
                self.rounded.add(inp.name)  # loop-carried values: rounded where they are made
        for node in list(graph.node):
            half = self.half(node)
            if node.op_type == "Constant" and _float_attr(node, "value") is not None:
                self.consts[node.output[0]] = numpy_helper.to_array(_float_attr(node, "value"))
                self.new_nodes.append(node)
                continue
            if half:
                for i, x in enumerate(node.input):
                    if x and x in self.floats and (node.op_type, i) not in _FLOAT32_ONLY_INPUTS:
                        node.input[i] = self.rounded_input(x)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH and half:
                    self._subgraph(attr.g)
            self.new_nodes.append(node)
            if not half:
                continue
            for i, out in enumerate(node.output):
                if out not in self.floats:
                    continue
                if node.op_type not in _SELECTING_OPS:
                    node.output[i] = f"{out}__fp32"
                    self.new_nodes += _cast_pair(node.output[i], out)
                self.rounded.add(out)
        used = {x for n in self.new_nodes for x in _all_inputs(n)} | {o.name for o in graph.output}
        nodes = [n for n in self.new_nodes if n.op_type != "Constant" or n.output[0] in used]
        inits = [t for t in graph.initializer if t.name in used] + [t for t in self.new_inits if t.name in used]
        del graph.node[:]
        graph.node.extend(nodes)
        del graph.initializer[:]
        graph.initializer.extend(inits)

    def _subgraph(self, body: onnx.GraphProto) -> None:
        """An fp16 Loop/If body runs wholly in fp16; the outer tensors it reads come rounded."""
        local = {x for n in body.node for x in n.output} | {i.name for i in body.input} | \
                {t.name for t in body.initializer}
        outer_refs = {x for n in body.node for x in _all_inputs(n) if x and x not in local and x in self.floats}
        for x in sorted(outer_refs):
            _rename_tensor(body, x, self.rounded_input(x))
        _Emulator(body, self.floats, set(), set(), all_half=True, outer=self).run()


def _cast_pair(src: str, dst: str) -> list[onnx.NodeProto]:
    """``dst = float32(float16(src))``: ``src`` rounded to fp16."""
    return [helper.make_node("Cast", [src], [f"{dst}__half"], to=_HALF, name=f"{dst}__to_fp16"),
            helper.make_node("Cast", [f"{dst}__half"], [dst], to=_FLOAT, name=f"{dst}__to_fp32")]


def _round_half(array: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # overflow to inf is what fp16 does; the results show it
        return array.astype(np.float16).astype(np.float32)


def _float_attr(node: onnx.NodeProto, name: str) -> TensorProto | None:
    for attr in node.attribute:
        if attr.name == name and attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == _FLOAT:
            return attr.t
    return None


def _all_inputs(node: onnx.NodeProto) -> list[str]:
    """A node's inputs and, for Loop/If/Scan, the outer-scope tensors its bodies read."""
    names = [x for x in node.input if x]
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            body = attr.g
            local = {x for n in body.node for x in n.output} | {i.name for i in body.input} | \
                    {t.name for t in body.initializer}
            names += [x for n in body.node for x in _all_inputs(n) if x not in local]
    return names


def _rename_tensor(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename tensor ``old`` to ``new`` in every node of ``graph`` and its bodies (not in graph inputs/outputs)."""
    if old == new:
        return
    for node in graph.node:
        for i, x in enumerate(node.input):
            if x == old:
                node.input[i] = new
        for i, x in enumerate(node.output):
            if x == old:
                node.output[i] = new
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _rename_tensor(attr.g, old, new)


def _clear_value_info(graph: onnx.GraphProto) -> None:
    del graph.value_info[:]
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _clear_value_info(attr.g)
