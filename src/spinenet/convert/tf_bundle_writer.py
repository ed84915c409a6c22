"""Write TensorFlow checkpoints (V2 "tensor bundle" format) without TensorFlow.

The counterpart of :mod:`spinenet.convert.tf_checkpoint`: ``PREFIX.index`` (a LevelDB SSTable whose empty key
holds the ``BundleHeaderProto`` and whose other keys are tensor names with their ``BundleEntryProto``) and
``PREFIX.data-0000K-of-0000N`` (the tensors' raw little-endian bytes, back to back). With the default options
the bytes are the ones TF's own ``BundleWriter`` writes for the same tensors added in name order, as
``tf.compat.v1.train.Saver`` adds them (tested against a checkpoint TF 2.20 wrote): TF's ``TableBuilder``
defaults (256 KiB blocks, a restart every 16 keys, no compression), index keys shortened as LevelDB's
``FindShortestSeparator`` / ``FindShortSuccessor`` do, proto3 fields at their default value left out.

The other options (several shards, tiny blocks, snappy-framed blocks, big-endian headers, slices, bfloat16)
exist so the reader's tests can build inputs TF writes only in rarer setups. Files are written under temporary
names and renamed into place, index last, so an interrupted write never leaves a checkpoint that looks whole.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from spinenet.convert.crc32c import crc32c, mask_crc
from spinenet.io_checks import atomic_write

__all__ = ["write_bundle", "write_checkpoint_state", "BF16", "Sliced", "DTYPE_ENUM", "TF_BLOCK_SIZE"]

MAGIC = 0xDB4775248B80FB57  # LevelDB table magic
TF_BLOCK_SIZE = 262144  # tensorflow/core/lib/io/table_options.h: block_size
TF_RESTART_INTERVAL = 16  # ... block_restart_interval
BUNDLE_VERSION = 1  # tensorflow/core/util/tensor_bundle/tensor_bundle.h: kTensorBundleVersion

# numpy dtype name -> TF DataType enum (tensorflow/core/framework/types.proto)
DTYPE_ENUM = {
    "float32": 1,
    "float64": 2,
    "int32": 3,
    "uint8": 4,
    "int16": 5,
    "int8": 6,
    "string": 7,
    "complex64": 8,
    "int64": 9,
    "bool": 10,
    "bfloat16": 14,
    "uint16": 17,
    "complex128": 18,
    "float16": 19,
    "uint32": 22,
    "uint64": 23,
}


class BF16:
    """Marks a float32 array to be stored as bfloat16 (truncating; tests use exactly representable values)."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = np.asarray(values, dtype=np.float32)


class Sliced:
    """A partitioned variable: ``values`` stored as the given slices, one (start, length) per dim.

    A length of -1 means "the whole dimension" (TF's full extent, start 0).
    """

    def __init__(self, values: np.ndarray, slices: list[tuple[tuple[int, int], ...]]) -> None:
        self.values = np.asarray(values)
        self.slices = slices


# --- protobuf encoding ------------------------------------------------------------------------------------


def varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # int64 negatives are 10-byte varints
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_varint(num: int, v: int) -> bytes:
    return varint(num << 3) + varint(v)


def field_bytes(num: int, b: bytes) -> bytes:
    return varint((num << 3) | 2) + varint(len(b)) + b


def field_fixed32(num: int, v: int) -> bytes:
    return varint((num << 3) | 5) + struct.pack("<I", v)


def shape_proto(shape: tuple[int, ...]) -> bytes:
    return b"".join(field_bytes(2, field_varint(1, d) if d else b"") for d in shape)


def ordered_num(n: int) -> bytes:
    """OrderedCode WriteNumIncreasing."""
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([len(body)]) + body


def ordered_string(s: bytes) -> bytes:
    """OrderedCode WriteString."""
    out = bytearray()
    for b in s:
        out += b"\x00\xff" if b == 0 else b"\xff\x00" if b == 0xFF else bytes([b])
    return bytes(out) + b"\x00\x01"


def ordered_signed(v: int) -> bytes:
    """OrderedCode WriteSignedNumIncreasing (values below 2**55 in magnitude)."""
    x = ~v if v < 0 else v
    n = next(n for n in range(1, 9) if x < 1 << (7 * n - 1))
    body = bytearray(v.to_bytes(n, "big", signed=True))
    body[0] ^= (0xFF << (8 - n)) & 0xFF  # n leading one-bits give the length
    return bytes(body)


def slice_key(name: str, extents: tuple[tuple[int, int], ...]) -> bytes:
    """TF's EncodeTensorNameSlice."""
    key = ordered_num(0) + ordered_string(name.encode()) + ordered_num(len(extents))
    return key + b"".join(ordered_signed(a) + ordered_signed(n) for a, n in extents)


def slice_proto(extents: tuple[tuple[int, int], ...]) -> bytes:
    """TensorSliceProto: repeated Extent {start, length}; a full extent is an empty message."""
    return b"".join(
        field_bytes(1, b"" if n == -1 else field_varint(1, a) + field_varint(2, n)) for a, n in extents
    )


# --- SSTable encoding -------------------------------------------------------------------------------------


class _BlockBuilder:
    """LevelDB's BlockBuilder: prefix-compressed entries with a restart point every ``restart_interval``."""

    def __init__(self, restart_interval: int) -> None:
        self.interval = restart_interval
        self.buf = bytearray()
        self.restarts = [0]
        self.count = 0
        self.last = b""

    def add(self, key: bytes, value: bytes) -> None:
        shared = 0
        if self.count < self.interval:
            n = min(len(self.last), len(key))
            while shared < n and self.last[shared] == key[shared]:
                shared += 1
        else:
            self.restarts.append(len(self.buf))
            self.count = 0
        self.buf += varint(shared) + varint(len(key) - shared) + varint(len(value)) + key[shared:] + value
        self.last = key
        self.count += 1

    def size_estimate(self) -> int:
        return len(self.buf) + 4 * len(self.restarts) + 4

    def empty(self) -> bool:
        return not self.buf

    def finish(self) -> bytes:
        return bytes(self.buf) + b"".join(struct.pack("<I", r) for r in self.restarts) + \
            struct.pack("<I", len(self.restarts))


def _shortest_separator(start: bytes, limit: bytes) -> bytes:
    """LevelDB BytewiseComparator::FindShortestSeparator: a short key in [start, limit)."""
    n = min(len(start), len(limit))
    i = 0
    while i < n and start[i] == limit[i]:
        i += 1
    if i < n and start[i] < 0xFF and start[i] + 1 < limit[i]:
        return start[:i] + bytes([start[i] + 1])
    return start


def _short_successor(key: bytes) -> bytes:
    """LevelDB BytewiseComparator::FindShortSuccessor: a short key >= ``key``."""
    for i, b in enumerate(key):
        if b != 0xFF:
            return key[:i] + bytes([b + 1])
    return key


def snappy_literal(data: bytes) -> bytes:
    """A valid snappy stream made only of literals (enough to exercise the reader's decode path)."""
    out = bytearray(varint(len(data)))
    for i in range(0, len(data), 60):
        chunk = data[i : i + 60]
        out.append((len(chunk) - 1) << 2)
        out += chunk
    return bytes(out)


def table_bytes(items: list[tuple[bytes, bytes]], block_size: int = TF_BLOCK_SIZE,
                restart_interval: int = TF_RESTART_INTERVAL, compression: int = 0) -> bytes:
    """An SSTable of ``items`` (sorted by key) as LevelDB's / TF's TableBuilder lays it out."""
    out = bytearray()

    def emit(block: bytes) -> bytes:
        contents = snappy_literal(block) if compression == 1 else block
        handle = varint(len(out)) + varint(len(contents))
        trailer_type = bytes([compression])
        out.extend(contents + trailer_type + struct.pack("<I", mask_crc(crc32c(contents + trailer_type))))
        return handle

    index = _BlockBuilder(1)
    data = _BlockBuilder(restart_interval)
    pending: bytes | None = None  # handle of the last flushed block, indexed once the next key is known
    data_last = b""
    for key, value in items:
        if pending is not None:
            index.add(_shortest_separator(data_last, key), pending)
            pending = None
        data.add(key, value)
        data_last = key
        if data.size_estimate() >= block_size:
            pending = emit(data.finish())
            data = _BlockBuilder(restart_interval)
    if not data.empty():
        pending = emit(data.finish())
    if pending is not None:
        index.add(_short_successor(data_last), pending)
    meta_handle = emit(_BlockBuilder(restart_interval).finish())
    index_handle = emit(index.finish())
    footer = (meta_handle + index_handle).ljust(40, b"\0") + struct.pack("<Q", MAGIC)
    return bytes(out) + footer


# --- bundle -----------------------------------------------------------------------------------------------


def _tensor_bytes(value: object, byteorder: str) -> tuple[str, tuple[int, ...], bytes, int]:
    """(dtype name, shape, stored bytes, raw crc32c) as TF's BundleWriter computes them."""
    if isinstance(value, BF16):
        bits = (value.values.view(np.uint32) >> 16).astype(byteorder + "u2")
        raw = bits.tobytes()
        return "bfloat16", value.values.shape, raw, crc32c(raw)
    arr = np.asarray(value)
    if arr.dtype == object or arr.dtype.kind == "S":
        flat = [bytes(s) for s in arr.reshape(-1)]
        lengths = b"".join(varint(len(s)) for s in flat)
        # TF checksums the lengths as uint32, then the length checksum, then the bytes.
        lengths32 = struct.pack(f"<{len(flat)}I", *[len(s) for s in flat])
        checksum = struct.pack("<I", mask_crc(crc32c(lengths32)))
        body = b"".join(flat)
        crc = crc32c(lengths32 + checksum + body)
        return "string", arr.shape, lengths + checksum + body, crc
    if arr.dtype.name not in DTYPE_ENUM:
        raise TypeError(f"can't store a {arr.dtype} tensor in a TF checkpoint; supported: {', '.join(DTYPE_ENUM)}")
    raw = arr.astype(arr.dtype.newbyteorder(byteorder)).tobytes()
    return arr.dtype.name, arr.shape, raw, crc32c(raw)


def write_bundle(
    prefix: str | Path,
    tensors: dict[str, object],
    num_shards: int = 1,
    block_size: int = TF_BLOCK_SIZE,
    restart_interval: int = TF_RESTART_INTERVAL,
    compression: int = 0,
    big_endian: bool = False,
) -> Path:
    """Write ``tensors`` (numpy arrays, ``BF16``, object arrays of bytes, ``Sliced``) as a TF bundle at ``prefix``.

    Tensors are stored in name order, to shards round-robin; a ``Sliced`` tensor gets a full entry listing its
    slices plus one ordered-code keyed entry per slice, as TF's ``BundleWriter::AddSlice`` writes them. Existing
    files of the same names are replaced (atomically, each); returns ``prefix`` as a Path.
    """
    prefix = Path(prefix)
    byteorder = ">" if big_endian else "<"
    shards = [bytearray() for _ in range(num_shards)]
    header = field_varint(1, num_shards) + (field_varint(2, 1) if big_endian else b"")
    items = [(b"", header + field_bytes(3, field_varint(1, BUNDLE_VERSION)))]
    stored: list[tuple[bytes, object]] = []
    for name in sorted(tensors):
        value = tensors[name]
        if isinstance(value, Sliced):
            full = value.values
            entry = field_varint(1, DTYPE_ENUM[full.dtype.name]) + field_bytes(2, shape_proto(full.shape))
            entry += b"".join(field_bytes(7, slice_proto(ext)) for ext in value.slices)
            items.append((name.encode(), entry))
            for ext in value.slices:
                index = tuple(slice(None) if n == -1 else slice(a, a + n) for a, n in ext)
                stored.append((slice_key(name, ext), full[index]))
        else:
            stored.append((name.encode(), value))
    for i, (key, value) in enumerate(stored):
        dtype, shape, raw, crc = _tensor_bytes(value, byteorder)
        shard = i % num_shards
        entry = field_varint(1, DTYPE_ENUM[dtype]) + field_bytes(2, shape_proto(shape))
        if shard:
            entry += field_varint(3, shard)
        if shards[shard]:
            entry += field_varint(4, len(shards[shard]))
        if raw:
            entry += field_varint(5, len(raw))
        entry += field_fixed32(6, mask_crc(crc))
        shards[shard] += raw
        items.append((key, entry))
    items.sort(key=lambda kv: kv[0])
    index = table_bytes(items, block_size, restart_interval, compression)
    for k, data in enumerate(shards):
        _atomic_write(Path(f"{prefix}.data-{k:05d}-of-{num_shards:05d}"), bytes(data))
    _atomic_write(Path(f"{prefix}.index"), index)  # last: a reader finds the checkpoint only when it is whole
    return prefix


def write_checkpoint_state(folder: str | Path, prefix_name: str) -> Path:
    """The ``checkpoint`` text file (a ``CheckpointState`` proto in text format) naming ``prefix_name`` as the
    latest checkpoint, relative to ``folder`` as ``Saver(save_relative_paths=True)`` writes it (strings C-escaped
    as protobuf's text format does: octal for bytes outside printable ASCII)."""
    named = {ord('"'): '\\"', ord("\\"): "\\\\", ord("'"): "\\'", 10: "\\n", 13: "\\r", 9: "\\t"}
    escaped = "".join(named.get(b) or (chr(b) if 32 <= b < 127 else f"\\{b:03o}") for b in prefix_name.encode())
    text = f'model_checkpoint_path: "{escaped}"\nall_model_checkpoint_paths: "{escaped}"\n'
    return _atomic_write(Path(folder) / "checkpoint", text.encode())


def _atomic_write(path: Path, data: bytes) -> Path:
    """``data`` to ``path``, fsynced, then renamed (:func:`spinenet.io_checks.atomic_write`)."""
    return atomic_write(path, lambda f: f.write(data), binary=True, durable=True)
