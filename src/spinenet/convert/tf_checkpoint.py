"""Read TensorFlow checkpoints (V2 "tensor bundle" format) without TensorFlow.

Both TF1 ``tf.train.Saver`` and TF2 ``tf.train.Checkpoint`` write a checkpoint as ``PREFIX.index`` plus
``PREFIX.data-0000K-of-0000N`` shard files:

* ``PREFIX.index`` is a LevelDB-format SSTable (TF's ``tensorflow/core/lib/io/table``). The entry with the
  empty key is a ``BundleHeaderProto``; every other key is a tensor name whose value is a serialized
  ``BundleEntryProto`` (dtype, shape, shard, offset, size, crc32c).
* A tensor's bytes are its raw host-order (little-endian) buffer at ``[offset, offset + size)`` of its shard.
* A partitioned variable (TF1 partitioners; TF2 ``MaxShardSizePolicy`` sharding) has a full entry listing
  its slices, and one entry per slice under an OrderedCode-encoded key starting with a zero byte; the
  reader reassembles it.

Only numpy and the standard library are used: protobuf is decoded by hand and crc32c is computed with a
numpy-vectorised table method (~150 MB/s, so every tensor is verified by default: a 45 MB checkpoint reads
and verifies in well under a second). If ``google_crc32c`` or ``crc32c`` is importable it is used instead.
Checked against TensorFlow 2.20 (``tf.train.Checkpoint`` and TF1 ``Saver`` output): identical arrays.
"""

from __future__ import annotations

import codecs
import difflib
import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["TFCheckpointReader", "TFCheckpointError", "read_checkpoint", "crc32c", "masked_crc32c"]


from spinenet.convert.crc32c import crc32c, mask_crc, masked_crc32c


class TFCheckpointError(ValueError):
    """A checkpoint file is malformed, truncated or fails its checksum."""


# ---------------------------------------------------------------------------------------------------------
# Protobuf wire format and varints.
# ---------------------------------------------------------------------------------------------------------


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise TFCheckpointError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise TFCheckpointError("varint too long")


def parse_proto(buf: bytes) -> dict[int, list[int | bytes]]:
    """Decode one message level into {field number: [values]} (varints/fixed as ints, LEN as bytes)."""
    fields: dict[int, list[int | bytes]] = {}
    pos = 0
    n = len(buf)
    while pos < n:
        key, pos = _read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire == 1:
            if pos + 8 > n:
                raise TFCheckpointError("truncated fixed64 field")
            (value,) = struct.unpack_from("<Q", buf, pos)
            pos += 8
        elif wire == 2:
            length, pos = _read_varint(buf, pos)
            if pos + length > n:
                raise TFCheckpointError("truncated length-delimited field")
            value = bytes(buf[pos : pos + length])
            pos += length
        elif wire == 5:
            if pos + 4 > n:
                raise TFCheckpointError("truncated fixed32 field")
            (value,) = struct.unpack_from("<I", buf, pos)
            pos += 4
        else:
            raise TFCheckpointError(f"unsupported protobuf wire type {wire} (field {field})")
        fields.setdefault(field, []).append(value)
    return fields


def _int64(v: int) -> int:
    """Reinterpret a decoded varint as a signed int64 (negative int64s are 10-byte varints)."""
    return v - (1 << 64) if v >= 1 << 63 else v


def _last(fields: dict[int, list[int | bytes]], num: int, default: int | bytes = 0) -> int | bytes:
    values = fields.get(num)
    return values[-1] if values else default  # protobuf: the last occurrence of a scalar field wins


# ---------------------------------------------------------------------------------------------------------
# TF DataType enum -> numpy.
# ---------------------------------------------------------------------------------------------------------

DT_STRING = 7
DT_BFLOAT16 = 14

# enum value -> (name, numpy dtype or None for types decoded specially)
_DTYPES: dict[int, tuple[str, np.dtype | None]] = {
    1: ("float32", np.dtype("<f4")),
    2: ("float64", np.dtype("<f8")),
    3: ("int32", np.dtype("<i4")),
    4: ("uint8", np.dtype("u1")),
    5: ("int16", np.dtype("<i2")),
    6: ("int8", np.dtype("i1")),
    7: ("string", None),
    8: ("complex64", np.dtype("<c8")),
    9: ("int64", np.dtype("<i8")),
    10: ("bool", np.dtype("?")),
    14: ("bfloat16", None),
    17: ("uint16", np.dtype("<u2")),
    18: ("complex128", np.dtype("<c16")),
    19: ("float16", np.dtype("<f2")),
    22: ("uint32", np.dtype("<u4")),
    23: ("uint64", np.dtype("<u8")),
}
_UNSUPPORTED_DTYPES = {
    11: "qint8",
    12: "quint8",
    13: "qint32",
    15: "qint16",
    16: "quint16",
    20: "resource",
    21: "variant",
}


def _dtype_name(enum: int) -> str:
    if enum in _DTYPES:
        return _DTYPES[enum][0]
    return _UNSUPPORTED_DTYPES.get(enum, f"tf_dtype_{enum}")


# ---------------------------------------------------------------------------------------------------------
# SSTable (LevelDB table format) reader.
# ---------------------------------------------------------------------------------------------------------

_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_SIZE = 48  # two BlockHandles padded to 40 bytes, then the 8-byte magic
_BLOCK_TRAILER_SIZE = 5  # compression type byte + masked crc32c


def _snappy_decompress(src: bytes) -> bytes:
    """Decode a raw (unframed) snappy block; TF writes bundle indexes uncompressed, this is a fallback."""
    n, pos = _read_varint(src, 0)
    out = bytearray()
    end = len(src)
    while pos < end:
        tag = src[pos]
        pos += 1
        kind = tag & 3
        if kind == 0:  # literal
            length = tag >> 2
            if length >= 60:
                nb = length - 59
                length = int.from_bytes(src[pos : pos + nb], "little")
                pos += nb
            length += 1
            if pos + length > end:
                raise TFCheckpointError("corrupt snappy block (literal overruns input)")
            out += src[pos : pos + length]
            pos += length
            continue
        if kind == 1:
            length = ((tag >> 2) & 7) + 4
            offset = ((tag >> 5) << 8) | src[pos]
            pos += 1
        elif kind == 2:
            length = (tag >> 2) + 1
            offset = int.from_bytes(src[pos : pos + 2], "little")
            pos += 2
        else:
            length = (tag >> 2) + 1
            offset = int.from_bytes(src[pos : pos + 4], "little")
            pos += 4
        if offset == 0 or offset > len(out):
            raise TFCheckpointError("corrupt snappy block (bad copy offset)")
        start = len(out) - offset
        for i in range(length):  # byte-wise because a copy may overlap its own output
            out.append(out[start + i])
    if len(out) != n:
        raise TFCheckpointError(f"corrupt snappy block (expected {n} bytes, got {len(out)})")
    return bytes(out)


def _read_block(data: bytes, offset: int, size: int, path: Path, verify: bool) -> bytes:
    if offset < 0 or offset + size + _BLOCK_TRAILER_SIZE > len(data):
        raise TFCheckpointError(
            f"{path} is corrupt or truncated: block [{offset},{offset + size + _BLOCK_TRAILER_SIZE}) "
            f"lies beyond the end of the file ({len(data)} bytes)"
        )
    contents = data[offset : offset + size]
    ctype = data[offset + size]
    if verify:
        (stored,) = struct.unpack_from("<I", data, offset + size + 1)
        # The trailer crc covers the block contents and the compression-type byte.
        actual = mask_crc(crc32c(data[offset : offset + size + 1]))
        if stored != actual:
            raise TFCheckpointError(
                f"{path} is corrupt: block at offset {offset} has crc32c {actual:#010x}, "
                f"the file says {stored:#010x}"
            )
    if ctype == 0:
        return contents
    if ctype == 1:
        return _snappy_decompress(contents)
    raise TFCheckpointError(f"{path}: block at offset {offset} uses unsupported compression type {ctype}")


def _iter_block(block: bytes, path: Path) -> Iterator[tuple[bytes, bytes]]:
    """Yield (key, value) pairs of one block (keys are prefix-compressed against the previous key)."""
    if len(block) < 4:
        raise TFCheckpointError(f"{path} is corrupt: block too short")
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    limit = len(block) - 4 - 4 * num_restarts  # entries end where the restart array begins
    if limit < 0:
        raise TFCheckpointError(f"{path} is corrupt: bad restart count {num_restarts}")
    pos = 0
    key = b""
    while pos < limit:
        shared, pos = _read_varint(block, pos)
        non_shared, pos = _read_varint(block, pos)
        value_len, pos = _read_varint(block, pos)
        if shared > len(key) or pos + non_shared + value_len > limit:
            raise TFCheckpointError(f"{path} is corrupt: bad block entry at offset {pos}")
        key = key[:shared] + block[pos : pos + non_shared]
        pos += non_shared
        yield key, block[pos : pos + value_len]
        pos += value_len


def _read_sstable(path: Path, verify: bool) -> Iterator[tuple[bytes, bytes]]:
    """Yield all (key, value) pairs of an SSTable file in key order."""
    data = path.read_bytes()
    if len(data) < _FOOTER_SIZE:
        raise TFCheckpointError(
            f"{path} is not a TensorFlow checkpoint index: {len(data)} bytes is shorter than the "
            f"{_FOOTER_SIZE}-byte SSTable footer"
        )
    footer = data[-_FOOTER_SIZE:]
    (magic,) = struct.unpack_from("<Q", footer, 40)
    if magic != _TABLE_MAGIC:
        raise TFCheckpointError(
            f"{path} is not a TensorFlow checkpoint index (bad SSTable magic {magic:#018x}, "
            f"expected {_TABLE_MAGIC:#018x})"
        )
    pos = 0
    _meta_off, pos = _read_varint(footer, pos)
    _meta_size, pos = _read_varint(footer, pos)
    index_off, pos = _read_varint(footer, pos)
    index_size, pos = _read_varint(footer, pos)
    index_block = _read_block(data, index_off, index_size, path, verify)
    for _sep_key, handle in _iter_block(index_block, path):
        off, p = _read_varint(handle, 0)
        size, _ = _read_varint(handle, p)
        yield from _iter_block(_read_block(data, off, size, path, verify), path)


# ---------------------------------------------------------------------------------------------------------
# Bundle reader.
# ---------------------------------------------------------------------------------------------------------


def _read_ordered_num(key: bytes, pos: int) -> tuple[int, int]:
    """OrderedCode WriteNumIncreasing: a length byte, then that many big-endian bytes."""
    n = key[pos]
    if pos + 1 + n > len(key):
        raise TFCheckpointError("truncated ordered-code number")
    return int.from_bytes(key[pos + 1 : pos + 1 + n], "big"), pos + 1 + n


def _read_ordered_string(key: bytes, pos: int) -> tuple[bytes, int]:
    """OrderedCode WriteString: 0x00 -> 00 ff, 0xff -> ff 00, terminated by 00 01."""
    out = bytearray()
    while pos + 1 < len(key):
        b = key[pos]
        if b == 0x00:
            nxt = key[pos + 1]
            if nxt == 0x01:
                return bytes(out), pos + 2
            if nxt != 0xFF:
                break
            out.append(0x00)
            pos += 2
        elif b == 0xFF:
            if key[pos + 1] != 0x00:
                break
            out.append(0xFF)
            pos += 2
        else:
            out.append(b)
            pos += 1
    raise TFCheckpointError("bad ordered-code string")


def _read_ordered_signed(key: bytes, pos: int) -> tuple[int, int]:
    """OrderedCode WriteSignedNumIncreasing: n leading header bits (n = byte length) over big-endian bits.

    Negative numbers are the bitwise complement of the encoding of ``~value``.
    """
    inv = 0x00 if key[pos] & 0x80 else 0xFF
    first = key[pos] ^ inv
    n = 0
    while n < 8 and first & (0x80 >> n):
        n += 1
    if n == 8 and pos + 1 < len(key) and (key[pos + 1] ^ inv) & 0x80:
        # 9- and 10-byte forms (header spills into byte 2) hold |values| >= 2**55: no tensor is that large
        raise TFCheckpointError("ordered-code signed number too large")
    if pos + n > len(key):
        raise TFCheckpointError("truncated ordered-code signed number")
    raw = int.from_bytes(bytes(b ^ inv for b in key[pos : pos + n]), "big")
    value = raw & ((1 << (7 * n - 1)) - 1)  # drop the n one-bits and the zero bit of the header
    return (~value if inv else value), pos + n


def _decode_slice_key(key: bytes) -> tuple[str, tuple[tuple[int, int], ...]]:
    """Decode TF's EncodeTensorNameSlice key: 0, name, rank, then (start, length) per dim (-1 = full)."""
    zero, pos = _read_ordered_num(key, 0)
    if zero != 0:
        raise TFCheckpointError("not a tensor slice key")
    name, pos = _read_ordered_string(key, pos)
    rank, pos = _read_ordered_num(key, pos)
    extents = []
    for _ in range(rank):
        start, pos = _read_ordered_signed(key, pos)
        length, pos = _read_ordered_signed(key, pos)
        extents.append((start, length))
    if pos != len(key):
        raise TFCheckpointError("trailing bytes in tensor slice key")
    return name.decode("utf-8"), tuple(extents)


@dataclass(frozen=True)
class _Entry:
    dtype: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int | None  # masked, as stored; None if the writer did not store one
    has_slices: bool


def _parse_entry(value: bytes) -> _Entry:
    f = parse_proto(value)
    shape: list[int] = []
    shape_msg = _last(f, 2, b"")
    if shape_msg:
        sf = parse_proto(shape_msg)  # type: ignore[arg-type]
        if _last(sf, 3, 0):
            raise TFCheckpointError("tensor has unknown rank")
        for dim in sf.get(2, []):
            shape.append(_int64(int(_last(parse_proto(dim), 1, 0))))  # type: ignore[arg-type]
    crc_values = f.get(6)
    return _Entry(
        dtype=int(_last(f, 1, 0)),
        shape=tuple(shape),
        shard_id=int(_last(f, 3, 0)),
        offset=_int64(int(_last(f, 4, 0))),
        size=_int64(int(_last(f, 5, 0))),
        crc32c=int(crc_values[-1]) if crc_values else None,
        has_slices=bool(f.get(7)),
    )


def _resolve_prefix(path: str | os.PathLike) -> Path:
    """Turn a prefix, an ``.index`` file or a checkpoint directory into the checkpoint prefix."""
    p = Path(path)
    if p.is_dir():
        state = p / "checkpoint"
        if state.is_file():
            m = re.search(r'^model_checkpoint_path:\s*"((?:[^"\\]|\\.)*)"', state.read_text(), re.M)
            if m:
                text = m.group(1)
                if "\\" in text:  # text-proto C escapes (octal bytes of non-ASCII UTF-8, \\, \")
                    text = codecs.escape_decode(text.encode("utf-8"))[0].decode("utf-8")
                prefix = Path(text)
                if not prefix.is_absolute():
                    prefix = p / prefix
                local = p / (prefix.name + ".index")
                if not Path(str(prefix) + ".index").is_file() and local.is_file():
                    prefix = p / prefix.name  # checkpoint dir was moved; the state file has a stale path
                return prefix
        indexes = sorted(p.glob("*.index"))
        if len(indexes) == 1:
            return indexes[0].with_suffix("")
        if not indexes:
            raise FileNotFoundError(
                f"{p} is a directory but holds no TensorFlow checkpoint: expected a 'checkpoint' state "
                f"file or a single PREFIX.index file"
            )
        raise ValueError(
            f"{p} holds {len(indexes)} checkpoints ({', '.join(i.name for i in indexes)}) and no "
            f"'checkpoint' state file naming one; pass the prefix of the one to read"
        )
    if p.suffix == ".index":
        return p.with_suffix("")
    if re.fullmatch(r".*\.data-\d{5}-of-\d{5}", p.name):
        return p.with_name(p.name.rsplit(".data-", 1)[0])
    return p


def _string_lengths_for_crc(lengths: list[int]) -> bytes:
    """The string lengths as TF's checksum sees them.

    TF's ReadStringTensor checksums each length as a little-endian uint32 (uint64 only for lengths that do
    not fit, which older writers never produced), then the stored 4-byte length checksum, then the string
    bytes -- not the varints actually stored. Verified against TF 2.20-written checkpoints.
    """
    if all(n <= 0xFFFFFFFF for n in lengths):
        return struct.pack(f"<{len(lengths)}I", *lengths)
    return b"".join(struct.pack("<I" if n <= 0xFFFFFFFF else "<Q", n) for n in lengths)


class TFCheckpointReader:
    """Reads tensors from a TF V2 checkpoint (``PREFIX.index`` + ``PREFIX.data-*``) with numpy only.

    ``path`` may be the checkpoint prefix, its ``.index`` file, or a directory holding a checkpoint
    (its ``checkpoint`` state file decides which, else the directory must hold exactly one ``*.index``).
    With ``verify=True`` the index block checksums and every tensor's crc32c are checked.
    """

    def __init__(self, path: str | os.PathLike, verify: bool = True) -> None:
        self.prefix = _resolve_prefix(path)
        self.verify = verify
        self.index_path = Path(str(self.prefix) + ".index")
        if not self.index_path.is_file():
            raise FileNotFoundError(
                f"TensorFlow checkpoint index {self.index_path} not found (given {os.fspath(path)!r}); "
                f"expected a checkpoint prefix, a PREFIX.index file, or a directory holding a checkpoint"
            )
        self.num_shards = 1
        self._byteorder = "<"
        self._entries: dict[str, _Entry] = {}
        # Partitioned variables: full name -> [(per-dim (start, length), entry of that slice)].
        self._slices: dict[str, list[tuple[tuple[tuple[int, int], ...], _Entry]]] = {}
        self._bad_slice_keys: list[bytes] = []
        saw_header = False
        for key, value in _read_sstable(self.index_path, verify):
            if key == b"":
                self._parse_header(value)
                saw_header = True
            elif key.startswith(b"\x00"):  # a slice of a partitioned variable (ordered-code key)
                try:
                    slice_name, extents = _decode_slice_key(key)
                    self._slices.setdefault(slice_name, []).append((extents, _parse_entry(value)))
                except (TFCheckpointError, UnicodeDecodeError, IndexError):
                    self._bad_slice_keys.append(key)  # only fatal if its tensor is read
            else:
                try:
                    # surrogateescape keeps a (never seen) non-UTF-8 name lossless and usable as a key
                    self._entries[key.decode("utf-8", "surrogateescape")] = _parse_entry(value)
                except TFCheckpointError as e:
                    raise TFCheckpointError(f"{self.index_path}: bad entry for {key!r}: {e}") from None
        if not saw_header:
            raise TFCheckpointError(
                f"{self.index_path} is not a TensorFlow checkpoint index (no bundle header)"
            )

    def _parse_header(self, value: bytes) -> None:
        f = parse_proto(value)
        self.num_shards = int(_last(f, 1, 0))
        endianness = int(_last(f, 2, 0))
        if endianness not in (0, 1):
            raise TFCheckpointError(f"{self.index_path}: unknown endianness {endianness} in bundle header")
        self._byteorder = "<" if endianness == 0 else ">"
        version = parse_proto(_last(f, 3, b""))  # type: ignore[arg-type]
        # TF bundle version 1 is the only one; a writer demanding a newer reader says so via min_consumer.
        min_consumer = int(_last(version, 2, 0))
        if min_consumer > 1:
            raise TFCheckpointError(
                f"{self.index_path}: bundle needs a reader of version >= {min_consumer}; this reader is 1"
            )

    # -- mapping-like API ---------------------------------------------------------------------------------

    def keys(self) -> list[str]:
        """Tensor names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def list_variables(self) -> list[tuple[str, tuple[int, ...], str]]:
        """(name, shape, dtype name) for every tensor, sorted by name.

        dtype names are numpy's, except ``"bfloat16"`` (``get_tensor`` returns it as float32) and
        ``"string"`` (returned as an object array of ``bytes``).
        """
        return [(n, e.shape, _dtype_name(e.dtype)) for n, e in sorted(self._entries.items())]

    def dtype_name(self, name: str) -> str:
        """Stored dtype name of one tensor (see ``list_variables``)."""
        return _dtype_name(self._entry(name).dtype)

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of one tensor."""
        return self._entry(name).shape

    def _entry(self, name: str) -> _Entry:
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._entries), n=5, cutoff=0.6)
            hint = f"; close matches: {close}" if close else ""
            raise KeyError(f"tensor {name!r} not in checkpoint {self.prefix}{hint}") from None

    def shard_path(self, shard_id: int) -> Path:
        """Path of data shard ``shard_id``."""
        return Path(f"{self.prefix}.data-{shard_id:05d}-of-{self.num_shards:05d}")

    def _read_bytes(self, name: str, entry: _Entry) -> bytes:
        if not 0 <= entry.shard_id < max(self.num_shards, 1):
            raise TFCheckpointError(
                f"{self.index_path}: tensor {name!r} is in shard {entry.shard_id} but the bundle has "
                f"{self.num_shards} shards"
            )
        shard = self.shard_path(entry.shard_id)
        if not shard.is_file():
            raise FileNotFoundError(
                f"data shard {shard} of checkpoint {self.prefix} is missing (tensor {name!r})"
            )
        end = entry.offset + entry.size
        with open(shard, "rb") as fh:
            file_size = os.fstat(fh.fileno()).st_size
            if entry.offset < 0 or end > file_size:
                raise TFCheckpointError(
                    f"{shard} is truncated: tensor {name!r} needs bytes [{entry.offset},{end}) but the file "
                    f"has {file_size} bytes"
                )
            fh.seek(entry.offset)
            raw = fh.read(entry.size)
        if len(raw) != entry.size:  # file shrank under us
            raise TFCheckpointError(f"{shard} is truncated: short read for tensor {name!r}")
        return raw

    def get_tensor(self, name: str) -> np.ndarray:
        """Return tensor ``name`` as a numpy array (bfloat16 -> float32, strings -> object array of bytes).

        Partitioned variables (TF1 partitioners, TF2 sharding policies) are reassembled from their slices.
        """
        entry = self._entry(name)
        if entry.has_slices:
            return self._assemble_slices(name, entry)
        return self._read_entry(name, entry)

    def _assemble_slices(self, name: str, entry: _Entry) -> np.ndarray:
        parts = self._slices.get(name, [])
        if not parts:
            bad = (
                f" ({len(self._bad_slice_keys)} slice keys could not be decoded)"
                if self._bad_slice_keys
                else ""
            )
            raise NotImplementedError(
                f"tensor {name!r} in {self.prefix} is a partitioned variable but none of its slices could "
                f"be found{bad}"
            )
        out: np.ndarray | None = None
        covered = np.zeros(entry.shape, dtype=bool)
        for extents, part_entry in parts:
            label = f"{name} (slice {list(extents)})"
            if len(extents) != len(entry.shape):
                raise TFCheckpointError(f"{self.index_path}: {label} has the wrong rank for {entry.shape}")
            index = tuple(slice(None) if n == -1 else slice(a, a + n) for a, n in extents)
            part = self._read_entry(label, part_entry)
            if out is None:
                out = np.zeros(entry.shape, dtype=part.dtype)
            if part.shape != out[index].shape:
                raise TFCheckpointError(
                    f"{self.index_path}: {label} has shape {part.shape}, expected {out[index].shape}"
                )
            out[index] = part
            covered[index] = True
        if not covered.all():
            raise TFCheckpointError(
                f"{self.prefix}: the slices of partitioned tensor {name!r} cover only "
                f"{int(covered.sum())} of its {covered.size} elements"
            )
        assert out is not None
        return out

    def _read_entry(self, name: str, entry: _Entry) -> np.ndarray:
        """Read and decode one stored buffer (a whole tensor or one slice of a partitioned one)."""
        if entry.dtype not in _DTYPES:
            raise NotImplementedError(
                f"tensor {name!r} in {self.prefix} has dtype {_dtype_name(entry.dtype)}, which this reader "
                f"does not decode"
            )
        raw = self._read_bytes(name, entry)
        if self.verify and entry.crc32c is not None:
            # For strings TF's checksum covers the lengths as uint64 rather than the stored varints.
            actual = self._string_crc(name, raw, entry) if entry.dtype == DT_STRING else crc32c(raw)
            if mask_crc(actual) != entry.crc32c:
                raise TFCheckpointError(
                    f"crc32c mismatch for tensor {name!r} in {self.shard_path(entry.shard_id)}: computed "
                    f"{mask_crc(actual):#010x}, the index says {entry.crc32c:#010x} (corrupt checkpoint?)"
                )
        count = int(np.prod(entry.shape, dtype=np.int64))
        if entry.dtype == DT_STRING:
            return self._decode_strings(name, raw, entry.shape, count)
        if entry.dtype == DT_BFLOAT16:
            self._check_size(name, entry, count * 2)
            bits = np.frombuffer(raw, dtype=self._byteorder + "u2").astype(np.uint32) << 16
            return bits.view(np.float32).reshape(entry.shape)
        dt = _DTYPES[entry.dtype][1]
        assert dt is not None
        if self._byteorder == ">":
            dt = dt.newbyteorder(">")
        self._check_size(name, entry, count * dt.itemsize)
        arr = np.frombuffer(raw, dtype=dt).reshape(entry.shape)
        # np.frombuffer over bytes is read-only; return a writable native-order copy.
        return arr.astype(dt.newbyteorder("="), copy=True)

    def _check_size(self, name: str, entry: _Entry, expected: int) -> None:
        if entry.size != expected:
            raise TFCheckpointError(
                f"{self.index_path}: tensor {name!r} of shape {entry.shape} and dtype "
                f"{_dtype_name(entry.dtype)} should have {expected} bytes but the index says {entry.size}"
            )

    def _split_strings(self, name: str, raw: bytes, count: int) -> tuple[list[int], int]:
        # Layout: varint64 length of each element, 4-byte masked crc32c of the lengths, then the bytes.
        lengths = []
        pos = 0
        try:
            for _ in range(count):
                n, pos = _read_varint(raw, pos)
                lengths.append(n)
        except TFCheckpointError:
            raise TFCheckpointError(f"{self.prefix}: string tensor {name!r} is corrupt") from None
        if pos + 4 + sum(lengths) != len(raw):
            raise TFCheckpointError(f"{self.prefix}: string tensor {name!r} has inconsistent lengths")
        return lengths, pos

    def _string_crc(self, name: str, raw: bytes, entry: _Entry) -> int:
        count = int(np.prod(entry.shape, dtype=np.int64))
        lengths, pos = self._split_strings(name, raw, count)
        return crc32c(_string_lengths_for_crc(lengths) + raw[pos:])

    def _decode_strings(self, name: str, raw: bytes, shape: tuple[int, ...], count: int) -> np.ndarray:
        lengths, pos = self._split_strings(name, raw, count)
        pos += 4
        out = np.empty(count, dtype=object)
        for i, n in enumerate(lengths):
            out[i] = raw[pos : pos + n]
            pos += n
        return out.reshape(shape)

    def __repr__(self) -> str:
        return f"TFCheckpointReader({str(self.prefix)!r}, {len(self._entries)} tensors)"


def read_checkpoint(path: str | os.PathLike, verify: bool = True) -> dict[str, np.ndarray]:
    """Read every numeric tensor of a TF checkpoint into a dict (string tensors are skipped)."""
    reader = TFCheckpointReader(path, verify=verify)
    out = {}
    for name, _shape, dtype in reader.list_variables():
        if dtype == "string":
            continue  # e.g. _CHECKPOINTABLE_OBJECT_GRAPH: serialized metadata, not weights
        out[name] = reader.get_tensor(name)
    return out
