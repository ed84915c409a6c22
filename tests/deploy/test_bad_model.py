"""A model file that is not an ONNX model (random bytes, a truncated copy) is one line naming the file and the fix,
in every command that loads one and on both ONNX backends; the CLI processes are run as a user runs them."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import spinenet
from spinenet.deploy.runtimes import OnnxRuntimeSession, OpenVinoSession

SRC = str(Path(spinenet.__file__).resolve().parents[1])
COMMANDS = {
    "infer onnxruntime": ["infer", "--model", "{model}", "--input", "{tmp}", "--output", "{tmp}/out"],
    "infer openvino": ["infer", "--model", "{model}", "--input", "{tmp}", "--output", "{tmp}/out",
                       "--backend", "openvino"],
    "detect": ["detect", "{tmp}/x.jpg", "--model", "{model}", "--output", "{tmp}/det"],
    "benchmark onnxruntime": ["benchmark", "--model", "{model}", "--backends", "onnxruntime"],
    "benchmark openvino": ["benchmark", "--model", "{model}", "--backends", "openvino"],
}


def test_random_bytes_model_is_one_line_in_every_command(tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    procs = {name: subprocess.Popen([sys.executable, "-m", "spinenet.cli",
                                     *(a.format(model=model, tmp=tmp_path) for a in args)],
                                    env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, args in COMMANDS.items()}
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 1, (name, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in err, (name, err)  # nothing from the runtime's own logging
        assert f"{model}:" in lines[0] and "spinenet export" in lines[0], (name, err)
    assert not (tmp_path / "out").exists() and not (tmp_path / "det" / "detections.json").exists()


def test_truncated_export_is_named(small_onnx, tmp_path):
    onnx = small_onnx
    x = np.random.default_rng(0).integers(0, 256, (1, 128, 128, 3), dtype=np.uint8)
    # the OpenVINO session (loaded through its ONNX frontend by name) agrees with ONNX Runtime on the good file
    ort_out = OnnxRuntimeSession(onnx).run(x)
    ov_out = OpenVinoSession(onnx).run(x)
    np.testing.assert_allclose(ov_out["DetectionScores"], ort_out["DetectionScores"], atol=1e-4)
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(onnx.read_bytes()[: onnx.stat().st_size // 2])
    for session in (OnnxRuntimeSession, OpenVinoSession):
        with pytest.raises(ValueError, match=f"{cut}: .* cannot load this model .*spinenet export"):
            session(cut)
