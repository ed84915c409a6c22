"""fp16 the way Huawei ATC compiles a model, emulated as an ONNX graph, and the ``--keep_dtype`` list that keeps
chosen nodes in fp32.

ATC compiles with ``--precision_mode=force_fp16`` unless told otherwise (:data:`ATC_PRECISION`): every operator
that has an fp16 implementation runs in fp16, whatever the source graph's dtype. A deployed model's accuracy on
an Ascend NPU is therefore its accuracy with every float tensor in fp16, which :func:`convert_to_fp16` writes as
an ONNX graph that ONNX Runtime runs on a CPU:

* every float32 tensor becomes float16: initializers and Constant values (numpy rounding: nearest even,
  subnormals kept, overflow to inf), ``Cast(to=FLOAT)``, ConstantOfShape values, loop-carried values and
  whole ``Loop``/``If`` bodies;
* the graph's inputs and outputs keep their dtypes (uint8 in, int32/float32 out), as ATC's do unless
  ``--input_fp16_nodes`` / ``--output_type`` say otherwise: Casts at the edges;
* nodes named in ``keep_fp32`` stay float32, with Casts where their inputs and outputs meet fp16 tensors: what
  ATC does with the nodes of a ``--keep_dtype`` file (they keep the source graph's dtype).

What this measures is fp16 *storage* of every tensor with each operator computed by ONNX Runtime's CPU kernels
(fp16 kernels where it has them, else in float32 between Casts that its graph transformer inserts): a
convolution's products are then accumulated in float32 and rounded once, as the NPU's cube unit does (fp16
inputs, fp32 accumulation). It does not reproduce the NPU's own transcendental approximations (Exp, Sigmoid)
or an fp16 accumulator in a vector reduction, so it is the floor of what fp16 costs, not a bound above it.

:func:`postprocess_nodes` picks the nodes after the network's last convolutions (box decoding, IoU, NMS, top-k,
score thresholds), and :func:`write_keep_dtype` writes their names in ATC's ``--keep_dtype`` format.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

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
_SUBGRAPH_OPS = ("Loop", "If", "Scan")


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

    A node is post-processing when a Conv lies upstream of it and none downstream: box decoding, score sigmoid,
    top-k, clipping, IoU, NMS and output padding of a detection export (empty for a raw-maps export, whose
    outputs are the last convolutions'). Constants are left out (ATC folds them into the consumers). Named in
    graph order; unnamed nodes raise (run :func:`name_unnamed_nodes` first).
    """
    graph = proto.graph
    floats = float_tensors(proto)
    producers = {out: i for i, n in enumerate(graph.node) for out in n.output}
    feeds_conv = [False] * len(graph.node)
    after_conv = [False] * len(graph.node)
    for i, node in enumerate(graph.node):  # topological order: upstream first
        after_conv[i] = any(after_conv[producers[x]] or graph.node[producers[x]].op_type == "Conv"
                            for x in _all_inputs(node) if x in producers)
    for i in range(len(graph.node) - 1, -1, -1):  # downstream first
        node = graph.node[i]
        if node.op_type == "Conv" or feeds_conv[i]:
            for x in _all_inputs(node):
                if x in producers:
                    feeds_conv[producers[x]] = True
    names = []
    for i, node in enumerate(graph.node):
        if not after_conv[i] or feeds_conv[i] or node.op_type in ("Conv", "Constant"):
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
        raise ValueError(f"{path}: ATC takes --keep_dtype paths of letters, digits, _ - . : only; "
                         "choose another file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write("".join(f"{n}\n" for n in names))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_keep_dtype(path: str | os.PathLike) -> list[str]:
    """Node names and ``OpType::`` entries of a ``--keep_dtype`` file (blank lines skipped)."""
    return [ln.strip() for ln in Path(path).read_text().splitlines() if ln.strip()]


def convert_to_fp16(proto: onnx.ModelProto, keep_fp32: Iterable[str] = ()) -> onnx.ModelProto:
    """A copy of ``proto`` with every float32 tensor in float16 except the nodes named in ``keep_fp32``
    (top-level node names; ``OpType::X`` entries keep every top-level node of type X); I/O dtypes unchanged."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    keep = set(keep_fp32)
    kept_types = {k.split("::", 1)[1] for k in keep if k.startswith("OpType::")}
    names = {n.name for n in model.graph.node}
    unknown = sorted(k for k in keep if not k.startswith("OpType::") and k not in names)
    if unknown:
        raise ValueError(f"keep_fp32 names nodes the graph lacks: {unknown[:5]} (export and list from one graph)")
    floats = float_tensors(model)
    graph = model.graph
    outputs = [o.name for o in graph.output if o.name in floats]
    for name in outputs:  # the producer writes '<name>__internal' in its own dtype; a final Cast restores the name
        _rename_tensor(graph, name, f"{name}__internal")
        floats.add(f"{name}__internal")
    _Converter(graph, floats, keep, kept_types).run()
    for name in outputs:
        graph.node.append(helper.make_node("Cast", [f"{name}__internal"], [name], to=_FLOAT,
                                           name=f"{name}__to_fp32"))
    _clear_value_info(graph)
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    return model


class _Converter:
    """Rewrites one graph in place: each node in its precision, Casts (or converted initializer copies) where a
    tensor's dtype differs from what its consumer runs in."""

    def __init__(self, graph: onnx.GraphProto, floats: set[str], keep: set[str], kept_types: set[str],
                 all_half: bool = False, outer: _Converter | None = None):
        self.graph, self.floats, self.keep, self.kept_types = graph, floats, keep, kept_types
        self.all_half, self.outer = all_half, outer
        self.home: dict[str, int] = {}  # float tensor -> its dtype in the converted graph
        self.inits = {t.name: t for t in graph.initializer if t.data_type == _FLOAT}
        self.cache: dict[tuple[str, int], str] = {}
        self.new_nodes: list[onnx.NodeProto] = []
        self.new_inits: list[onnx.TensorProto] = []

    def precision(self, node: onnx.NodeProto) -> int:
        if self.all_half:
            return _HALF
        return _FLOAT if node.name in self.keep or node.op_type in self.kept_types else _HALF

    def want(self, name: str, dtype: int) -> str:
        """A tensor holding ``name``'s value in ``dtype``: itself, a converted initializer copy, or a Cast."""
        if name in self.inits:
            home = _FLOAT
        elif name in self.home:
            home = self.home[name]
        elif self.outer is not None:  # a body's reference to an outer-scope tensor
            return self.outer.want(name, dtype)
        else:
            home = _FLOAT  # graph input
        if home == dtype:
            return name
        key = (name, dtype)
        if key not in self.cache:
            suffix = "__fp16" if dtype == _HALF else "__fp32"
            if name in self.inits:
                array = numpy_helper.to_array(self.inits[name])
                self.new_inits.append(numpy_helper.from_array(_cast(array, dtype), name + suffix))
            else:
                self.new_nodes.append(helper.make_node("Cast", [name], [name + suffix], to=dtype,
                                                       name=f"{name}__cast{suffix}"))
            self.cache[key] = name + suffix
        return self.cache[key]

    def run(self) -> None:
        graph = self.graph
        for inp in graph.input:
            if inp.name in self.floats:
                self.home[inp.name] = _HALF if self.all_half else _FLOAT
                if self.all_half:
                    inp.type.tensor_type.elem_type = _HALF
        for node in list(graph.node):
            p = self.precision(node)
            for i, x in enumerate(node.input):
                if x and x in self.floats:
                    node.input[i] = self.want(x, _FLOAT if (node.op_type, i) in _FLOAT32_ONLY_INPUTS else p)
            if p == _HALF:
                _node_to_half(node)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    self._subgraph(attr.g, p)
            for out in node.output:
                if out in self.floats:
                    self.home[out] = p
            self.new_nodes.append(node)
        if self.all_half:
            for out in graph.output:
                if out.name in self.floats:
                    src = self.want(out.name, _HALF)
                    if src != out.name:
                        raise ValueError(f"subgraph output {out.name} is not computed in fp16")
                    out.type.tensor_type.elem_type = _HALF
        used = {x for n in self.new_nodes for x in _all_inputs(n)} | {o.name for o in graph.output}
        kept_inits = [t for t in graph.initializer if t.name in used]
        del graph.node[:]
        graph.node.extend(self.new_nodes)
        del graph.initializer[:]
        graph.initializer.extend(kept_inits + [t for t in self.new_inits if t.name in used])

    def _subgraph(self, body: onnx.GraphProto, p: int) -> None:
        """A Loop/If body runs wholly in its node's precision; outer tensors it reads come in that dtype."""
        local = {x for n in body.node for x in n.output} | {i.name for i in body.input} | \
                {t.name for t in body.initializer}
        outer_refs = {x for n in body.node for x in _all_inputs(n) if x and x not in local and x in self.floats}
        for x in sorted(outer_refs):
            _rename_tensor(body, x, self.want(x, p))
        if p == _HALF:
            _Converter(body, self.floats, set(), set(), all_half=True, outer=self).run()


def _node_to_half(node: onnx.NodeProto) -> None:
    """Dtype-carrying attributes of a node that runs in fp16."""
    if node.op_type == "Cast":
        for attr in node.attribute:
            if attr.name == "to" and attr.i == _FLOAT:
                attr.i = _HALF
    elif node.op_type in ("Constant", "ConstantOfShape"):
        tensor = _float_attr(node, "value")
        if tensor is not None:
            tensor.CopyFrom(numpy_helper.from_array(_cast(numpy_helper.to_array(tensor), _HALF), tensor.name))
        elif node.op_type == "ConstantOfShape" and not any(a.name == "value" for a in node.attribute):
            node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(np.zeros(1, np.float16))))


def _float_attr(node: onnx.NodeProto, name: str) -> TensorProto | None:
    for attr in node.attribute:
        if attr.name == name and attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == _FLOAT:
            return attr.t
    return None


def _cast(array: np.ndarray, dtype: int) -> np.ndarray:
    with np.errstate(over="ignore"):  # overflow to inf is what fp16 does; callers see it in the results
        return array.astype(np.float16 if dtype == _HALF else np.float32)


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
