"""Label-map files: UTF-8 with or without a byte-order mark is read; another encoding is a one-line error."""

import pytest

from spinenet.data.label_map import read_label_map


def test_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_bytes(b"\xef\xbb\xbf1:person\n2:caf\xc3\xa9\n")  # as Notepad saves "UTF-8 with BOM"
    assert read_label_map(path) == {1: "person", 2: "café"}


def test_latin1_names_the_file_and_the_encoding_needed(tmp_path):
    path = tmp_path / "labels_latin1.csv"
    path.write_bytes("1:person\n2:café\n".encode("latin-1"))
    with pytest.raises(ValueError) as err:
        read_label_map(path)
    message = str(err.value)
    assert str(path) in message and "UTF-8" in message and "0xe9" in message
    assert "\n" not in message
