"""TF1 SpineNet-MBConv import (``--from tpu`` / ``--from tpu-frozen-graph``) against the TF1 code's own outputs.

``tests/fixtures/tpu_mobile_tiny/`` (see its README) was recorded by ``tools/tf1_reference.py --family mobile``:
Google's TF1 ``spinenet_mbconv.py`` + separable RetinaNet head, unmodified, at reduced widths, with informative
weights; its training checkpoint (``.tar.gz`` with ``global_step`` and ``/Momentum`` slots), frozen serving graph
and raw maps / serving outputs for two uint8 inputs. No TensorFlow is needed here.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from spinenet.cli import main
from spinenet.convert.mobile_map import infer_tf1_mobile, tf1_mobile_layout
from spinenet.convert.model_garden import ConversionError
from spinenet.convert.parity import compare_detections, compare_maps
from spinenet.convert.tf_bundle_writer import write_bundle, write_checkpoint_state
from spinenet.convert.tpu import (
    convert_tpu,
    map_tpu_weights,
    model_from_reference_metadata,
    open_tpu_checkpoint,
    open_tpu_frozen_graph,
)

TINY = Path(__file__).resolve().parents[1] / "fixtures" / "tpu_mobile_tiny"
TARBALL = TINY / "train_checkpoint.tar.gz"
GRAPH = TINY / "spinenet_tf_310.pb"
DETECTION_KEYS = ("detection_boxes", "detection_scores", "detection_classes")


@pytest.fixture(scope="module")
def meta():
    return json.loads((TINY / "variables.json").read_text())["metadata"]


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(TINY / "reference.npz"))


@pytest.fixture(scope="module")
def model(meta):
    m = model_from_reference_metadata(meta)
    with open_tpu_checkpoint(TARBALL) as w:
        m.load_state_dict(map_tpu_weights(w, m), strict=True)
    return m.eval()


def _preprocess(model, meta, images):
    from spinenet.deploy.export import ExportWrapper

    size = meta["image_size"]
    return ExportWrapper(model, image_size=(size, size), postprocess="none").preprocess(torch.from_numpy(images))


def test_frozen_graph_holds_the_checkpoint_weights(model):
    """Every tensor of the model is read from the frozen graph too, bit-identical to the training checkpoint's."""
    ours = model.state_dict()
    frozen = map_tpu_weights(open_tpu_frozen_graph(GRAPH), model)
    assert frozen.keys() == ours.keys()
    assert all(torch.equal(frozen[k], ours[k]) for k in ours)


def test_raw_maps_match_tf1(model, meta, ref):
    with torch.no_grad():
        cls, box = model(_preprocess(model, meta, ref["images_uint8"]))
    maps = compare_maps(cls, box, ref)
    assert max(max(d.cls_max_abs / d.cls_scale, d.box_max_abs / d.box_scale) for d in maps) <= 2.5e-4
    assert max(d.cls_scale for d in maps) > 2.0  # informative: logits spread well away from the prior


def test_detections_match_tf1(model, meta, ref):
    dets = model.detect(_preprocess(model, meta, ref["images_uint8"]))
    report = compare_detections(dets, {k: ref[k] for k in DETECTION_KEYS}, box_tol=0.5)
    assert all(d.unmatched_ref == 0 and d.unmatched_ours == 0 and d.matched >= 90 for d in report), report
    np.testing.assert_array_equal(dets["num_detections"].numpy(), ref["num_detections"])


def test_onnx_export_round_trip(model, meta, ref, tmp_path):
    """The converted model exported to ONNX: ONNX Runtime's detections equal eager PyTorch's and TF1's frozen
    graph's (uint8 in, five outputs out)."""
    from spinenet.deploy.export import DETECTION_OUTPUTS, export_onnx
    from spinenet.deploy.runtimes import OnnxRuntimeSession

    size = meta["image_size"]
    session = OnnxRuntimeSession(export_onnx(model, tmp_path / "mobile.onnx", image_size=(size, size)), threads=1)
    outs = [session.run(ref["images_uint8"][i:i + 1]) for i in range(2)]
    ours = {k: torch.from_numpy(np.concatenate([o[n] for o in outs])) for k, n in zip(
        ("num_detections", "detection_boxes", "detection_classes", "detection_scores", "image_info"),
        DETECTION_OUTPUTS, strict=True)}
    eager = model.detect(_preprocess(model, meta, ref["images_uint8"]))
    for against in ({k: eager[k].numpy() for k in DETECTION_KEYS}, {k: ref[f"frozen_{k}"] for k in DETECTION_KEYS}):
        report = compare_detections(ours, against, box_tol=0.5)
        assert all(d.unmatched_ref == 0 and d.unmatched_ours == 0 and d.matched >= 90 for d in report), report
    np.testing.assert_array_equal(ours["num_detections"].numpy(), ref["frozen_num_detections"])


def test_shapes_tell_the_family_but_no_published_variant(tmp_path):
    with open_tpu_checkpoint(TARBALL) as w:
        arch = infer_tf1_mobile(w)
    assert (arch["num_classes"], arch["num_anchors"], arch["head_num_filters"], arch["head_num_convs"]) == (5, 9, 8, 4)
    assert arch["candidates"] == []  # width-reduced: 2/4/6 channels at levels 0/1/2
    with pytest.raises(ConversionError, match="match no SpineNet-Mobile variant"):
        convert_tpu(TARBALL, tmp_path / "x.pt")
    with pytest.raises(ConversionError, match="match no SpineNet-Mobile variant"):
        convert_tpu(GRAPH, tmp_path / "x.pt", frozen_graph=True)
    assert not (tmp_path / "x.pt").exists()


# --- a full-size registry variant through the command line ----------------------------------------------------


def _tf1_tensors(model) -> dict[str, np.ndarray]:
    """``model``'s weights under TF1 names and layouts (HWIO kernels, [kh, kw, C, 1] depthwise kernels)."""
    out = {}
    for entry in tf1_mobile_layout(model):
        m = entry.module
        if entry.kind == "bn":
            vals = [m.weight, m.bias, m.running_mean, m.running_var]
        elif entry.kind == "depthwise":
            vals = [m.weight.permute(2, 3, 0, 1)]
        elif entry.kind == "separable":
            vals = [m.depthwise.weight.permute(2, 3, 0, 1), m.pointwise.weight.permute(2, 3, 1, 0), m.pointwise.bias]
        else:
            vals = [m.weight.permute(2, 3, 1, 0)] + ([m.bias] if entry.kind == "conv_bias" else [])
        for name, v in zip(entry.variables(), vals, strict=True):
            out[name] = v.detach().numpy().astype(np.float32).copy()
    return out


@pytest.fixture(scope="module")
def mobile49xs():
    """Mobile-49XS as TF1 builds it (convention tpu, swish), with every weight distinct."""
    from spinenet.registry import create_model

    model = create_model("retinanet_spinenet49xs_mobile", convention="tpu", activation="swish").eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
    return model


def test_cli_detects_and_converts_a_full_size_tf1_checkpoint(mobile49xs, tmp_path, capsys):
    from spinenet.engine.checkpoint import load_model

    folder = tmp_path / "tf1"
    folder.mkdir()
    write_bundle(folder / "model.ckpt-100", {**_tf1_tensors(mobile49xs), "global_step": np.asarray(100)})
    write_checkpoint_state(folder, "model.ckpt-100")
    assert main(["convert", "--from", "tpu", "--checkpoint", str(folder), "--output", str(tmp_path / "m.pt")]) == 0
    assert "SpineNet-Mobile-49XS RetinaNet, 91 classes, 872,711 parameters" in capsys.readouterr().out
    model, ckpt = load_model(tmp_path / "m.pt")
    cfg = ckpt["config"]
    assert cfg["architecture"]["convention"] == "tpu" and cfg["anchor"]["aspect_ratios"] == [1.0, 2.0, 0.5]
    assert cfg["batch_norm_activation"]["activation"] == "swish"
    ours, want = model.state_dict(), mobile49xs.state_dict()
    assert all(torch.equal(ours[k], want[k]) for k in want if not k.endswith("num_batches_tracked"))


@pytest.mark.parametrize("change", ["extra", "missing"])
def test_unknown_or_missing_tensors_are_refused(mobile49xs, tmp_path, change):
    tensors = _tf1_tensors(mobile49xs)
    if change == "extra":
        tensors["spinenet_mbconv/sub_policy3/scale_permuted_block_5/conv2d_9/kernel"] = np.zeros((1, 1, 2, 2),
                                                                                                 np.float32)
        message = "1 weights of the checkpoint have no place in SpineNet-49XS"
    else:
        del tensors["spinenet_mbconv/sub_policy7/scale_permuted_block_9/depthwise_conv2d/depthwise_kernel"]
        message = "has no spinenet_mbconv/sub_policy7/scale_permuted_block_9/depthwise_conv2d/depthwise_kernel"
    write_bundle(tmp_path / "model.ckpt", tensors)
    with pytest.raises(ConversionError, match=message):
        convert_tpu(tmp_path / "model.ckpt", tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()
