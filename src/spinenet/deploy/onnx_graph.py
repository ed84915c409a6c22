"""Passes over an exported ONNX graph that keep it static for ATC, and the checks that it is.

Each pass works around one limit of ``torch.onnx.export`` (TorchScript exporter) or of ONNX shape inference;
none changes a floating-point value.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from spinenet.deploy.atc_ops import AtcOperatorList, check_atc_operators

# Operators whose output shape depends on the data: refused in every export (the graphs are static). ATC lists
# NonZero and NonMaxSuppression (CANN 5.0.4 and 8.0.0), so this is not about ATC: what ATC takes is checked against
# its published list (spinenet.deploy.atc_ops), which lacks Loop; the ONNX Runtime target keeps its Loop.
FORBIDDEN_OPS = ("NonZero", "Unique", "NonMaxSuppression", "Compress")
_EXACT_KINDS = "iub"  # integer, unsigned, bool: results that any evaluator computes bit for bit


def fold_integer_constants(proto: onnx.ModelProto, max_rounds: int = 20) -> int:
    """Fold shape arithmetic into constants, in place; returns the number of nodes folded.

    A node is replaced by a Constant when its inputs are all constants and its outputs are integer or boolean,
    and a ``Shape`` node when its input's shape is static; rounds of shape inference and folding repeat until
    nothing changes, and nodes nothing reads are dropped. Only integer/boolean results are folded, so no
    float arithmetic ever moves out of the runtime.

    Why: ``F.pad`` exports as ConstantOfShape/Concat/Reshape/Slice(step -1)/Transpose/Cast on the pad list, and
    the exporter's folding skips a Slice with step != 1 (its own warning says so). The pads then look computed,
    ONNX shape inference loses every shape after the first TF-'SAME' max-pool, the next pads (computed from
    those shapes) stay unknown too, and ATC wants Pad's pads constant.
    """
    total = 0
    for _ in range(max_rounds):
        folded = _fold_once(proto)
        total += folded
        if not folded:
            break
    return total


def _fold_once(proto: onnx.ModelProto) -> int:
    graph = proto.graph
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    inferred = onnx.shape_inference.infer_shapes(proto).graph
    static = {v.name: dims(v) for v in [*inferred.input, *inferred.value_info] if is_static(v)}
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    folded, new_nodes = 0, []
    for node in graph.node:
        values = None
        if node.op_type == "Constant":
            consts[node.output[0]] = numpy_helper.to_array(next(a.t for a in node.attribute if a.name == "value"))
        elif node.op_type == "Shape" and node.input[0] in static and not node.attribute:
            values = [np.array(static[node.input[0]], dtype=np.int64)]
        else:
            values = _evaluate_exact(node, consts, opset)
        if values is None:
            new_nodes.append(node)
            continue
        for name, value in zip(node.output, values, strict=True):
            consts[name] = np.asarray(value)
            new_nodes.append(onnx.helper.make_node("Constant", [], [name],
                                                   value=numpy_helper.from_array(np.asarray(value), name)))
        folded += 1
    del graph.node[:]
    graph.node.extend(_drop_dead_nodes(new_nodes, {o.name for o in graph.output}))
    return folded


def _evaluate_exact(node: onnx.NodeProto, consts: dict[str, np.ndarray], opset: int) -> list[np.ndarray] | None:
    """The outputs of ``node`` if all its inputs are constant and all its outputs integer/boolean, else None."""
    inputs = [i for i in node.input if i]
    if (not inputs or not all(i in consts for i in inputs) or node.domain not in ("", "ai.onnx")
            or any(a.type == onnx.AttributeProto.GRAPH for a in node.attribute)):
        return None
    feeds = {i: consts[i] for i in inputs}
    # A one-node model, so the evaluator takes the operator version of the model's opset (given a bare
    # node it uses the newest, e.g. Unsqueeze-13 with axes as an input, which breaks opset 11/12 graphs).
    graph = onnx.helper.make_graph(
        [node], "fold", [onnx.helper.make_tensor_value_info(i, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), None)
                         for i, v in feeds.items()],
        [onnx.helper.make_value_info(o, onnx.TypeProto()) for o in node.output if o])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    try:
        values = ReferenceEvaluator(model).run(None, feeds)
    except Exception:  # an op the reference evaluator lacks: leave it to the runtime
        return None
    if not all(np.asarray(v).dtype.kind in _EXACT_KINDS for v in values):
        return None
    return [np.asarray(v) for v in values]


def _drop_dead_nodes(nodes: list[onnx.NodeProto], outputs: set[str]) -> list[onnx.NodeProto]:
    """Nodes that (transitively) feed a graph output or a subgraph; others are removed."""
    needed = set(outputs)
    kept = []
    for node in reversed(nodes):
        if any(o in needed for o in node.output) or not node.output:
            kept.append(node)
            needed.update(i for i in node.input if i)
            needed.update(_subgraph_inputs(node))
    return kept[::-1]


def _subgraph_inputs(node: onnx.NodeProto) -> set[str]:
    """Names a node's subgraphs read from the enclosing scope (and their own names, harmlessly)."""
    names: set[str] = set()
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            for inner in attr.g.node:
                names.update(i for i in inner.input if i)
                names.update(_subgraph_inputs(inner))
    return names


def annotate_loop_shapes(proto: onnx.ModelProto) -> None:
    """Give each Loop's state variables static types: in the body's inputs and in the Loop's outputs.

    The exporter declares a scripted loop body's inputs with symbolic dims, and ONNX shape inference drops the
    shape of a Loop's loop-carried outputs (in general they may change between iterations). Ours can't: the
    body's inputs take the static types of the initial values, and after inference the body must map each
    state to the same type (checked) before the Loop's outputs get that type too.
    """
    graph = proto.graph
    types = _static_types(onnx.shape_inference.infer_shapes(proto, strict_mode=True).graph)
    loops = [n for n in graph.node if n.op_type == "Loop"]
    for node in loops:
        body = next(a.g for a in node.attribute if a.name == "body")
        for i, state in enumerate(node.input[2:]):  # after the trip count and the condition
            if state not in types:
                raise ValueError(f"Loop {node.name}: the initial value of state {i} has no static shape")
            body.input[2 + i].type.CopyFrom(types[state])
        del body.value_info[:]
    inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True).graph
    known = {v.name for v in graph.value_info}
    for node in (n for n in inferred.node if n.op_type == "Loop"):
        body = next(a.g for a in node.attribute if a.name == "body")
        body_out = {v.name: v.type for v in [*body.output, *body.value_info]}
        for i, (state, out) in enumerate(zip(node.input[2:], node.output, strict=False)):
            if body_out.get(body.output[1 + i].name) != types[state]:  # body outputs: condition, then states
                raise ValueError(f"Loop {node.name}: state {i} may change type between iterations")
            if out not in known:
                graph.value_info.append(onnx.helper.make_value_info(out, types[state]))


def _static_types(graph: onnx.GraphProto) -> dict[str, onnx.TypeProto]:
    """Types of the graph's values with fully static shapes (inputs, value_info, initializers, Constants)."""
    types = {v.name: v.type for v in [*graph.input, *graph.value_info, *graph.output] if is_static(v)}
    for t in graph.initializer:
        types[t.name] = onnx.helper.make_tensor_type_proto(t.data_type, list(t.dims))
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Constant" and attr.name == "value":
                types[node.output[0]] = onnx.helper.make_tensor_type_proto(attr.t.data_type, list(attr.t.dims))
    return types


def check_exported_model(proto: onnx.ModelProto, opset: int | None = None,
                         operators: AtcOperatorList | None = None) -> None:
    """Raise ``ValueError`` unless ``proto`` passes ``onnx.checker`` (full), strict shape inference, has only
    static shapes (graph inputs, outputs, value_info, subgraphs included), none of :data:`FORBIDDEN_OPS`,
    constant ``Pad`` pads, the default-domain ``opset`` if one is given, and, given ``operators`` (an
    :class:`~spinenet.deploy.atc_ops.AtcOperatorList`), only operators on that list, subgraphs included."""
    onnx.checker.check_model(proto, full_check=True)
    if opset is not None:
        version = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
        if version != opset:
            raise ValueError(f"the model has opset {version}, expected {opset}")
    inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    bad_ops = sorted(set(all_op_types(inferred.graph)) & set(FORBIDDEN_OPS))
    if bad_ops:
        raise ValueError(f"the graph contains {', '.join(bad_ops)}, whose output shapes depend on the data "
                         "(the exported graphs are static)")
    dynamic = [f"{v.name} {dims(v)}" for v in _all_value_infos(inferred.graph) if not is_static(v)]
    if dynamic:
        raise ValueError(f"{len(dynamic)} tensors have no static shape, e.g. {'; '.join(dynamic[:5])}")
    computed = computed_pads(proto.graph)
    if computed:
        raise ValueError(f"Pad nodes with computed (not constant) pads: {', '.join(computed[:5])}")
    if operators is not None:
        check_atc_operators(proto, operators)


def computed_pads(graph: onnx.GraphProto, outer_consts: frozenset[str] = frozenset()) -> list[str]:
    """Names of the Pad nodes (subgraphs included) whose pads input is not an initializer or a Constant."""
    consts = set(outer_consts) | {t.name for t in graph.initializer}
    consts |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    bad = []
    for node in graph.node:
        if node.op_type == "Pad" and len(node.input) > 1 and node.input[1] not in consts:
            bad.append(node.name or node.output[0])
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                bad += computed_pads(attr.g, frozenset(consts))
    return bad


def all_op_types(graph: onnx.GraphProto) -> list[str]:
    """Operator types of ``graph`` and of every subgraph in it."""
    out = []
    for node in graph.node:
        out.append(node.op_type)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                out += all_op_types(attr.g)
    return out


def _all_value_infos(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    out = [*graph.input, *graph.output, *graph.value_info]
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                out += _all_value_infos(attr.g)
    return out


def dims(v: onnx.ValueInfoProto) -> Sequence[int | str] | None:
    """The dims of a tensor value_info (ints, or names / '?' where unknown); None without a shape."""
    t = v.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]


def is_static(v: onnx.ValueInfoProto) -> bool:
    d = dims(v)
    return d is not None and all(isinstance(x, int) for x in d)
