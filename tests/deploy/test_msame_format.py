"""msame's TXT/BIN layout, file and folder names, written and read back (deployment-contract.md §2)."""

import datetime as dt

import numpy as np
import pytest

from spinenet.deploy.msame_format import (
    current_time_dirname,
    format_txt,
    read_seed_outputs,
    resolve_run_folder,
    timeline_dirname,
    write_output,
)


def test_txt_layout_by_hand():
    # [1,3,2] floats: a space after every value, a newline after every last-dimension row.
    assert format_txt(np.array([[[0.5, 1.0], [-1.0, 2.25], [1e-5, 123456789.0]]], np.float32)) == \
        "0.5 1 \n-1 2.25 \n1e-05 1.23457e+08 \n"
    # [1,4] int32: one line; [1] (num_detections): the value and its space, no newline.
    assert format_txt(np.array([[3, 0, 17, 90]], np.int32)) == "3 0 17 90 \n"
    assert format_txt(np.array([7], np.int32)) == "7 "
    # [1,2,2,2]: newline after every row of 2; a second newline is NOT added at the 4-element boundary
    # (msame writes one "\n" when i is divisible by any of the products).
    assert format_txt(np.arange(8, dtype=np.int32).reshape(1, 2, 2, 2)) == "0 1 \n2 3 \n4 5 \n6 7 \n"


def test_folder_names():
    t = dt.datetime(2022, 6, 6, 22, 20, 3, 123456)
    assert timeline_dirname(t) == "20220606_222003"
    assert current_time_dirname(t) == "202266_22_20_3_123456"


def seed_outputs():
    return [np.array([2], np.int32), np.zeros((1, 100, 4), np.float32) + 1.5, np.ones((1, 100), np.int32),
            np.full((1, 100), -1.0, np.float32), np.array([[[480, 640], [640, 640], [1, 1], [0, 0]]], np.float32)]


@pytest.mark.parametrize("outfmt", ["TXT", "BIN"])
@pytest.mark.parametrize("folder", ["20220606_222003", "202266_22_20_3_123456"])
def test_round_trip_in_both_folder_styles(tmp_path, outfmt, folder):
    run = tmp_path / "out" / folder
    run.mkdir(parents=True)
    for k, a in enumerate(seed_outputs()):
        write_output(run, "00000", k, a, outfmt)
    assert resolve_run_folder(tmp_path / "out") == run
    got = read_seed_outputs(run, "00000")
    for (name, a), b in zip(got.items(), seed_outputs(), strict=True):
        np.testing.assert_array_equal(a, b.reshape(a.shape), err_msg=name)
    assert got["DetectionBoxes"].shape == (1, 100, 4) and got["NumDetections"].dtype == np.int32


def test_missing_output_names_the_file(tmp_path):
    for k, a in enumerate(seed_outputs()[:3]):
        write_output(tmp_path, "00003", k, a)
    with pytest.raises(FileNotFoundError, match="00003_output_3.txt"):
        read_seed_outputs(tmp_path, "00003")
    assert read_seed_outputs(tmp_path, "00004") is None


def test_no_outputs_anywhere(tmp_path):
    (tmp_path / "notes").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no msame outputs"):
        resolve_run_folder(tmp_path)
