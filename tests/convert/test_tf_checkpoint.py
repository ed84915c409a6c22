"""Tests for the TensorFlow-free checkpoint reader.

Most tests write bundles with ``spinenet.convert.tf_bundle_writer`` (its default output is byte-identical to
TensorFlow's, see test_tf_bundle_writer.py); ``test_real_tf_*`` read checkpoints written by TensorFlow itself
(tests/fixtures/tf_bundle_small, made by tools/make_tf_bundle_fixture.py)
and compare with the values TF's own reader returned.
"""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from spinenet.convert import crc32c as crcmod
from spinenet.convert import tf_bundle_writer as bw
from spinenet.convert import tf_checkpoint as tfc
from spinenet.convert.tf_checkpoint import TFCheckpointError, TFCheckpointReader, read_checkpoint

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tf_bundle_small"


def _sample_tensors() -> dict[str, object]:
    rng = np.random.default_rng(0)
    return {
        "a/float32": rng.standard_normal((3, 4, 5)).astype(np.float32),
        "a/float64": np.float64(-2.5),  # scalar
        "a/float16": rng.standard_normal(7).astype(np.float16),
        "b/int8": np.array([-128, 0, 127], np.int8),
        "b/int16": np.array([[-32768, 5], [7, 32767]], np.int16),
        "b/int32": np.arange(-6, 6, dtype=np.int32).reshape(3, 4),
        "b/int64": np.array([2**62, -(2**40), 0], np.int64),
        "c/uint8": np.arange(256, dtype=np.uint8),
        "c/uint16": np.array([0, 65535], np.uint16),
        "c/uint32": np.array([2**32 - 1], np.uint32),
        "c/uint64": np.array([2**64 - 1, 3], np.uint64),
        "d/bool": np.array([[True, False], [False, True]]),
        "d/complex64": np.array([1 + 2j, -3j], np.complex64),
        "e/bf16": bw.BF16(np.array([[1.0, -2.5, 3.140625], [0.0, -0.0, 2.0**100]], np.float32)),
        "e/empty": np.zeros((0,), np.float32),
        "e/empty2d": np.zeros((2, 0, 3), np.int64),
        "e/big": rng.standard_normal((300, 70)).astype(np.float32),  # > crc numpy cutoff
        "s/scalar": np.array(b"hello \x00 world", dtype=object),
        "s/vector": np.array([b"", b"x", b"\xff" * 300], dtype=object),
    }


def _assert_same(name: str, got: np.ndarray, want: object) -> None:
    if isinstance(want, bw.BF16):
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want.values)  # values chosen to be exact in bfloat16
        return
    want = np.asarray(want)
    assert got.shape == want.shape, name
    if want.dtype == object:
        assert got.dtype == object and list(got.reshape(-1)) == list(want.reshape(-1)), name
    else:
        assert got.dtype == want.dtype, name
        np.testing.assert_array_equal(got, want, err_msg=name)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"num_shards": 3},
        {"block_size": 64, "restart_interval": 2},  # many blocks, many restart points, prefix sharing
        {"compression": 1},  # snappy-typed blocks
        {"big_endian": True},
    ],
    ids=["plain", "sharded", "tiny-blocks", "snappy", "big-endian"],
)
def test_roundtrip_all_dtypes(tmp_path: Path, kwargs: dict) -> None:
    tensors = _sample_tensors()
    prefix = bw.write_bundle(tmp_path / "model.ckpt", tensors, **kwargs)
    reader = TFCheckpointReader(prefix)
    assert reader.keys() == sorted(tensors)
    assert len(reader) == len(tensors) and "a/float32" in reader and "nope" not in reader
    for name, want in tensors.items():
        got = reader.get_tensor(name)
        _assert_same(name, got, want)
        assert got.flags.writeable


def test_list_variables(tmp_path: Path) -> None:
    tensors = _sample_tensors()
    reader = TFCheckpointReader(bw.write_bundle(tmp_path / "ckpt", tensors))
    listed = reader.list_variables()
    assert [n for n, _, _ in listed] == sorted(tensors)
    info = {n: (s, d) for n, s, d in listed}
    assert info["a/float32"] == ((3, 4, 5), "float32")
    assert info["a/float64"] == ((), "float64")
    assert info["e/bf16"] == ((2, 3), "bfloat16")
    assert info["e/empty2d"] == ((2, 0, 3), "int64")
    assert info["s/vector"] == ((3,), "string")
    assert info["d/bool"] == ((2, 2), "bool")


def test_read_checkpoint_skips_strings(tmp_path: Path) -> None:
    tensors = _sample_tensors()
    out = read_checkpoint(bw.write_bundle(tmp_path / "ckpt", tensors))
    assert set(out) == {n for n in tensors if not n.startswith("s/")}
    _assert_same("b/int64", out["b/int64"], tensors["b/int64"])


def test_many_keys_prefix_compression(tmp_path: Path) -> None:
    tensors = {f"backbone/block{i:03d}/conv/kernel": np.full((2,), i, np.int32) for i in range(300)}
    prefix = bw.write_bundle(tmp_path / "ckpt", tensors, block_size=200, restart_interval=3)
    got = read_checkpoint(prefix)
    assert list(got) == sorted(tensors)
    assert all(np.array_equal(got[k], v) for k, v in tensors.items())


def test_path_forms(tmp_path: Path) -> None:
    prefix = bw.write_bundle(tmp_path / "model.ckpt-10", {"x": np.ones(2, np.float32)})
    for p in [prefix, str(prefix) + ".index", str(prefix) + ".data-00000-of-00001", tmp_path]:
        assert TFCheckpointReader(p).prefix == prefix
    # A second checkpoint makes the directory ambiguous ...
    bw.write_bundle(tmp_path / "model.ckpt-20", {"x": np.zeros(2, np.float32)})
    with pytest.raises(ValueError, match="2 checkpoints"):
        TFCheckpointReader(tmp_path)
    # ... until a `checkpoint` state file names one (relative, as TF writes it).
    (tmp_path / "checkpoint").write_text(
        'model_checkpoint_path: "model.ckpt-20"\nall_model_checkpoint_paths: "model.ckpt-10"\n'
    )
    assert TFCheckpointReader(tmp_path).prefix == tmp_path / "model.ckpt-20"
    # A stale absolute path (directory moved) falls back to the same name inside the directory.
    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "/gone/elsewhere/model.ckpt-10"\n')
    assert TFCheckpointReader(tmp_path).prefix == tmp_path / "model.ckpt-10"


def test_missing_index(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nothere\.index"):
        TFCheckpointReader(tmp_path / "nothere")
    empty = tmp_path / "emptydir"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="emptydir.*no TensorFlow checkpoint"):
        TFCheckpointReader(empty)


def test_missing_tensor_suggests_close_names(tmp_path: Path) -> None:
    prefix = bw.write_bundle(tmp_path / "ckpt", {"net/conv1/kernel": np.ones(1, np.float32)})
    with pytest.raises(KeyError, match="net/conv1/kernel"):
        TFCheckpointReader(prefix).get_tensor("net/conv1/kernal")


def test_bad_magic(tmp_path: Path) -> None:
    prefix = bw.write_bundle(tmp_path / "ckpt", {"x": np.ones(3, np.float32)})
    index = Path(f"{prefix}.index")
    data = bytearray(index.read_bytes())
    data[-1] ^= 0xFF
    index.write_bytes(bytes(data))
    with pytest.raises(TFCheckpointError, match=r"ckpt\.index is not a TensorFlow checkpoint index"):
        TFCheckpointReader(prefix)
    index.write_bytes(b"short")
    with pytest.raises(TFCheckpointError, match="not a TensorFlow checkpoint index"):
        TFCheckpointReader(prefix)


def test_truncated_and_missing_shard(tmp_path: Path) -> None:
    x = np.arange(10, dtype=np.float32)
    prefix = bw.write_bundle(tmp_path / "ckpt", {"a": np.ones(2, np.float32), "x": x})
    shard = Path(f"{prefix}.data-00000-of-00001")
    shard.write_bytes(shard.read_bytes()[:20])
    reader = TFCheckpointReader(prefix)
    np.testing.assert_array_equal(reader.get_tensor("a"), np.ones(2, np.float32))  # still readable
    msg = r"data-00000-of-00001 is truncated: tensor 'x' needs bytes \[8,48\) but the file has 20 bytes"
    with pytest.raises(TFCheckpointError, match=msg):
        reader.get_tensor("x")
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=r"data-00000-of-00001.*missing.*'a'"):
        reader.get_tensor("a")


def test_corrupt_data_crc(tmp_path: Path) -> None:
    big = np.arange(5000, dtype=np.float32)  # large enough for the vectorised crc path
    prefix = bw.write_bundle(tmp_path / "ckpt", {"big": big, "s": np.array([b"abc"], dtype=object)})
    shard = Path(f"{prefix}.data-00000-of-00001")
    data = bytearray(shard.read_bytes())
    data[1234] ^= 0x01
    data[-1] ^= 0x01  # last byte of the string tensor
    shard.write_bytes(bytes(data))
    for name in ["big", "s"]:
        with pytest.raises(TFCheckpointError, match=f"crc32c mismatch for tensor '{name}' in .*data-00000"):
            TFCheckpointReader(prefix).get_tensor(name)
    # verify=False skips the check and returns the (corrupted) bytes.
    got = TFCheckpointReader(prefix, verify=False).get_tensor("big")
    assert np.count_nonzero(got != big) == 1


def test_corrupt_index_block(tmp_path: Path) -> None:
    prefix = bw.write_bundle(tmp_path / "ckpt", {"some_tensor_name": np.ones(3, np.float32)})
    index = Path(f"{prefix}.index")
    data = bytearray(index.read_bytes())
    pos = data.find(b"some_tensor_name")
    data[pos] ^= 0x20
    index.write_bytes(bytes(data))
    with pytest.raises(TFCheckpointError, match=r"ckpt\.index is corrupt: block at offset 0 has crc32c"):
        TFCheckpointReader(prefix)
    assert "Some_tensor_name" in TFCheckpointReader(prefix, verify=False)


def test_unsupported_block_compression(tmp_path: Path) -> None:
    prefix = bw.write_bundle(tmp_path / "ckpt", {"x": np.ones(1, np.float32)}, compression=2)
    with pytest.raises(
        TFCheckpointError, match=r"ckpt\.index: block at offset \d+ uses unsupported compression type 2"
    ):
        TFCheckpointReader(prefix)


def test_checkpoint_state_file_escapes(tmp_path: Path) -> None:
    ckdir = tmp_path / "dir"
    ckdir.mkdir()
    prefix = bw.write_bundle(ckdir / "mödel.ckpt-1", {"x": np.ones(1, np.float32)})
    escaped = "".join(f"\\{b:03o}" if b > 127 else chr(b) for b in prefix.name.encode())  # as TF writes it
    (ckdir / "checkpoint").write_text(f'model_checkpoint_path: "{escaped}"\n')
    assert TFCheckpointReader(ckdir).prefix == prefix


def test_partitioned_variable(tmp_path: Path) -> None:
    part = np.arange(10 * 300, dtype=np.float32).reshape(10, 300)
    slices = [((0, 4), (0, -1)), ((4, 6), (0, 100)), ((4, 6), (100, 200))]  # -1: the whole dimension
    ints = np.arange(-3, 3, dtype=np.int64)
    tensors = {
        "part": bw.Sliced(part, slices),
        "ints": bw.Sliced(ints, [((0, 2),), ((2, 4),)]),
        "w": np.ones(2, np.float32),
    }
    prefix = bw.write_bundle(tmp_path / "ckpt", tensors, num_shards=2)
    reader = TFCheckpointReader(prefix)
    assert reader.keys() == ["ints", "part", "w"]  # slice entries (binary keys) are not listed as tensors
    assert reader.list_variables()[1] == ("part", (10, 300), "float32")
    np.testing.assert_array_equal(reader.get_tensor("part"), part)
    np.testing.assert_array_equal(reader.get_tensor("ints"), ints)
    # Slices that do not cover the tensor are an error, not silently zero-filled.
    bw.write_bundle(tmp_path / "holes", {"part": bw.Sliced(part, slices[:2])})
    with pytest.raises(TFCheckpointError, match="slices of partitioned tensor 'part' cover only"):
        TFCheckpointReader(tmp_path / "holes").get_tensor("part")


@pytest.mark.parametrize(
    "value", [0, 1, -1, 63, -64, 64, -65, 100, -100, 1250, 2**20, -(2**33), 2**54, 2**55 - 1, -(2**55)]
)
def test_ordered_code_signed(value: int) -> None:
    enc = bw.ordered_signed(value)
    assert tfc._read_ordered_signed(enc + b"tail", 0) == (value, len(enc))


def test_slice_key_roundtrip() -> None:
    raw = b"a\x00\xff\x00\x01z"  # NUL and 0xff exercise the string escapes
    assert tfc._read_ordered_string(bw.ordered_string(raw) + b"tail", 0) == (raw, len(bw.ordered_string(raw)))
    name = "layer/\x00kernel"
    key = bw.slice_key(name, ((0, -1), (1250, 894)))
    assert tfc._decode_slice_key(key) == (name, ((0, -1), (1250, 894)))
    # Key for ("part", (5, 5), (0, 4)) as written by TF 2.20's fixed_size_partitioner.
    tf_key = b"\x00part\x00\x01\x01\x02\x85\x85\x80\x84"
    assert tfc._decode_slice_key(tf_key) == ("part", ((5, 5), (0, 4)))


def test_crc32c() -> None:
    assert tfc.crc32c(b"123456789") == 0xE3069283  # the standard check value
    assert tfc.crc32c(b"") == 0
    assert tfc.crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4 test vector
    rng = np.random.default_rng(1)
    for n in [1, 255, 4095, 4096, 4097, 70_001, 1 << 20]:
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        slow = crcmod._crc_update_py(0xFFFFFFFF, data) ^ 0xFFFFFFFF
        assert crcmod._crc32c_python(data) == slow, n


def test_snappy_decompress() -> None:
    # "abc" literal, then a 1-byte-offset copy (len 9, off 3), then a 2-byte-offset copy (len 5, off 12).
    stream = bytes([17, (3 - 1) << 2]) + b"abc" + bytes([((9 - 4) << 2) | 1, 3, ((5 - 1) << 2) | 2, 12, 0])
    assert tfc._snappy_decompress(stream) == b"abc" * 4 + b"abcab"
    with pytest.raises(TFCheckpointError, match="snappy"):
        tfc._snappy_decompress(bytes([5, ((4 - 4) << 2) | 1, 9]))


def test_negative_varint_roundtrip() -> None:
    fields = tfc.parse_proto(bw.field_varint(4, -5) + bw.field_fixed32(6, 7) + bw.field_bytes(2, b"xy"))
    assert tfc._int64(fields[4][0]) == -5 and fields[6] == [7] and fields[2] == [b"xy"]


# --- checkpoints written by TensorFlow itself ----------------------------------------------------------


def _expected(npz: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    with np.load(npz) as f:
        dtypes = dict(s.split("=", 1) for s in f["__dtypes__"].tolist())
        return {k: f[k] for k in f.files if k != "__dtypes__"}, dtypes


@pytest.mark.parametrize("sub", ["tf2", "tf1"])
def test_real_tf_checkpoint(sub: str) -> None:
    expected, dtypes = _expected(FIXTURES / f"{sub}_expected.npz")
    reader = TFCheckpointReader(FIXTURES / sub)  # directory form (tf1 has a `checkpoint` state file)
    assert reader.keys() == sorted(expected)
    tf_to_ours = {"string": "string", "bfloat16": "bfloat16"}
    for name, shape, dtype in reader.list_variables():
        assert dtype == tf_to_ours.get(dtypes[name], dtypes[name]), name
        got = reader.get_tensor(name)
        want = expected[name]
        if dtype == "string":  # scalar strings were stored as their bytes
            assert shape == () and got.shape == () and got.item() == want.tobytes(), name
        else:
            assert shape == want.shape and got.dtype == want.dtype, name
            np.testing.assert_array_equal(got, want, err_msg=name)


def test_real_tf_checkpoint_contents() -> None:
    tensors = read_checkpoint(FIXTURES / "tf2" / "ckpt")
    assert "_CHECKPOINTABLE_OBJECT_GRAPH" not in tensors  # string metadata is skipped
    assert tensors["step/.ATTRIBUTES/VARIABLE_VALUE"] == 2**40 + 7
    assert tensors["empty/.ATTRIBUTES/VARIABLE_VALUE"].shape == (0, 3)
    tf1 = read_checkpoint(FIXTURES / "tf1" / "model.ckpt-42.index")
    assert set(tf1) == {"global_step", "net/bn/gamma", "net/conv/kernel", "net/part"}
    assert tf1["global_step"] == 42 and tf1["net/part"].shape == (5, 3)  # reassembled from 2 slices


def test_real_tf_checkpoint_copy_detects_corruption(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES / "tf2", tmp_path / "tf2")
    shard = tmp_path / "tf2" / "ckpt.data-00000-of-00001"
    reader = TFCheckpointReader(tmp_path / "tf2" / "ckpt")
    entry = reader._entries["w/.ATTRIBUTES/VARIABLE_VALUE"]
    data = bytearray(shard.read_bytes())
    struct.pack_into("<f", data, entry.offset, 123.0)
    shard.write_bytes(bytes(data))
    with pytest.raises(TFCheckpointError, match="crc32c mismatch for tensor 'w/.ATTRIBUTES/VARIABLE_VALUE'"):
        reader.get_tensor("w/.ATTRIBUTES/VARIABLE_VALUE")
    os.truncate(shard, entry.offset + 4)
    with pytest.raises(TFCheckpointError, match="is truncated: tensor 'w/.ATTRIBUTES/VARIABLE_VALUE'"):
        reader.get_tensor("w/.ATTRIBUTES/VARIABLE_VALUE")
