"""``spinenet export --target ascend``: ATC's published operator lists as data, a graph of listed operators only
(no Loop), the unrolled greedy NMS, and the same detections as the eager reference and the TF1 frozen graph."""

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from spinenet.cli import main
from spinenet.deploy.atc_ops import CANN_LISTS, atc_operator_list, check_atc_operators, unlisted_nodes
from spinenet.deploy.export import DETECTION_OUTPUTS, ExportWrapper, export_onnx
from spinenet.deploy.nms_unrolled import greedy_keep_unrolled, greedy_rounds_needed
from spinenet.deploy.onnx_graph import all_op_types, check_exported_model, computed_pads
from spinenet.deploy.runtimes import OnnxRuntimeSession
from spinenet.deploy.targets import export_profile
from spinenet.modeling.postprocess import generate_detections
from spinenet.modeling.retinanet import default_image_info

ROOT = Path(__file__).resolve().parents[2]
CKPT = ROOT / "demo" / "shapes49s_fp16.pt"
LISTS = ROOT / "src" / "spinenet" / "deploy" / "atc_onnx_ops"


# --- the operator lists -----------------------------------------------------------------------------------


def test_lists_name_their_source_and_hold_what_the_documents_say():
    for cann, name in CANN_LISTS.items():
        header = [line for line in (LISTS / name).read_text(encoding="utf-8").splitlines() if line.startswith("#")]
        assert any("hiascend.com" in line for line in header), name  # where it was transcribed from
        assert atc_operator_list(cann).file == name
    five, eight = atc_operator_list("5"), atc_operator_list("8")
    assert five.transcribed and eight.transcribed
    assert not atc_operator_list("6").transcribed and not atc_operator_list("7").transcribed  # not found
    # Issue 11's reading of the CANN 5.0.4 list, checked against the committed transcription
    for op in ("TopK", "NonMaxSuppression", "NonZero", "If", "Where", "GatherElements", "BatchMultiClassNMS",
               "ArgMax", "HardMax", "CumSum"):  # the last three spelt otherwise in the document
        assert five.allows(op) and eight.allows(op), op
    assert not five.allows("Loop") and not eight.allows("Loop")
    assert not five.allows("Einsum") and eight.allows("Einsum")  # new in the 8.0.0 list
    assert not five.allows("Conv", domain="com.microsoft")
    # ATC manuals: opset v9~v13 in CANN 5.0.4 and 6.0.1, v9~v18 from CANN 7.0.0
    assert [atc_operator_list(c).opset for c in "5678"] == [(9, 13), (9, 13), (9, 18), (9, 18)]
    # the stand-in for 6 and 7: what both 5.0.4 and 8.0.0 list
    assert atc_operator_list("6").operators == five.operators & eight.operators


def test_profiles():
    assert export_profile().nms_rounds is None and export_profile().conv_algorithm == "winograd"
    ascend = export_profile("ascend")
    assert ascend.conv_algorithm == "direct" and ascend.nms_rounds and ascend.operators.file == "cann5.0.4.txt"
    assert export_profile("ascend", "8").operators.file == "cann8.0.0.txt"
    with pytest.raises(ValueError, match="--cann applies to --target ascend only"):
        export_profile("onnxruntime", "5")
    with pytest.raises(ValueError, match="--cann 9 is unknown"):
        export_profile("ascend", "9")


# --- the unrolled greedy keep vector ----------------------------------------------------------------------


def _sequential_greedy(valid, suppress):
    kept, alive = [], valid.clone()
    for i in range(len(valid)):
        if alive[i]:
            kept.append(i)
            alive &= suppress[i] == 0
    return kept


def test_unrolled_keep_is_greedy_or_a_prefix_of_it():
    # A 30-box chain (each box overlaps the next only): greedy keeps every other box, and decides one more link
    # per round, so few rounds leave the tail undecided.
    from spinenet.deploy.postprocess_export import _suppression_matrix
    from spinenet.modeling.postprocess import PostprocessParams

    k = 30
    boxes = torch.tensor([[0.0, 3 * i, 10, 3 * i + 10] for i in range(k)])
    suppress = _suppression_matrix(boxes[None], torch.zeros(1, k, dtype=torch.long), PostprocessParams())
    valid = torch.ones(1, 1, k, dtype=torch.bool)
    full = [i for i in range(k) if i % 2 == 0]
    assert greedy_keep_unrolled(valid, suppress, k)[0, 0].nonzero().flatten().tolist() == full
    for rounds in (1, 2, 5, 11):
        got = greedy_keep_unrolled(valid, suppress, rounds)[0, 0].nonzero().flatten().tolist()
        assert got == full[:len(got)] and 0 < len(got) < len(full), rounds  # a prefix, never a wrong box
    outputs, every = greedy_rounds_needed(valid, suppress, max_total_size=3)
    assert every.tolist() == [k] and outputs.tolist() == [5]  # kept 0, 2, 4 are decided after 5 rounds
    got = greedy_keep_unrolled(valid, suppress, 5)[0, 0].nonzero().flatten().tolist()
    assert got[:3] == [0, 2, 4]

    g = torch.Generator().manual_seed(3)
    k = 300
    suppress = ((torch.rand(2, k, k, generator=g) < 6 / k) & torch.ones(k, k, dtype=torch.bool).triu(1)).float()
    valid = torch.rand(2, 1, k, generator=g) < 0.8
    _, every = greedy_rounds_needed(valid, suppress, 100)
    kept = greedy_keep_unrolled(valid, suppress, int(every.max()))
    for b in range(2):
        assert kept[b, 0].nonzero().flatten().tolist() == _sequential_greedy(valid[b, 0], suppress[b])


# --- the exported graph -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ascend_onnx(tmp_path_factory):
    out = tmp_path_factory.mktemp("ascend")
    assert main(["export", f"--checkpointpath={CKPT}", f"--output={out}", "--input_image_size=128,128",
                 "--target", "ascend"]) == 0
    return next(out.glob("*.onnx"))


def test_ascend_graph_is_on_the_cann5_list_static_and_keeps_the_contract(ascend_onnx):
    proto = onnx.load(ascend_onnx)
    cann5 = atc_operator_list("5")
    assert unlisted_nodes(proto.graph, cann5) == []
    assert "Loop" not in all_op_types(proto.graph)
    assert next(o.version for o in proto.opset_import if o.domain == "") <= 13
    check_exported_model(proto, 13, cann5)  # static shapes everywhere, constant pads, list, opset
    assert computed_pads(proto.graph) == []
    [inp] = proto.graph.input
    assert inp.name == "Placeholder" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim] == [1, 128, 128, 3]
    assert [o.name for o in proto.graph.output] == list(DETECTION_OUTPUTS)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["spinenet.conv_algorithm"] == "direct" and meta["spinenet.nms"].startswith("unrolled:")


def test_default_graph_is_refused_for_ascend_naming_the_loop(tmp_path, small_model):
    proto = onnx.load(export_onnx(small_model, tmp_path / "d.onnx", image_size=(128, 128)))
    with pytest.raises(ValueError, match=r"not on ATC's list .*cann5\.0\.4\.txt.*\(Loop\)"):
        check_atc_operators(proto, atc_operator_list("5"))
    with pytest.raises(ValueError, match="opset 13 is outside 9-12"):
        check_atc_operators(proto, atc_operator_list("5").__class__("x", "x", frozenset(), (9, 12), True))
    # a Pad whose pads are computed in the graph is refused
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Shape", ["x"], ["s"]), onnx.helper.make_node("Pad", ["x", "s"], ["y"], name="pad")],
        "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)])
    assert computed_pads(graph) == ["pad"]


def test_export_refuses_an_unlisted_operator_and_writes_nothing(tmp_path, small_model, monkeypatch):
    import spinenet.deploy.atc_ops as atc_ops

    no_matmul = atc_ops.atc_operator_list("5")
    no_matmul = no_matmul.__class__(no_matmul.file, no_matmul.title, no_matmul.operators - {"matmul"},
                                    no_matmul.opset, True)
    monkeypatch.setattr("spinenet.deploy.targets.atc_operator_list", lambda cann: no_matmul)
    with pytest.raises(ValueError, match=r"nodes use operators not on ATC's list.*\(MatMul\)"):
        export_onnx(small_model, tmp_path / "m.onnx", image_size=(128, 128), target="ascend")
    assert list(tmp_path.iterdir()) == []


def test_ascend_graph_gives_the_reference_detections(ascend_onnx):
    """ONNX Runtime on the Ascend graph against the eager reference ``generate_detections`` (what `spinenet
    evaluate` runs) on 8 held-out synthetic images."""
    from spinenet.data.synthetic import synthesize_image
    from spinenet.engine.checkpoint import load_model

    model, _ = load_model(CKPT)
    wrapper = ExportWrapper(model, image_size=(128, 128))
    session = OnnxRuntimeSession(ascend_onnx, threads=1)
    info = default_image_info(1, 128, 128)
    detections = 0
    for i in range(8):  # the held-out set's first images (seed 0), drawn square
        image = synthesize_image(0, "val", i, 128, size_range=(0.15, 0.6), odd_size_fraction=0.0)[0]
        x = torch.from_numpy(np.ascontiguousarray(image))[None]
        out = session.run(x.numpy())
        with torch.no_grad():
            cls, box = model(wrapper.preprocess(x))
            ref = generate_detections(cls, box, model.anchors((128, 128)), info, model.params.postprocess)
        n = int(ref["num_detections"][0])
        assert int(out["NumDetections"][0]) == n, i
        np.testing.assert_array_equal(out["DetectionClasses"][0, :n], ref["detection_classes"][0, :n].numpy())
        np.testing.assert_allclose(out["DetectionBoxes"][0, :n], ref["detection_boxes"][0, :n].numpy(), atol=0.01)
        np.testing.assert_allclose(out["DetectionScores"][0, :n], ref["detection_scores"][0, :n].numpy(), atol=1e-4)
        detections += n
    assert detections > 8


def test_cli_rejects_cann_without_ascend(tmp_path, capsys):
    assert main(["export", f"--checkpointpath={CKPT}", f"--output={tmp_path}", "--cann", "8"]) != 0
    assert "--cann applies to --target ascend only" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_raw_maps_for_ascend_are_on_the_list(tmp_path, small_model):
    """The host post-processing route: ``--target ascend --postprocess none``, the ten maps, listed operators."""
    proto = onnx.load(export_onnx(small_model, tmp_path / "raw.onnx", image_size=(128, 128), target="ascend",
                                  postprocess="none"))
    assert unlisted_nodes(proto.graph, atc_operator_list("5")) == []
    assert len(proto.graph.output) == 10 and "Conv" in all_op_types(proto.graph)


@pytest.mark.parametrize("seed", [0, 1])
def test_unrolled_detections_equal_the_loop_form(seed):
    """generate_detections_export with the Ascend options (unrolled rounds, float32 sort keys) against its Loop
    form and the eager reference, on random maps with clustered high scores (real NMS work)."""
    from spinenet.deploy.postprocess_export import generate_detections_export
    from spinenet.modeling.anchors import Anchors

    g = torch.Generator().manual_seed(seed)
    size, classes = 128, 5
    cls, box = {}, {}
    for level in range(3, 8):
        s = size // 2**level
        logits = torch.randn(2, 9, classes, s, s, generator=g) * 1.5 - 4.5
        if s >= 4:
            logits[:, :, 1, : s // 2, : s // 2] += 5.0  # a cluster of overlapping same-class candidates
        cls[level] = torch.sigmoid(logits.reshape(2, 9 * classes, s, s))
        box[level] = torch.randn(2, 36, s, s, generator=g) * 0.3
    from spinenet.modeling.postprocess import PostprocessParams

    params = PostprocessParams(apply_sigmoid=False)
    anchors = Anchors((size, size), 3, 7, 3, (1.0, 2.0, 0.5), 3.0).boxes
    info = default_image_info(2, size, size)
    ref = generate_detections(cls, box, anchors, info, params)
    loop = generate_detections_export(cls, box, anchors, info, params)
    unrolled = generate_detections_export(cls, box, anchors, info, params, nms_rounds=32, float_sort_keys=True)
    assert int(ref["num_detections"].min()) > 0
    for key in ref:
        assert torch.equal(unrolled[key], loop[key]), key
        assert torch.equal(unrolled[key], ref[key]), key
    few = generate_detections_export(cls, box, anchors, info, params, nms_rounds=1, float_sort_keys=True)
    assert (few["num_detections"] < ref["num_detections"]).any()  # 1 round leaves candidates undecided
    for b in range(2):  # too few rounds: fewer detections, each the reference's (a prefix of its list)
        n = int(few["num_detections"][b])
        assert n <= int(ref["num_detections"][b])
        assert torch.equal(few["detection_boxes"][b, :n], ref["detection_boxes"][b, :n])
    # The graph's own check (with_exact): True exactly where the cut outputs equal the reference's.
    checked = generate_detections_export(cls, box, anchors, info, params, nms_rounds=32, with_exact=True)
    assert checked["nms_exact"].tolist() == [True, True]
    few = generate_detections_export(cls, box, anchors, info, params, nms_rounds=1, with_exact=True)
    same = [all(torch.equal(few[key][b], ref[key][b]) for key in ref) for b in range(2)]
    assert few["nms_exact"].tolist() == same and not all(same)
