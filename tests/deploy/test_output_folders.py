"""Reading ais_bench and msame output folders: hand-made fixtures (tests/fixtures/ascend_outputs, made once with
the layouts of Ascend/tools @9d6da90 ais_bench ``utils.save_data_to_files`` / ``summary.py`` and msame; values
chosen by hand) and fp16 BIN told by size."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spinenet.deploy.host_postprocess import DetectionSource
from spinenet.deploy.msame_format import SEED_OUTPUTS
from spinenet.deploy.output_folders import AIS_BENCH, MSAME, OutputSpec, open_run_folder, read_array
from spinenet.deploy.report import write_report

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ascend_outputs"
SPECS = [OutputSpec(n, np.dtype(d), (1, *s)) for n, d, s in SEED_OUTPUTS]
# The hand-written detections of image 00000 in both fixtures (network pixels, then class, score).
DETS = [((20, 40, 60, 100), 1, 0.9), ((0, 0, 50, 50), 2, 0.625)]


def check_fixture_outputs(out):
    assert out["NumDetections"].tolist() == [2] and out["NumDetections"].dtype == np.int32
    np.testing.assert_array_equal(out["DetectionBoxes"][0, :2], [d[0] for d in DETS])
    assert out["DetectionClasses"][0, :3].tolist() == [1, 2, 0] and out["DetectionClasses"].dtype == np.int32
    np.testing.assert_allclose(out["DetectionScores"][0, :3], [0.9, 0.625, -1], rtol=1e-3)
    np.testing.assert_array_equal(out["ImageInfo"][0], [[160, 320], [640, 640], [2, 2], [0, 0]])


def test_ais_bench_timestamp_folder_and_summary_beside_it():
    run = open_run_folder(FIXTURES / "ais_bench" / "out")  # the parent: the %Y_%m_%d-%H_%M_%S folder is found
    assert run.tool == AIS_BENCH and run.path.name == "2022_06_06-22_20_03"
    assert run.summary == FIXTURES / "ais_bench" / "out" / "2022_06_06-22_20_03_summary.json"
    assert run.names() == {"00000"}
    check_fixture_outputs(run.read("00000", SPECS))
    timing = run.timing()
    assert timing["NPU_compute_time.mean"] == 42.375 and timing["throughput"] == pytest.approx(23.5988, abs=1e-4)
    assert "npu_compute_time_list" not in timing and not any(k.startswith("filesinfo") for k in timing)


def test_ais_bench_output_dirname_npy_and_bin(tmp_path):
    """--output_dirname: any folder name, given itself; NPY keeps the dtype, BIN is told by size."""
    run = tmp_path / "out" / "my_run"
    run.mkdir(parents=True)
    values = [np.array([2], np.int32), np.zeros((1, 100, 4), np.float32), np.zeros((1, 100), np.int32),
              np.full((1, 100), -1, np.float32), np.array([[[160, 320], [640, 640], [2, 2], [0, 0]]], np.float32)]
    values[1][0, :2] = [d[0] for d in DETS]
    values[2][0, :2] = [1, 2]
    values[3][0, :2] = [0.9, 0.625]
    for k, a in enumerate(values):  # NPY for the odd outputs (fp16 inside), BIN for the even ones
        if k % 2:
            np.save(run / f"00000_{k}.npy", a.astype(np.float16))
        else:
            a.tofile(run / f"00000_{k}.bin")
    (tmp_path / "out" / "my_run_summary.json").write_text('{"NPU_compute_time": {"mean": 5.0}}')
    with pytest.raises(FileNotFoundError, match="output_dirname give that folder itself"):
        open_run_folder(tmp_path / "out")
    folder = open_run_folder(run)
    assert folder.tool == AIS_BENCH and folder.timing() == {"NPU_compute_time.mean": 5.0}
    check_fixture_outputs(folder.read("00000", SPECS))


def test_msame_fp16_bin_told_by_size():
    run = open_run_folder(FIXTURES / "msame_fp16")
    assert run.tool == MSAME
    check_fixture_outputs(run.read("00000", SPECS))


def test_bin_size_errors_are_one_line(tmp_path):
    spec = OutputSpec("DetectionScores", np.dtype(np.float32), (1, 100))
    path = tmp_path / "x_output_3.bin"
    np.zeros(150, np.float32).tofile(path)
    with pytest.raises(ValueError, match=r"600 bytes fit neither float32 nor float16 DetectionScores \[1, 100\] "
                                         r"\(400 or 200 bytes\)") as e:
        read_array(path, spec)
    assert str(tmp_path) in str(e.value) and "\n" not in str(e.value)
    # An int16 NumDetections (ATC --output_type=INT16) has the fp16 size but decodes to a subnormal: refused.
    np.array([3], np.int16).tofile(path)
    with pytest.raises(ValueError, match="not float16 integers"):
        read_array(path, OutputSpec("NumDetections", np.dtype(np.int32), (1,)))
    np.array([3], np.float16).tofile(path)
    assert read_array(path, OutputSpec("NumDetections", np.dtype(np.int32), (1,))).tolist() == [3]


def test_txt_count_mismatch_names_the_file(tmp_path):
    path = tmp_path / "00000_1.txt"
    path.write_text("1.0 2.0 \n3.0 \n")
    with pytest.raises(ValueError, match=r"3 values, expected 400 for DetectionBoxes \[1, 100, 4\]"):
        read_array(path, SPECS[1])


def test_msame_names_win_over_ais_bench_pattern(tmp_path):
    """msame's ``_output_0.txt`` also ends in ``_0.txt``; such a folder is msame's, with name ``00000``."""
    shutil.copytree(FIXTURES / "msame_fp16" / "20220606_222003", tmp_path / "run")
    run = open_run_folder(tmp_path / "run")
    assert run.tool == MSAME and run.names() == {"00000"}


@pytest.mark.parametrize("folder", ["ais_bench/out", "msame_fp16"])
def test_report_reads_the_fixture_folders(folder, tmp_path):
    """The whole report on a 320x160 image: boxes come back divided by ImageInfo row 2 (= 2)."""
    Image.new("RGB", (320, 160), (90, 120, 200)).save(tmp_path / "a.jpg")
    labels = tmp_path / "labels.csv"
    labels.write_text("1:person\n2:car\n")
    result = write_report(FIXTURES / folder, labels, tmp_path / "r.html", str(tmp_path / "*.jpg"), verbose=False)
    dets = result.detections[str(tmp_path / "a.jpg")]
    assert [(d.name, round(d.score, 3)) for d in dets] == [("person", 0.9), ("car", 0.625)]
    np.testing.assert_allclose(dets[0].box, (10, 20, 30, 50))
    np.testing.assert_allclose(dets[1].box, (0, 0, 25, 25))
    if folder.startswith("ais"):
        assert "NPU_compute_time.mean" in (tmp_path / "r.html").read_text()


def test_raw_maps_without_model_are_refused(tmp_path):
    run = tmp_path / "20220606_222003"
    run.mkdir()
    for k in range(10):
        np.zeros(4, np.float32).tofile(run / f"00000_output_{k}.bin")
    with pytest.raises(ValueError, match="more than 5 outputs .* pass --model"):
        DetectionSource(run)
    assert os.listdir(run)  # nothing removed or written


def test_txt_garbage_names_the_file(tmp_path):
    path = tmp_path / "00000_output_3.txt"
    path.write_text("0.5 oops \n")
    with pytest.raises(ValueError, match="not msame/ais_bench TXT output") as e:
        read_array(path, OutputSpec("DetectionScores", np.dtype(np.float32), (1, 2)))
    assert str(path) in str(e.value)
