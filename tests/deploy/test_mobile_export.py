"""SpineNet-Mobile through deployment: ONNX export round trip (raw maps and detections against PyTorch), the
Ascend profile's operator list (no HardSwish/HardSigmoid nodes), and the CLI chain train -> export -> infer ->
report."""

import math

import numpy as np
import onnx
import pytest
import torch

from spinenet.cli import main
from spinenet.convert.parity import compare_detections
from spinenet.deploy.atc_ops import atc_operator_list, unlisted_nodes
from spinenet.deploy.export import ExportWrapper, export_onnx
from spinenet.deploy.onnx_graph import all_op_types, check_exported_model
from spinenet.deploy.runtimes import OnnxRuntimeSession
from spinenet.registry import config_path, create_model

SIZE = 128


@torch.no_grad()
def informative_mobile(model, images):
    """Spread the separable head's logits (a random init keeps them at the prior) and set per-level BN stats."""
    model.eval()
    feats = model.backbone(images)
    for subnet, pred_std in ((model.head.class_net, 2.5), (model.head.box_net, 0.4)):
        for conv in subnet.convs:
            torch.nn.init.normal_(conv.depthwise.weight, std=1.0 / 3.0)
            torch.nn.init.normal_(conv.pointwise.weight, std=1.0 / math.sqrt(conv.in_channels))
        torch.nn.init.normal_(subnet.predict.depthwise.weight, std=1.0 / 3.0)
        torch.nn.init.normal_(subnet.predict.pointwise.weight, std=pred_std / math.sqrt(subnet.predict.in_channels))
        for level, x in feats.items():
            for conv, norm in zip(subnet.convs, subnet.norms[str(level)], strict=True):
                y = conv(x)
                norm.running_mean.fill_(y.mean().item())
                norm.running_var.fill_(y.var().item())
                x = subnet.act(norm(y))
    return model


@pytest.fixture(scope="module")
def mobile_model():
    torch.manual_seed(0)
    model = create_model("retinanet_spinenet49s_mobile", num_classes=6).eval()
    g = torch.Generator().manual_seed(1)
    calib = torch.randint(0, 256, (2, SIZE, SIZE, 3), generator=g, dtype=torch.uint8)
    return informative_mobile(model, ExportWrapper(model, batch_size=2, image_size=(SIZE, SIZE)).preprocess(calib))


def test_detection_graph_matches_pytorch(mobile_model, random_images, tmp_path):
    path = export_onnx(mobile_model, tmp_path / "m.onnx", image_size=(SIZE, SIZE))
    proto = onnx.load(path)
    check_exported_model(proto, opset=13)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["spinenet.conv_algorithm"] == "direct"  # no Winograd form for depthwise/separable convolutions
    assert not {"HardSwish", "HardSigmoid"} & set(all_op_types(proto.graph))
    images = random_images(1, seed=5)
    out = OnnxRuntimeSession(path, threads=1).run(images.numpy())
    with torch.no_grad():
        ref = mobile_model.detect(ExportWrapper(mobile_model, image_size=(SIZE, SIZE)).preprocess(images))
    assert int(out["NumDetections"][0]) == int(ref["num_detections"][0]) > 20  # NMS had real work
    onnx_dets = {"detection_boxes": torch.from_numpy(out["DetectionBoxes"]),
                 "detection_scores": torch.from_numpy(out["DetectionScores"]),
                 "detection_classes": torch.from_numpy(out["DetectionClasses"])}
    for diff in compare_detections(onnx_dets, {k: v.numpy() for k, v in ref.items()}, box_tol=0.01,
                                   score_tol=1e-4):
        assert diff.unmatched_ref == 0 and diff.unmatched_ours == 0, diff


def test_ascend_graph_is_on_the_cann5_list(mobile_model, tmp_path):
    path = export_onnx(mobile_model, tmp_path / "a.onnx", image_size=(SIZE, SIZE), target="ascend",
                       postprocess="none", input_type="raw_image_tensor")
    proto = onnx.load(path)
    cann5 = atc_operator_list("5")
    assert unlisted_nodes(proto.graph, cann5) == []
    ops = set(all_op_types(proto.graph))
    assert "Clip" in ops and not {"HardSwish", "HardSigmoid"} & ops  # hard_swish written out as Clip/Add/Mul
    # Raw maps equal PyTorch's (BN folded; depthwise kernels carried over).
    x = torch.randn(1, SIZE, SIZE, 3)
    out = OnnxRuntimeSession(path, threads=1).run(x.numpy())
    with torch.no_grad():
        cls, box = mobile_model(x.permute(0, 3, 1, 2))
    for level in range(3, 8):
        for name, ref in ((f"cls_{level}", cls[level]), (f"box_{level}", box[level])):
            np.testing.assert_allclose(out[name], ref.numpy(), rtol=0, atol=1e-4 * max(1.0, ref.abs().max().item()))


@pytest.mark.slow
def test_cli_chain_train_export_infer_report(tmp_path):
    from spinenet.data.synthetic import make_synthetic_dataset

    data = tmp_path / "data"
    make_synthetic_dataset(data, num_train=4, num_val=4, image_size=SIZE, seed=3, progress=False)
    ann, val = str(data / "annotations/instances_val.json"), str(data / "val")
    assert main(["train", "--config_file", str(config_path("retinanet_spinenet49xs_mobile")),
                 "--set", "architecture.num_classes=6", "--set", f"retinanet_parser.output_size=[{SIZE},{SIZE}]",
                 "--set", "train.train_batch_size=2", "--set", "train.total_steps=2",
                 "--set", "train.learning_rate.warmup_steps=1",
                 "--set", "train.learning_rate.learning_rate_steps=[1,2]",
                 "--model_dir", str(tmp_path / "run"), "--train_data", str(data / "annotations/instances_train.json"),
                 str(data / "train"), "--val_data", ann, val, "--num_workers", "0", "--no_progress"]) == 0
    ckpt = torch.load(tmp_path / "run" / "ckpt-2.pt", weights_only=True)
    assert ckpt["variant"] == "retinanet_spinenet49xs_mobile" and ckpt["model_id"] == "49XS"
    assert main(["export", f"--checkpointpath={tmp_path / 'run' / 'ckpt-2.pt'}", f"--output={tmp_path / 'pb'}",
                 f"--input_image_size={SIZE},{SIZE}"]) == 0
    onnx_path = tmp_path / "pb" / "retinanet_spinenet49xs_mobile.onnx"
    assert main(["image2bin", f"--image_file_pattern={val}/*.jpg", f"--output_dir={tmp_path / 'bins'}",
                 f"--image_size={SIZE}"]) == 0
    assert main(["infer", "--model", str(onnx_path), "--input", str(tmp_path / "bins"), "--output",
                 str(tmp_path / "out"), "--outfmt", "TXT"]) == 0
    run = next((tmp_path / "out").iterdir())
    assert main(["report", f"--output={run}", f"--label_map_file={data / 'labels.csv'}",
                 f"--output_html={tmp_path / 'r.html'}", f"--image_file_pattern={val}/*.jpg",
                 f"--manifest={tmp_path / 'bins' / 'manifest.json'}", f"--annotations={ann}"]) == 0
    assert (tmp_path / "r_metrics.json").exists()
