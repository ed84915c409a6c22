"""Read a frozen TensorFlow graph (``GraphDef`` ``.pb``) without TensorFlow.

A frozen graph (``freeze_graph`` / ``convert_variables_to_constants``) holds each variable's value in a
``Const`` node whose ``value`` attribute is a ``TensorProto``. This module decodes just enough of the protobuf
schema to list the nodes (name, op, inputs) and decode ``Const`` values:

* ``GraphDef``: ``node`` = 1 (repeated ``NodeDef``), ``library`` = 2, ``versions`` = 4;
* ``NodeDef``: ``name`` = 1, ``op`` = 2, ``input`` = 3, ``device`` = 4, ``attr`` = 5 (map ``string -> AttrValue``);
* ``AttrValue``: ``type`` = 6, ``shape`` = 7, ``tensor`` = 8 (others ignored);
* ``TensorProto``: ``dtype`` = 1, ``tensor_shape`` = 2, ``tensor_content`` = 4 (raw little-endian bytes), or the
  typed repeated fields (``float_val`` = 5, ``double_val`` = 6, ``int_val`` = 7, ``int64_val`` = 10,
  ``bool_val`` = 11, ``half_val`` = 13), where fewer values than elements means "repeat the last one".

Checked against TensorFlow 2.20: values are bit-identical to ``tensor_util.MakeNdarray``.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spinenet.convert.tf_checkpoint import _DTYPES, TFCheckpointError, _dtype_name, _int64, _last, parse_proto

__all__ = ["GraphDefError", "GraphNode", "FrozenGraph"]

DT_HALF = 19
DT_BFLOAT16 = 14


class GraphDefError(ValueError):
    """A file that is not a (complete) TensorFlow GraphDef."""


@dataclass(frozen=True)
class GraphNode:
    name: str
    op: str
    inputs: tuple[str, ...]
    attrs: dict[str, bytes]  # attribute name -> serialized AttrValue

    def attr(self, key: str) -> dict[int, list[int | bytes]]:
        """The decoded ``AttrValue`` fields of attribute ``key`` (empty if absent)."""
        raw = self.attrs.get(key)
        return parse_proto(raw) if raw is not None else {}

    @property
    def dtype(self) -> int | None:
        """The ``dtype`` attribute (a TF DataType enum), if any."""
        value = self.attr("dtype").get(6)
        return int(value[-1]) if value else None

    def shape(self) -> tuple[int, ...] | None:
        """The ``shape`` attribute (e.g. of a Placeholder); -1 for unknown dims, None for unknown rank."""
        raw = self.attr("shape").get(7)
        return _decode_shape(raw[-1]) if raw else None  # type: ignore[arg-type]


def _decode_shape(raw: bytes) -> tuple[int, ...] | None:
    fields = parse_proto(raw)
    if _last(fields, 3, 0):  # unknown_rank
        return None
    return tuple(_int64(int(_last(parse_proto(d), 1, 0))) for d in fields.get(2, []))  # type: ignore[arg-type]


def _tensor_shape_and_dtype(tensor: dict[int, list[int | bytes]]) -> tuple[int, tuple[int, ...]]:
    shape = _decode_shape(_last(tensor, 2, b"")) or ()  # type: ignore[arg-type]
    return int(_last(tensor, 1, 0)), shape


def _repeated_values(values: list[int | bytes], fmt: str, size: int) -> list:
    """A repeated numeric field: packed (one LEN value) or unpacked (one value per element)."""
    out: list = []
    for v in values:
        if isinstance(v, bytes):  # packed
            out.extend(struct.unpack(f"<{len(v) // size}{fmt}", v))
        else:
            out.append(v)
    return out


def _packed_varints(values: list[int | bytes]) -> list[int]:
    out: list[int] = []
    for v in values:
        if isinstance(v, bytes):
            pos = 0
            while pos < len(v):
                n, shift = 0, 0
                while True:
                    b = v[pos]
                    pos += 1
                    n |= (b & 0x7F) << shift
                    shift += 7
                    if not b & 0x80:
                        break
                out.append(n)
        else:
            out.append(v)
    return out


def decode_tensor(raw: bytes, name: str = "tensor") -> np.ndarray:
    """A serialized ``TensorProto`` -> numpy array (numeric dtypes; half/bfloat16 -> float32)."""
    t = parse_proto(raw)
    dtype, shape = _tensor_shape_and_dtype(t)
    count = int(np.prod(shape, dtype=np.int64))
    content = _last(t, 4, b"")
    if dtype in (DT_HALF, DT_BFLOAT16):
        if content:
            bits = np.frombuffer(content, dtype="<u2")  # type: ignore[arg-type]
        else:
            bits = np.asarray(_packed_varints(t.get(13, [])), dtype=np.uint16)
        values = bits.astype(np.uint32) << 16 if dtype == DT_BFLOAT16 else bits
        arr = values.view(np.float32) if dtype == DT_BFLOAT16 else values.view(np.float16).astype(np.float32)
        return _fill(arr, count, shape, name)
    if dtype not in _DTYPES or _DTYPES[dtype][1] is None:
        raise GraphDefError(f"{name}: Const of dtype {_dtype_name(dtype)} is not decoded by this reader")
    np_dtype = _DTYPES[dtype][1]
    assert np_dtype is not None
    if content:
        if len(content) != count * np_dtype.itemsize:  # type: ignore[arg-type]
            raise GraphDefError(f"{name}: tensor_content has {len(content)} bytes, shape {shape} of "  # type: ignore
                                f"{_dtype_name(dtype)} needs {count * np_dtype.itemsize}")
        return np.frombuffer(content, dtype=np_dtype).reshape(shape).copy()  # type: ignore[arg-type]
    kind = np_dtype.kind
    if np_dtype == np.float32:
        values = _repeated_values(t.get(5, []), "f", 4)
        values = [struct.unpack("<f", struct.pack("<I", v))[0] if isinstance(v, int) else v for v in values]
    elif np_dtype == np.float64:
        values = _repeated_values(t.get(6, []), "d", 8)
        values = [struct.unpack("<d", struct.pack("<Q", v))[0] if isinstance(v, int) else v for v in values]
    elif np_dtype == np.int64:
        values = [_int64(v) for v in _packed_varints(t.get(10, []))]
    elif np_dtype == np.bool_:
        values = [bool(v) for v in _packed_varints(t.get(11, []))]
    elif kind in "iu" and np_dtype.itemsize <= 4:
        values = [v - (1 << 64) if v >= 1 << 63 else v for v in _packed_varints(t.get(7, []))]
    else:
        raise GraphDefError(f"{name}: Const of dtype {_dtype_name(dtype)} without tensor_content is not decoded")
    return _fill(np.asarray(values, dtype=np_dtype), count, shape, name)


def _fill(values: np.ndarray, count: int, shape: tuple[int, ...], name: str) -> np.ndarray:
    """TensorProto semantics: fewer values than elements repeat the last one (none means zeros)."""
    if values.size > count:
        raise GraphDefError(f"{name}: {values.size} values for shape {shape}")
    if values.size < count:
        pad = values[-1] if values.size else np.zeros((), values.dtype)
        values = np.concatenate([values, np.full(count - values.size, pad, values.dtype)])
    return values.reshape(shape)


class FrozenGraph:
    """The nodes of a ``GraphDef`` file, with its ``Const`` values decoded on demand.

    ``FrozenGraph(path)`` reads and indexes the file; ``consts`` maps each Const node's name to the node,
    ``const_shape(name)`` / ``const_value(name)`` give its tensor's shape and value.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"frozen graph {self.path} not found")
        data = self.path.read_bytes()
        try:
            top = parse_proto(data)
        except TFCheckpointError as e:
            raise GraphDefError(f"{self.path} is not a complete TensorFlow GraphDef ({e}): truncated, or another "
                                "kind of file") from None
        raw_nodes = top.get(1, [])
        if not raw_nodes or not all(isinstance(n, bytes) for n in raw_nodes):
            hint = ""
            if 2 in top:  # SavedModel: schema version = 1 (varint), meta_graphs = 2
                hint = " It looks like a SavedModel (saved_model.pb), which this reader does not import."
            raise GraphDefError(f"{self.path} is not a TensorFlow GraphDef (no nodes found).{hint}")
        self.nodes: list[GraphNode] = []
        try:
            for raw in raw_nodes:
                f = parse_proto(raw)  # type: ignore[arg-type]
                attrs = {}
                for entry in f.get(5, []):
                    e = parse_proto(entry)  # type: ignore[arg-type]
                    attrs[_last(e, 1, b"").decode()] = _last(e, 2, b"")  # type: ignore[union-attr]
                self.nodes.append(GraphNode(
                    name=_last(f, 1, b"").decode(), op=_last(f, 2, b"").decode(),  # type: ignore[union-attr]
                    inputs=tuple(i.decode() for i in f.get(3, [])), attrs=attrs))  # type: ignore[union-attr]
        except (TFCheckpointError, UnicodeDecodeError, AttributeError) as e:
            raise GraphDefError(f"{self.path} is not a valid TensorFlow GraphDef ({e}): truncated or corrupt") from None
        if not all(n.name and n.op for n in self.nodes):
            raise GraphDefError(f"{self.path} is not a TensorFlow GraphDef (nodes without a name or op)")
        self.consts: dict[str, GraphNode] = {n.name: n for n in self.nodes if n.op == "Const"}
        self._tensor_cache: dict[str, tuple[int, tuple[int, ...]]] = {}

    def _tensor_raw(self, name: str) -> bytes:
        node = self.consts[name]
        raw = node.attr("value").get(8)
        if not raw:
            raise GraphDefError(f"{self.path}: Const {name} has no tensor value")
        return raw[-1]  # type: ignore[return-value]

    def const_dtype_shape(self, name: str) -> tuple[int, tuple[int, ...]]:
        """(TF DataType enum, shape) of Const ``name`` without decoding its values."""
        if name not in self._tensor_cache:
            self._tensor_cache[name] = _tensor_shape_and_dtype(parse_proto(self._tensor_raw(name)))
        return self._tensor_cache[name]

    def const_shape(self, name: str) -> tuple[int, ...]:
        return self.const_dtype_shape(name)[1]

    def const_value(self, name: str) -> np.ndarray:
        return decode_tensor(self._tensor_raw(name), f"{self.path}: {name}")

    def ops(self, prefix: str = "") -> set[str]:
        """The op types of the nodes whose name starts with ``prefix``."""
        return {n.op for n in self.nodes if n.name.startswith(prefix)}

    def placeholders(self) -> list[GraphNode]:
        return [n for n in self.nodes if n.op == "Placeholder"]

    def __repr__(self) -> str:
        return f"FrozenGraph({str(self.path)!r}, {len(self.nodes)} nodes, {len(self.consts)} Const)"
