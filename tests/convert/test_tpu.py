"""TF1 Cloud TPU import (``--from tpu`` / ``--from tpu-frozen-graph``) against the TF1 reference's own outputs.

``tests/fixtures/tpu_tiny/`` was made by ``tools/tf1_reference.py`` (see its README): Google's TF1 detection code
(tensorflow/tpu), run unmodified under TF 2.20, built a width-reduced SpineNet RetinaNet (all 15 blocks, every
resampling path, two blocks per group) at 256x256, redrew its weights, set BN statistics with the graph's own
update ops, and saved a training checkpoint (with ``global_step`` and ``/Momentum`` slots, packed as a
``.tar.gz`` like the published ones), the frozen serving graph, and TF's raw maps and serving outputs for two
uint8 inputs. ``layouts.json.gz`` holds the variable names and shapes of all five real variants' graphs.
No TensorFlow is needed here.
"""

import gzip
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from spinenet.cli import main
from spinenet.convert.graphdef import FrozenGraph, decode_tensor
from spinenet.convert.model_garden import ConversionError
from spinenet.convert.parity import compare_detections, compare_maps
from spinenet.convert.tf_bundle_writer import field_bytes, field_varint, shape_proto, write_bundle
from spinenet.convert.tpu import (
    FrozenGraphWeights,
    convert_tpu,
    infer_tpu_architecture,
    map_tpu_weights,
    model_from_reference_metadata,
    open_tpu_checkpoint,
    open_tpu_frozen_graph,
    tf1_variable_layout,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TINY = FIXTURES / "tpu_tiny"
TARBALL = TINY / "train_checkpoint.tar.gz"
GRAPH = TINY / "spinenet_tf_310.pb"
MODEL_GARDEN = FIXTURES / "model_garden_tiny"
VARIANTS = {"49S": "retinanet_spinenet49s", "49": "retinanet_spinenet49", "96": "retinanet_spinenet96",
            "143": "retinanet_spinenet143", "190": "retinanet_spinenet190"}


@pytest.fixture(scope="module")
def meta():
    return json.loads((TINY / "variables.json").read_text())["metadata"]


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(TINY / "reference.npz"))


@pytest.fixture(scope="module")
def states(meta):
    """(checkpoint state dict, frozen-graph state dict) of the tiny reference model."""
    model = model_from_reference_metadata(meta)
    with open_tpu_checkpoint(TARBALL) as w:
        from_ckpt = map_tpu_weights(w, model)
    return from_ckpt, map_tpu_weights(open_tpu_frozen_graph(GRAPH), model)


@pytest.fixture(scope="module")
def model(meta, states):
    m = model_from_reference_metadata(meta)
    m.load_state_dict(states[0], strict=True)
    return m.eval()


def _preprocess(model, meta, images_uint8):
    from spinenet.deploy.export import ExportWrapper

    size = meta["image_size"]
    wrapper = ExportWrapper(model, image_size=(size, size), postprocess="none")
    return wrapper.preprocess(torch.from_numpy(images_uint8))


# --- weights ----------------------------------------------------------------------------------------------


def test_checkpoint_and_frozen_graph_give_bit_identical_weights(states):
    from_ckpt, from_graph = states
    assert from_ckpt.keys() == from_graph.keys()
    different = [k for k in from_ckpt if not torch.equal(from_ckpt[k], from_graph[k])]
    assert not different


def test_every_tf_weight_is_used_once_and_training_state_is_skipped(meta, states):
    with open_tpu_checkpoint(TARBALL) as w:
        names = w.names()
    training = [n for n in names if n == "global_step" or n.endswith("/Momentum")]
    model_vars = [n for n in names if n.startswith(("spinenet/", "retinanet/")) and not n.endswith("/Momentum")]
    assert "global_step" in training and len(training) == meta["train_checkpoint"]["num_extra"]
    assert len(model_vars) == meta["num_variables"]
    ours = [k for k in states[0] if not k.endswith("num_batches_tracked")]
    assert len(ours) == len(model_vars)


def test_checkpoint_prefix_index_and_folder_read_the_same(tmp_path, meta, states):
    with tarfile.open(TARBALL) as tar:
        tar.extractall(tmp_path, filter="data")
    folder = next(tmp_path.iterdir())
    prefix = next(folder.glob("*.index")).with_suffix("")
    model = model_from_reference_metadata(meta)
    for path in (tmp_path, folder, prefix, Path(f"{prefix}.index")):
        with open_tpu_checkpoint(path) as w:
            state = map_tpu_weights(w, model)
        assert all(torch.equal(state[k], states[0][k]) for k in state), path


def test_frozen_graph_consts_named_after_read_ops(tmp_path, states, meta):
    """Graphs frozen through read ops name each Const ``<var>/read`` or ``<var>/Read/ReadVariableOp``."""
    graph = FrozenGraph(GRAPH)
    weights = FrozenGraphWeights(graph)
    renamed = {weights.node_name(v): v for v in weights.names()}
    nodes = []
    for i, node in enumerate(graph.nodes):
        name = node.name
        if name in renamed:
            name += "/read" if i % 2 else "/Read/ReadVariableOp"
        body = field_bytes(1, name.encode()) + field_bytes(2, node.op.encode())
        body += b"".join(field_bytes(3, x.encode()) for x in node.inputs)
        body += b"".join(field_bytes(5, field_bytes(1, k.encode()) + field_bytes(2, v)) for k, v in node.attrs.items())
        nodes.append(field_bytes(1, body))
    path = tmp_path / "read_ops.pb"
    path.write_bytes(b"".join(nodes))
    state = map_tpu_weights(open_tpu_frozen_graph(path), model_from_reference_metadata(meta))
    assert all(torch.equal(state[k], states[1][k]) for k in state)


def test_tensor_proto_typed_values_and_splat():
    # float_val packed with fewer values than elements: the last one repeats (TF's TensorProto semantics).
    proto = (field_varint(1, 1) + field_bytes(2, shape_proto((2, 3)))
             + field_bytes(5, np.array([1.5, -2.0], "<f4").tobytes()))
    np.testing.assert_array_equal(decode_tensor(proto), [[1.5, -2.0, -2.0], [-2.0, -2.0, -2.0]])
    ints = field_varint(1, 3) + field_bytes(2, shape_proto((3,))) + field_varint(7, 7) + field_varint(7, -4)
    np.testing.assert_array_equal(decode_tensor(ints), [7, -4, -4])
    content = np.arange(6, dtype="<f4").reshape(3, 2)
    raw = field_varint(1, 1) + field_bytes(2, shape_proto((3, 2))) + field_bytes(4, content.tobytes())
    np.testing.assert_array_equal(decode_tensor(raw), content)


# --- numbers against TF1 ------------------------------------------------------------------------------------


def test_raw_maps_match_tf1_on_both_inputs(model, meta, ref):
    """Input A calibrated the BN statistics, B did not; maps within 1e-3 of each map's max."""
    worst = 0.0
    for i in range(2):
        with torch.no_grad():
            cls, box = model(_preprocess(model, meta, ref["images_uint8"][i:i + 1]))
        diffs = compare_maps(cls, box, {k: v[i:i + 1] for k, v in ref.items() if k.startswith(("cls_", "box_"))})
        worst = max([worst] + [max(d.cls_max_abs / d.cls_scale, d.box_max_abs / d.box_scale) for d in diffs])
    assert worst <= 1e-3
    assert max(np.abs(ref[f"cls_{lvl}"]).max() for lvl in range(3, 8)) > 2.0  # informative logits


def test_detections_match_tf1_serving_outputs(model, meta, ref):
    dets = model.detect(_preprocess(model, meta, ref["images_uint8"]))
    report = compare_detections(dets, {k: ref[k] for k in ("detection_boxes", "detection_scores",
                                                            "detection_classes")}, box_tol=0.5)
    assert all(d.unmatched_ref == 0 and d.unmatched_ours == 0 for d in report), report
    assert all(d.matched >= 90 for d in report) and max(d.max_box_diff for d in report) <= 0.5
    np.testing.assert_array_equal(dets["num_detections"].numpy(), ref["num_detections"])


@pytest.mark.parametrize("target", ["onnxruntime", "ascend"])
def test_onnx_export_matches_tf1_frozen_graph(model, meta, ref, tmp_path, target):
    """The default export and the Ascend one (only CANN 5.0.4's operators, unrolled NMS) give the TF1 frozen
    graph's five outputs."""
    import onnx

    from spinenet.deploy.atc_ops import atc_operator_list, unlisted_nodes
    from spinenet.deploy.export import DETECTION_OUTPUTS, export_onnx
    from spinenet.deploy.runtimes import OnnxRuntimeSession

    size = meta["image_size"]
    path = export_onnx(model, tmp_path / "tiny.onnx", image_size=(size, size), target=target)
    if target == "ascend":
        assert unlisted_nodes(onnx.load(path).graph, atc_operator_list("5")) == []
    session = OnnxRuntimeSession(path, threads=1)
    outs = [session.run(ref["images_uint8"][i:i + 1]) for i in range(2)]
    ours = {k: np.concatenate([o[n] for o in outs]) for k, n in zip(
        ("num_detections", "detection_boxes", "detection_classes", "detection_scores", "image_info"),
        DETECTION_OUTPUTS, strict=True)}
    np.testing.assert_array_equal(ours["num_detections"], ref["frozen_num_detections"])
    np.testing.assert_array_equal(ours["image_info"], ref["frozen_image_info"])
    assert ours["detection_classes"].dtype == ref["frozen_detection_classes"].dtype == np.int32
    frozen = {k: ref[f"frozen_{k}"] for k in ("detection_boxes", "detection_scores", "detection_classes")}
    report = compare_detections({k: torch.from_numpy(v) for k, v in ours.items()}, frozen, box_tol=0.5)
    assert all(d.unmatched_ref == 0 and d.unmatched_ours == 0 and d.matched >= 90 for d in report), report


# --- layouts of the five real variants ------------------------------------------------------------------------


class _ShapesOnly:
    """A TPUWeights over recorded names and shapes (no values)."""

    kind = "checkpoint"

    def __init__(self, variables, source="layouts.json.gz"):
        self.shapes = {n: tuple(s) for n, s in variables}
        self.source = source

    def names(self):
        return list(self.shapes)

    def shape(self, name):
        return self.shapes[name]

    def get(self, name):
        return np.zeros(self.shapes[name], np.float32)


@pytest.fixture(scope="module")
def layouts():
    with gzip.open(TINY / "layouts.json.gz", "rt") as f:
        return json.load(f)


@pytest.mark.parametrize("model_id", list(VARIANTS))
def test_real_variant_layouts(layouts, model_id):
    """Our modules regenerate every TF1 variable name of each variant, with its shape, in TF's creation order."""
    from spinenet.registry import create_model

    tf_vars = layouts[model_id]
    arch = infer_tpu_architecture(_ShapesOnly(tf_vars))
    assert arch.candidates == [model_id] and arch.num_classes == 91 and arch.num_anchors == 9
    with torch.device("meta"):
        model = create_model(VARIANTS[model_id])
    state = model.state_dict()
    names = {id(m): n for n, m in model.named_modules()}
    ours = []
    for e in tf1_variable_layout(model):
        module = names[id(e.module)]
        for var in e.variables():
            leaf = var.rsplit("/", 1)[-1]
            attr = {"kernel": "weight", "bias": "bias", "gamma": "weight", "beta": "bias",
                    "moving_mean": "running_mean", "moving_variance": "running_var"}[leaf]
            shape = tuple(state[f"{module}.{attr}"].shape)
            ours.append((var, (shape[2], shape[3], shape[1], shape[0]) if leaf == "kernel" else shape))
    assert dict(ours) == {n: tuple(s) for n, s in tf_vars}
    backbone_tf = [n for n, _ in tf_vars if n.startswith("spinenet/")]
    assert [n for n, _ in ours if n.startswith("spinenet/")] == backbone_tf  # creation order, not string order


# --- the command line, on a full-size synthetic 49S checkpoint ------------------------------------------------


@pytest.fixture(scope="module")
def synthetic_49s(layouts, tmp_path_factory):
    """A TF1 training checkpoint with SpineNet-49S's real names and shapes and random values."""
    rng = np.random.default_rng(0)
    tensors = {n: rng.standard_normal(s, dtype=np.float32) for n, s in layouts["49S"]}
    tensors.update({f"{n}/Momentum": np.zeros(s, np.float32) for n, s in layouts["49S"][:20]})
    tensors["global_step"] = np.asarray(231500, np.int64)
    return write_bundle(tmp_path_factory.mktemp("tf1_49s") / "model.ckpt-231500", tensors), tensors


def test_convert_cli_49s(synthetic_49s, tmp_path, capsys):
    from spinenet.engine.checkpoint import load_model

    prefix, tensors = synthetic_49s
    out = tmp_path / "model.pt"
    assert main(["convert", "--from", "tpu", "--checkpoint", str(prefix), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "SpineNet-49S" in printed and "91 classes" in printed and "activation swish: from the config" in printed
    model, ckpt = load_model(out)
    assert ckpt["source"]["format"] == "tpu" and ckpt["config"]["architecture"]["convention"] == "tpu"
    assert ckpt["label_map"]["1"] == "person"
    torch.testing.assert_close(model.backbone.stem.conv.weight,
                               torch.from_numpy(tensors["spinenet/conv2d/kernel"].transpose(3, 2, 0, 1)))
    torch.testing.assert_close(model.backbone.endpoints["3"].norm.running_var,
                               torch.from_numpy(tensors["spinenet/batch_normalization_8/moving_variance"]))
    torch.testing.assert_close(model.head.class_net.predict.bias,
                               torch.from_numpy(tensors["retinanet/class_net/class-predict/bias"]))
    torch.testing.assert_close(model.head.box_net.norms["7"][3].weight,
                               torch.from_numpy(tensors["retinanet/box_net/box-3-7/gamma"]))


def test_config_file_of_another_variant_is_an_error(synthetic_49s, tmp_path):
    from spinenet.registry import config_path

    prefix, _ = synthetic_49s
    with pytest.raises(ConversionError, match=r"SpineNet-49S weights.*describes SpineNet-49:.*spinenet49S_retinanet"):
        convert_tpu(prefix, tmp_path / "x.pt", config_file=str(config_path("49")))
    assert not (tmp_path / "x.pt").exists()


def test_forced_model_id_of_another_variant_names_the_mismatch(synthetic_49s, tmp_path):
    prefix, _ = synthetic_49s
    with pytest.raises(ConversionError, match="another variant"):
        convert_tpu(prefix, tmp_path / "x.pt", model_id="49")
    assert not (tmp_path / "x.pt").exists()


# --- errors ------------------------------------------------------------------------------------------------


def test_width_reduced_checkpoint_asks_for_model_id(tmp_path):
    with pytest.raises(ConversionError, match="match no SpineNet variant.*--model_id"):
        convert_tpu(TARBALL, tmp_path / "x.pt")
    with pytest.raises(ConversionError, match="another variant"):
        convert_tpu(GRAPH, tmp_path / "x.pt", frozen_graph=True, model_id="49S")
    assert not (tmp_path / "x.pt").exists()


def test_model_garden_checkpoint_as_tpu_says_what_it_is(tmp_path, capsys):
    code = main(["convert", "--from", "tpu", "--checkpoint", str(MODEL_GARDEN / "ckpt"), "--output",
                 str(tmp_path / "x.pt")])
    err = capsys.readouterr().err
    assert code == 1 and "looks like a Model Garden checkpoint" in err and "use --from model-garden" in err
    assert not (tmp_path / "x.pt").exists()


def test_tpu_checkpoint_as_model_garden_says_what_it_is(synthetic_49s, tmp_path, capsys):
    prefix, _ = synthetic_49s
    code = main(["convert", "--from", "model-garden", "--checkpoint", str(prefix), "--output", str(tmp_path / "x.pt")])
    err = capsys.readouterr().err
    assert code == 1 and "looks like a TF1 TPU checkpoint" in err and "use --from tpu" in err


def test_graph_and_checkpoint_swapped_say_which_source_to_use(tmp_path):
    with pytest.raises(ConversionError, match="--from tpu-frozen-graph"):
        convert_tpu(GRAPH, tmp_path / "x.pt")
    with pytest.raises(ConversionError, match="--from tpu$"):
        convert_tpu(TARBALL, tmp_path / "x.pt", frozen_graph=True)


def test_truncated_files_name_the_file(tmp_path, meta):
    with tarfile.open(TARBALL) as tar:
        tar.extractall(tmp_path, filter="data")
    data = next(tmp_path.rglob("*.data-*"))
    data.write_bytes(data.read_bytes()[:100_000])
    with open_tpu_checkpoint(data.parent) as w, pytest.raises(ValueError, match=f"{data.name} is truncated"):
        map_tpu_weights(w, model_from_reference_metadata(meta))
    index = next(tmp_path.rglob("*.index"))
    index.write_bytes(index.read_bytes()[:20_000])
    with pytest.raises(ValueError, match=f"{index.name} is not a TensorFlow checkpoint index.*damaged"):
        convert_tpu(index.parent, tmp_path / "x.pt")
    pb = tmp_path / "cut.pb"
    pb.write_bytes(GRAPH.read_bytes()[: GRAPH.stat().st_size // 2])
    with pytest.raises(ValueError, match="cut.pb is not a complete TensorFlow GraphDef.*truncated"):
        convert_tpu(pb, tmp_path / "x.pt", frozen_graph=True)
    tgz = tmp_path / "cut.tar.gz"
    tgz.write_bytes(TARBALL.read_bytes()[: TARBALL.stat().st_size // 2])
    with pytest.raises(ValueError, match="cut.tar.gz is not a readable .tar.gz.*truncated"):
        convert_tpu(tgz, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_archive_members_outside_the_archive_are_refused(tmp_path):
    tgz = tmp_path / "evil.tar.gz"
    with tarfile.open(tgz, "w:gz") as tar:
        info = tarfile.TarInfo("../escaped.index")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    with pytest.raises(ConversionError, match="refusing to extract '../escaped.index'"):
        convert_tpu(tgz, tmp_path / "x.pt")
    assert not (tmp_path / "escaped.index").exists()


def test_folder_with_several_checkpoints_asks_for_one(tmp_path):
    with tarfile.open(TARBALL) as tar:
        tar.extractall(tmp_path / "a", filter="data")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    with pytest.raises(ConversionError, match="holds 2 checkpoints"):
        convert_tpu(tmp_path, tmp_path / "x.pt")


def test_folder_holding_only_a_frozen_graph_points_to_the_right_source(tmp_path):
    shutil.copy(GRAPH, tmp_path / GRAPH.name)
    with pytest.raises(FileNotFoundError, match="no TensorFlow checkpoint.*use --from tpu-frozen-graph"):
        convert_tpu(tmp_path, tmp_path / "x.pt")


def test_convert_help_lists_the_tf1_sources(capsys):
    with pytest.raises(SystemExit):
        main(["convert", "--help"])
    out = capsys.readouterr().out
    for word in ("--from tpu ", "tpu-frozen-graph", ".tar.gz", "spinenet_tf_310.pb"):
        assert word in out
