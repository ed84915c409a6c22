"""ONNX export round trip of a small SpineNet-49S (6 classes, 128x128): the seed's graph contract, static
shapes, no NonZero, and ONNX Runtime outputs equal to PyTorch's."""

import argparse

import numpy as np
import onnx
import pytest
import torch

from spinenet.convert.parity import compare_detections
from spinenet.deploy.cli import add_export_parser, resolve_output_path
from spinenet.deploy.export import DETECTION_OUTPUTS, ExportWrapper, export_onnx, raw_output_names
from spinenet.deploy.onnx_graph import all_op_types, check_exported_model
from spinenet.deploy.runtimes import OnnxRuntimeSession
from spinenet.modeling.postprocess import generate_detections
from spinenet.modeling.retinanet import default_image_info

BATCH = 2
SIZE = 128  # the small_model fixture's input size


@pytest.fixture(scope="module")
def detection_onnx(small_model, tmp_path_factory):
    # Winograd on every map (the default starts at 40x40, which a 128x128 input never reaches), so the
    # comparisons below cover it, BN folding and the dropped background channels against the eager model.
    return export_onnx(small_model, tmp_path_factory.mktemp("onnx") / "det.onnx", batch_size=BATCH,
                       image_size=(SIZE, SIZE), winograd_min_pixels=1)


@pytest.fixture(scope="module")
def raw_onnx(small_model, tmp_path_factory):
    return export_onnx(small_model, tmp_path_factory.mktemp("onnx") / "raw.onnx", image_size=(SIZE, SIZE),
                       input_type="raw_image_tensor", postprocess="none", winograd_min_pixels=1)


def test_graph_follows_the_seed_contract(detection_onnx):
    proto = onnx.load(detection_onnx)
    check_exported_model(proto, opset=13)  # checker, strict inference, static shapes, no NonZero
    assert "NonZero" not in all_op_types(proto.graph)
    [inp] = proto.graph.input
    assert inp.name == "Placeholder"
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim] == [BATCH, SIZE, SIZE, 3]
    i32, f32 = onnx.TensorProto.INT32, onnx.TensorProto.FLOAT
    expected = [("NumDetections", i32, [BATCH]), ("DetectionBoxes", f32, [BATCH, 100, 4]),
                ("DetectionClasses", i32, [BATCH, 100]), ("DetectionScores", f32, [BATCH, 100]),
                ("ImageInfo", f32, [BATCH, 4, 2])]
    got = [(o.name, o.type.tensor_type.elem_type, [d.dim_value for d in o.type.tensor_type.shape.dim])
           for o in proto.graph.output]
    assert got == expected
    assert [o.name for o in proto.graph.output] == list(DETECTION_OUTPUTS)


def test_onnxruntime_matches_pytorch(small_model, detection_onnx, random_images):
    images = random_images(BATCH, seed=5)
    out = OnnxRuntimeSession(detection_onnx, threads=2).run(images.numpy())
    assert list(out) == list(DETECTION_OUTPUTS)
    wrapper = ExportWrapper(small_model, batch_size=BATCH, image_size=(SIZE, SIZE))
    with torch.no_grad():
        ours = dict(zip(DETECTION_OUTPUTS, wrapper(images), strict=True))
        # The eager reference post-processing on the same maps gives the same detections.
        cls, box = small_model(wrapper.preprocess(images))
        ref = generate_detections(cls, box, small_model.anchors((SIZE, SIZE)), default_image_info(BATCH, SIZE, SIZE),
                                  small_model.params.postprocess)
    for key, name in [("num_detections", "NumDetections"), ("detection_classes", "DetectionClasses"),
                      ("detection_boxes", "DetectionBoxes")]:
        assert torch.equal(ours[name], ref[key]), key
    torch.testing.assert_close(ours["DetectionScores"], ref["detection_scores"], rtol=0, atol=1e-6)
    assert (out["NumDetections"] == 100).all()  # NMS had real work: more than 100 survivors per image

    np.testing.assert_array_equal(out["ImageInfo"], default_image_info(BATCH, SIZE, SIZE).numpy())
    assert out["DetectionScores"].dtype == np.float32 and out["DetectionClasses"].dtype == np.int32
    onnx_dets = {"detection_boxes": torch.from_numpy(out["DetectionBoxes"]),
                 "detection_scores": torch.from_numpy(out["DetectionScores"]),
                 "detection_classes": torch.from_numpy(out["DetectionClasses"])}
    torch_dets = {k: v.numpy() for k, v in ref.items()}
    for diff in compare_detections(onnx_dets, torch_dets, box_tol=0.01, score_tol=1e-4):
        assert diff.unmatched_ref == 0 and diff.unmatched_ours == 0, diff
        assert diff.matched + diff.near_tie_skipped == diff.num_ref == 100, diff
        assert diff.max_box_diff <= 0.01 and diff.max_score_diff <= 1e-4, diff


def test_raw_maps_match_pytorch(small_model, raw_onnx, random_images):
    proto = onnx.load(raw_onnx)
    check_exported_model(proto, opset=13)
    assert [o.name for o in proto.graph.output] == list(raw_output_names(3, 7))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    wrapper = ExportWrapper(small_model, image_size=(SIZE, SIZE))
    normalised = wrapper.preprocess(random_images(1, seed=6)).permute(0, 2, 3, 1).contiguous()  # NHWC float
    out = OnnxRuntimeSession(raw_onnx, threads=2).run(normalised.numpy())
    with torch.no_grad():
        cls, box = small_model(normalised.permute(0, 3, 1, 2))
    for level in range(3, 8):
        for name, ref in ((f"cls_{level}", cls[level]), (f"box_{level}", box[level])):
            assert out[name].shape == tuple(ref.shape)
            np.testing.assert_allclose(out[name], ref.numpy(), rtol=0, atol=1e-4 * max(1.0, ref.abs().max().item()))


def test_session_names_the_expected_input(detection_onnx):
    session = OnnxRuntimeSession(detection_onnx)
    assert session.input_shape == (BATCH, SIZE, SIZE, 3) and session.input_dtype == np.uint8
    with pytest.raises(ValueError, match=r"\(2, 128, 128, 3\) uint8"):
        session.run(np.zeros((1, SIZE, SIZE, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        session.run(np.zeros((BATCH, SIZE, SIZE, 3), dtype=np.float32))


def test_export_rejects_bad_arguments(small_model, tmp_path):
    with pytest.raises(ValueError, match="multiples of 128"):
        export_onnx(small_model, tmp_path / "x.onnx", image_size=(100, 128))
    with pytest.raises(ValueError, match="image_tensor, raw_image_tensor"):
        export_onnx(small_model, tmp_path / "x.onnx", input_type="image_bytes")
    with pytest.raises(ValueError, match="opset"):
        export_onnx(small_model, tmp_path / "x.onnx", opset=17)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_cli_parses_the_seed_flags(tmp_path):
    parser = argparse.ArgumentParser()
    add_export_parser(parser.add_subparsers())
    args = parser.parse_args(["export", "--checkpointpath=ckpt.pt", f"--output={tmp_path}", "--model=retinanet",
                              "--input_image_size=256,384", "--batch_size=2", "--params_override={}"])
    assert (args.checkpoint, args.input_image_size, args.batch_size, args.opset) == ("ckpt.pt", (256, 384), 2, 13)
    assert (args.input_type, args.postprocess) == ("image_tensor", "v1")
    assert resolve_output_path(tmp_path, "retinanet_spinenet49s") == tmp_path / "retinanet_spinenet49s.onnx"
    assert resolve_output_path(tmp_path / "m.onnx", "v") == tmp_path / "m.onnx"


def test_conv_algorithm_is_recorded_and_direct_keeps_plain_convolutions(small_model, detection_onnx, tmp_path):
    winograd = onnx.load(detection_onnx)
    direct = onnx.load(export_onnx(small_model, tmp_path / "direct.onnx", batch_size=BATCH, image_size=(SIZE, SIZE),
                                   conv_algorithm="direct"))
    meta = {m.key: m.value for m in direct.metadata_props}
    assert meta["spinenet.conv_algorithm"] == "direct"
    assert {m.key: m.value for m in winograd.metadata_props}["spinenet.conv_algorithm"] == "winograd"
    # Winograd's output transform is a DepthToSpace; a direct export has none. The backbone's BN is folded
    # into its convolutions in both (the head's per-level BN after shared convolutions stays a node).
    assert "DepthToSpace" in all_op_types(winograd.graph) and "DepthToSpace" not in all_op_types(direct.graph)
    for proto in (winograd, direct):
        assert not [n.name for n in proto.graph.node if n.op_type == "BatchNormalization" and "/backbone/" in n.name]
        assert [n.name for n in proto.graph.node if n.op_type == "BatchNormalization" and "/head/" in n.name]
    with pytest.raises(ValueError, match="winograd, direct"):
        export_onnx(small_model, tmp_path / "x.onnx", conv_algorithm="fft")
    assert not (tmp_path / "x.onnx").exists()
