"""Minimal TensorFlow tensor-bundle writer for tests (no TensorFlow needed).

Writes ``PREFIX.index`` (an uncompressed or snappy-"compressed" LevelDB SSTable) and
``PREFIX.data-0000K-of-0000N`` the way TF's ``BundleWriter`` does, so the reader can be tested against
hand-controlled inputs: several shards, tiny blocks and restart intervals, slices, big-endian headers.
It is an independent implementation of the same spec, kept deliberately simple.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from spinenet.convert.tf_checkpoint import crc32c, mask_crc

MAGIC = 0xDB4775248B80FB57

# numpy dtype name -> TF DataType enum
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


def build_block(items: list[tuple[bytes, bytes]], restart_interval: int) -> bytes:
    out = bytearray()
    restarts = []
    prev = b""
    for i, (key, value) in enumerate(items):
        if i % restart_interval == 0:
            restarts.append(len(out))
            shared = 0
        else:
            shared = 0
            while shared < min(len(prev), len(key)) and prev[shared] == key[shared]:
                shared += 1
        out += varint(shared) + varint(len(key) - shared) + varint(len(value)) + key[shared:] + value
        prev = key
    if not restarts:
        restarts = [0]
    out += b"".join(struct.pack("<I", r) for r in restarts) + struct.pack("<I", len(restarts))
    return bytes(out)


def snappy_literal(data: bytes) -> bytes:
    """A valid snappy stream made only of literals (enough to exercise the reader's decode path)."""
    out = bytearray(varint(len(data)))
    for i in range(0, len(data), 60):
        chunk = data[i : i + 60]
        out.append((len(chunk) - 1) << 2)
        out += chunk
    return bytes(out)


def write_table(
    path: Path,
    items: list[tuple[bytes, bytes]],
    block_size: int = 4096,
    restart_interval: int = 16,
    compression: int = 0,
) -> None:
    out = bytearray()

    def emit(block: bytes) -> bytes:
        contents = snappy_literal(block) if compression == 1 else block
        handle = varint(len(out)) + varint(len(contents))
        trailer_type = bytes([compression])
        out.extend(contents + trailer_type + struct.pack("<I", mask_crc(crc32c(contents + trailer_type))))
        return handle

    index_items = []
    pending: list[tuple[bytes, bytes]] = []
    size = 0
    for key, value in items:
        pending.append((key, value))
        size += len(key) + len(value) + 3
        if size >= block_size:
            index_items.append((pending[-1][0], emit(build_block(pending, restart_interval))))
            pending, size = [], 0
    if pending:
        index_items.append((pending[-1][0], emit(build_block(pending, restart_interval))))
    meta_handle = emit(build_block([], restart_interval))
    index_handle = emit(build_block(index_items, 1))
    footer = (meta_handle + index_handle).ljust(40, b"\0") + struct.pack("<Q", MAGIC)
    path.write_bytes(bytes(out) + footer)


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
    raw = arr.astype(arr.dtype.newbyteorder(byteorder)).tobytes()
    return arr.dtype.name, arr.shape, raw, crc32c(raw)


def write_bundle(
    prefix: str | Path,
    tensors: dict[str, object],
    num_shards: int = 1,
    block_size: int = 4096,
    restart_interval: int = 16,
    compression: int = 0,
    big_endian: bool = False,
) -> Path:
    """Write ``tensors`` (numpy arrays, ``BF16``, object arrays of bytes, ``Sliced``) as a TF bundle.

    Tensors go to shards round-robin; a ``Sliced`` tensor gets a full entry listing its slices plus one
    ordered-code keyed entry per slice, as TF's ``BundleWriter::AddSlice`` writes them.
    """
    prefix = Path(prefix)
    byteorder = ">" if big_endian else "<"
    shards = [bytearray() for _ in range(num_shards)]
    items = []
    header = (
        field_varint(1, num_shards)
        + field_varint(2, 1 if big_endian else 0)
        + field_bytes(3, field_varint(1, 1))
    )
    items.append((b"", header))
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
    write_table(Path(f"{prefix}.index"), items, block_size, restart_interval, compression)
    for k, data in enumerate(shards):
        Path(f"{prefix}.data-{k:05d}-of-{num_shards:05d}").write_bytes(bytes(data))
    return prefix
