"""The seed's chain with its own flag spellings, end to end, on the committed demo detector — and the
deployed model's mAP (image2bin -> infer -> report) against `spinenet evaluate` of the checkpoint."""

import json
from pathlib import Path

import pytest

from spinenet.cli import main
from spinenet.data.synthetic import make_synthetic_dataset
from spinenet.engine.evaluate import evaluate_checkpoint

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
CKPT = ROOT / "demo" / "shapes49s_fp16.pt"
SEED_OVERRIDE = "{ train: { total_steps : 231500, train_batch_size : 4}, eval: { eval_batch_size : 4 } }"


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    root = tmp_path_factory.mktemp("heldout")
    # Half the images odd-sized (non-square, other aspect ratios), so letterboxing and box mapping are exercised.
    make_synthetic_dataset(root, num_train=0, num_val=24, image_size=128, seed=11, size_range=(0.15, 0.6),
                           odd_size_fraction=0.5, progress=False)
    return root


def test_seed_commands_and_deployed_map_equals_evaluate(held_out, tmp_path, capsys):
    assert CKPT.exists(), "the demo detector (demo/shapes49s_fp16.pt) is part of the repository"
    pattern = str(held_out / "val" / "*.jpg")
    ann = str(held_out / "annotations" / "instances_val.json")
    # 1. freeze_graph.py's flags
    assert main(["export", "--model=retinanet", f"--config_file={ROOT / 'configs' / 'spinenet49S_retinanet.yaml'}",
                 f"--params_override={SEED_OVERRIDE}", f"--checkpointpath={CKPT}", f"--output={tmp_path / 'pb'}",
                 "--input_image_size=128,128"]) == 0
    onnx = next((tmp_path / "pb").glob("*.onnx"))
    # 2. image2bin.py's flags
    assert main(["image2bin", f"--image_file_pattern={pattern}", f"--output_dir={tmp_path / 'bindata'}",
                 "--image_size=128"]) == 0
    # 3. msame's flags
    assert main(["infer", "--model", str(onnx), "--input", str(tmp_path / "bindata"), "--output",
                 str(tmp_path / "out"), "--outfmt", "TXT"]) == 0
    run = next((tmp_path / "out").iterdir())
    # 4. test_spinenet_om_data.py's flags (+ --annotations for the deployed model's mAP)
    html = tmp_path / "test_spinenet_om.html"
    assert main(["report", f"--output={run}", f"--label_map_file={held_out / 'labels.csv'}",
                 f"--output_html={html}", f"--image_file_pattern={pattern}",
                 f"--manifest={tmp_path / 'bindata' / 'manifest.json'}", f"--annotations={ann}"]) == 0
    assert len(list((tmp_path / "test_spinenet_om_files" / "img").glob("*.jpg"))) == 24  # one picture per image
    deployed = json.loads((tmp_path / "test_spinenet_om_metrics.json").read_text())
    reference = evaluate_checkpoint(CKPT, (ann, str(held_out / "val")), output=str(tmp_path / "eval"),
                                    num_workers=0, progress=False, device="cpu")
    capsys.readouterr()
    assert reference["AP50"] > 0.1, "the demo detector should detect the shapes"
    assert abs(deployed["AP"] - reference["AP"]) <= 0.002, (deployed["AP"], reference["AP"])
    assert abs(deployed["AP50"] - reference["AP50"]) <= 0.002


def test_onnxruntime_equals_pytorch_on_synthetic_images(held_out, tmp_path):
    """The exported graph (ONNX Runtime) against the same checkpoint in PyTorch, image by image (24 images)."""
    import numpy as np
    import torch

    from spinenet.convert.parity import compare_detections
    from spinenet.deploy.export import export_onnx
    from spinenet.deploy.image2bin import image2bin
    from spinenet.deploy.runtimes import OnnxRuntimeSession, TorchSession
    from spinenet.engine.checkpoint import load_model

    model, _ = load_model(CKPT)
    onnx = export_onnx(model, tmp_path / "m.onnx", image_size=(128, 128))
    image2bin(str(held_out / "val" / "*.jpg"), tmp_path / "bins", 128, progress=False)
    ort, pt = OnnxRuntimeSession(onnx), TorchSession(CKPT, image_size=(128, 128))
    bins = sorted((tmp_path / "bins").glob("*.bin"))
    assert len(bins) >= 20
    matched = 0
    for path in bins:
        x = np.fromfile(path, np.uint8).reshape(1, 128, 128, 3)
        a, b = ort.run(x), pt.run(x)
        ref = {"detection_boxes": b["DetectionBoxes"], "detection_scores": b["DetectionScores"],
               "detection_classes": b["DetectionClasses"]}
        ours = {"detection_boxes": torch.from_numpy(a["DetectionBoxes"]),
                "detection_scores": torch.from_numpy(a["DetectionScores"]),
                "detection_classes": torch.from_numpy(a["DetectionClasses"])}
        (d,) = compare_detections(ours, ref, box_tol=0.01, score_tol=1e-4)
        assert d.unmatched_ref == 0 and d.unmatched_ours == 0, (path.name, d)
        matched += d.matched
    assert matched > 0
