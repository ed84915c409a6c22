"""The host post-processing route end to end on the committed demo detector: raw-maps export -> image2bin ->
infer (BIN) -> report --model raw.onnx --annotations, against `spinenet evaluate` of the checkpoint."""

import json
from pathlib import Path

import pytest

from spinenet.cli import main
from spinenet.data.synthetic import make_synthetic_dataset
from spinenet.engine.evaluate import evaluate_checkpoint

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
CKPT = ROOT / "demo" / "shapes49s_fp16.pt"


def test_raw_maps_route_gives_evaluates_map(tmp_path, capsys):
    held = tmp_path / "held"
    make_synthetic_dataset(held, num_train=0, num_val=8, image_size=128, seed=11, size_range=(0.15, 0.6),
                           odd_size_fraction=0.5, progress=False)
    pattern, ann = str(held / "val" / "*.jpg"), str(held / "annotations" / "instances_val.json")
    raw = tmp_path / "raw.onnx"
    assert main(["export", f"--checkpointpath={CKPT}", f"--output={raw}", "--input_image_size=128,128",
                 "--postprocess=none", "--conv_algorithm=direct"]) == 0
    assert main(["image2bin", f"--image_file_pattern={pattern}", f"--output_dir={tmp_path / 'bins'}",
                 "--image_size=128", "--quiet"]) == 0
    assert main(["infer", "--model", str(raw), "--input", str(tmp_path / "bins"), "--output", str(tmp_path / "out"),
                 "--outfmt", "BIN", "--quiet"]) == 0
    assert main(["report", f"--output={tmp_path / 'out'}", f"--label_map_file={held / 'labels.csv'}",
                 f"--output_html={tmp_path / 'r.html'}", f"--manifest={tmp_path / 'bins' / 'manifest.json'}",
                 f"--annotations={ann}", "--model", str(raw), "--no_progress"]) == 0
    deployed = json.loads((tmp_path / "r_metrics.json").read_text())
    reference = evaluate_checkpoint(CKPT, (ann, str(held / "val")), output=str(tmp_path / "eval"), num_workers=0,
                                    progress=False, device="cpu")
    capsys.readouterr()
    assert deployed["num_images"] == 8 and reference["AP50"] > 0.1
    assert abs(deployed["AP"] - reference["AP"]) <= 0.002, (deployed["AP"], reference["AP"])
    assert abs(deployed["AP50"] - reference["AP50"]) <= 0.002
