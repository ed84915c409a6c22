"""The TensorFlow-free checkpoint writer against bytes TensorFlow itself wrote.

``tests/fixtures/tpu_tiny/train_checkpoint.tar.gz`` was saved by ``tf.compat.v1.train.Saver`` (TF 2.20) from the
TPU code's training graph (see tools/tf1_reference.py). Re-writing its tensors must give the same files, byte for
byte: index table layout, block trailers, protobuf field choices, data order, checksums and the state file.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest

from spinenet.convert import tf_bundle_writer as bw
from spinenet.convert.tf_checkpoint import TFCheckpointReader

TARBALL = Path(__file__).resolve().parents[1] / "fixtures" / "tpu_tiny" / "train_checkpoint.tar.gz"


@pytest.fixture(scope="module")
def tf_written(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tf_written")
    with tarfile.open(TARBALL) as tar:
        tar.extractall(folder, filter="data")
    (index,) = folder.rglob("*.index")
    return index.with_suffix("")


def test_rewriting_a_tf_checkpoint_gives_tfs_bytes(tf_written, tmp_path):
    reader = TFCheckpointReader(tf_written)
    tensors = {name: reader.get_tensor(name) for name in reader.keys()}
    assert len(tensors) > 1000 and tensors["global_step"].dtype == np.int64
    ours = bw.write_bundle(tmp_path / tf_written.name, tensors)
    for suffix in (".index", ".data-00000-of-00001"):
        theirs = Path(f"{tf_written}{suffix}").read_bytes()
        mine = Path(f"{ours}{suffix}").read_bytes()
        assert len(mine) == len(theirs) and mine == theirs, suffix
    bw.write_checkpoint_state(tmp_path, ours.name)
    assert (tmp_path / "checkpoint").read_bytes() == (tf_written.parent / "checkpoint").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in tf_written.parent.iterdir())


def test_index_spanning_several_blocks_reads_back(tmp_path):
    """Small blocks: one index entry per data block, keyed by LevelDB's shortened separators."""
    rng = np.random.default_rng(1)
    tensors = {f"scope{i % 7}/layer_{i}/kernel": rng.standard_normal(i % 5 + 1).astype(np.float32)
               for i in range(300)}
    prefix = bw.write_bundle(tmp_path / "ckpt", tensors, block_size=256)
    reader = TFCheckpointReader(prefix)
    assert reader.keys() == sorted(tensors)
    for name, value in tensors.items():
        np.testing.assert_array_equal(reader.get_tensor(name), value)


def test_leveldb_key_shortening():
    assert bw._shortest_separator(b"abcd", b"abzz") == b"abd"
    assert bw._shortest_separator(b"abc", b"abd") == b"abc"  # c+1 == d: no shorter key fits between
    assert bw._shortest_separator(b"ab", b"abc") == b"ab"  # a prefix stays
    assert bw._short_successor(b"spinenet/x") == b"t"
    assert bw._short_successor(b"\xff\xffa") == b"\xff\xffb"


def test_unsupported_dtype_writes_nothing(tmp_path):
    with pytest.raises(TypeError, match="can't store a datetime64"):
        bw.write_bundle(tmp_path / "ckpt", {"a": np.ones(2, np.float32), "t": np.array(["2020-01-01"], "M8[D]")})
    assert list(tmp_path.iterdir()) == []


def test_state_file_escapes_as_text_format_and_reads_back(tmp_path):
    prefix = bw.write_bundle(tmp_path / 'mödel"1', {"x": np.ones(2, np.float32)})
    bw.write_checkpoint_state(tmp_path, prefix.name)
    text = (tmp_path / "checkpoint").read_text()
    assert text.startswith('model_checkpoint_path: "m\\303\\266del\\"1"\n')
    assert TFCheckpointReader(tmp_path).prefix == prefix
