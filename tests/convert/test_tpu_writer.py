"""``spinenet convert --to tpu``: a spinenet checkpoint written as a TF1 Cloud TPU checkpoint, and back.

The layout is checked against what TensorFlow wrote from the unmodified TPU code (tests/fixtures/tpu_tiny: the
training checkpoint, byte for byte; layouts.json.gz: names and shapes of all five variants' serving graphs), the
values by a round trip through ``--from tpu``. tools/tpu_restore_check.py restores the output into the TPU code's
own graphs with TensorFlow (not in CI).
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from spinenet.cli import main
from spinenet.convert.model_garden import ConversionError
from spinenet.convert.tf_bundle_writer import write_bundle
from spinenet.convert.tf_checkpoint import TFCheckpointReader
from spinenet.convert.tpu import map_tpu_weights, model_from_reference_metadata, open_tpu_checkpoint
from spinenet.convert.tpu_writer import (
    check_tpu_config,
    tpu_checkpoint_tensors,
    tpu_variables,
    write_tpu_checkpoint,
)

TINY = Path(__file__).resolve().parents[1] / "fixtures" / "tpu_tiny"
TARBALL = TINY / "train_checkpoint.tar.gz"
VARIANTS = {"49S": "retinanet_spinenet49s", "49": "retinanet_spinenet49", "96": "retinanet_spinenet96",
            "143": "retinanet_spinenet143", "190": "retinanet_spinenet190"}


# --- against TensorFlow's own files ------------------------------------------------------------------------


def test_tiny_model_gives_the_tf_training_checkpoint_byte_for_byte(tmp_path):
    """Import TF's training checkpoint, write it back with slots and step: the very files TF's Saver wrote."""
    meta = json.loads((TINY / "variables.json").read_text())["metadata"]
    model = model_from_reference_metadata(meta)
    with open_tpu_checkpoint(TARBALL) as w:
        model.load_state_dict(map_tpu_weights(w, model), strict=True)
    tensors = tpu_checkpoint_tensors(model, step=231500, optimizer_slots=True)
    assert len(tensors) == meta["num_variables"] + meta["train_checkpoint"]["num_extra"]
    ours = write_bundle(tmp_path / "model.ckpt-231500", tensors)
    with tarfile.open(TARBALL) as tar:
        tar.extractall(tmp_path / "tf", filter="data")
    (theirs,) = (tmp_path / "tf").rglob("*.index")
    assert Path(f"{ours}.index").read_bytes() == theirs.read_bytes()
    data = theirs.with_name(theirs.name.replace(".index", ".data-00000-of-00001"))
    assert Path(f"{ours}.data-00000-of-00001").read_bytes() == data.read_bytes()


@pytest.fixture(scope="module")
def layouts():
    with gzip.open(TINY / "layouts.json.gz", "rt") as f:
        return json.load(f)


@pytest.mark.parametrize("model_id", list(VARIANTS))
def test_every_variant_writes_the_tf_serving_graphs_variables(layouts, model_id):
    """Names and HWIO shapes of the written variables = those of the TPU code's serving graph (no values)."""
    from spinenet.registry import create_model

    with torch.device("meta"):
        model = create_model(VARIANTS[model_id])
    ours = {name: tuple(t.shape) for name, t in tpu_variables(model).items()}
    assert ours == {n: tuple(s) for n, s in layouts[model_id]}


# --- round trip through --from tpu ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def relu_pt(tmp_path_factory):
    """A SpineNet-49S (relu, 5 classes) checkpoint whose every tensor, BN statistics included, is random."""
    from spinenet.engine.checkpoint import make_checkpoint, save_checkpoint
    from spinenet.modeling.factory import build_retinanet
    from spinenet.registry import get_config

    cfg = get_config("retinanet_spinenet49s", params_override={
        "architecture": {"num_classes": 5}, "batch_norm_activation": {"activation": "relu"},
        "postprocess": {"score_threshold": 0.2}})
    model = build_retinanet(cfg)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=gen) + (0.5 if "running_var" in name else -0.5))
    ckpt = make_checkpoint(model, cfg, variant="retinanet_spinenet49s", label_map={i: f"c{i}" for i in range(1, 5)},
                           extra={"step": 1234})
    return save_checkpoint(ckpt, tmp_path_factory.mktemp("pt") / "relu49s.pt"), model.state_dict()


@pytest.mark.parametrize("slots", [False, True], ids=["inference", "with-slots"])
def test_round_trip_is_bit_identical(relu_pt, tmp_path, capsys, slots):
    from spinenet.engine.checkpoint import load_model

    pt, state = relu_pt
    out = tmp_path / "tf1"
    assert main(["convert", "--to", "tpu", "--checkpoint", str(pt), "--output", str(out)]
                + (["--optimizer_slots"] if slots else [])) == 0
    printed = capsys.readouterr().out
    assert "830 TF1 variables + global_step 1234" in printed and f"--config_file={out / 'params.yaml'}" in printed
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint", "model.ckpt-1234.data-00000-of-00001",
                                                     "model.ckpt-1234.index", "params.yaml"]
    reader = TFCheckpointReader(out)  # through the state file
    assert reader.get_tensor("global_step") == 1234 and reader.get_tensor("global_step").dtype == np.int64
    momentum = [n for n in reader.keys() if n.endswith("/Momentum")]
    assert len(momentum) == (490 if slots else 0)  # the serving graph's trainable variables (spec: 490)
    np.testing.assert_array_equal(reader.get_tensor("spinenet/conv2d/kernel"),
                                  state["backbone.stem.conv.weight"].permute(2, 3, 1, 0).numpy())

    back = tmp_path / "back.pt"
    assert main(["convert", "--from", "tpu", "--checkpoint", str(out), "--config_file", str(out / "params.yaml"),
                 "--output", str(back)]) == 0
    model, ckpt = load_model(back)
    got = model.state_dict()
    assert got.keys() == state.keys()
    different = [k for k in state if k.endswith(("weight", "bias", "running_mean", "running_var"))
                 and not torch.equal(got[k], state[k])]
    assert not different
    cfg = ckpt["config"]
    assert cfg["batch_norm_activation"]["activation"] == "relu"  # carried by params.yaml
    assert cfg["architecture"]["num_classes"] == 5 and cfg["postprocess"]["score_threshold"] == 0.2


def test_params_yaml_keeps_only_reference_keys(relu_pt, tmp_path):
    import yaml

    from spinenet.config import load_config

    write = main(["convert", "--to", "tpu", "--checkpoint", str(relu_pt[0]), "--output", str(tmp_path), "--step", "7"])
    assert write == 0 and (tmp_path / "model.ckpt-7.index").is_file()
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    assert "convention" not in params["architecture"]  # a project extension the TPU code's strict override lacks
    assert params["spinenet"]["model_id"] == "49S" and params["anchor"]["anchor_size"] == 3.0
    assert load_config(tmp_path / "params.yaml").batch_norm_activation.activation == "relu"


# --- errors ---------------------------------------------------------------------------------------------------


def test_existing_checkpoint_is_refused_unless_overwrite(relu_pt, tmp_path, capsys):
    args = ["convert", "--to", "tpu", "--checkpoint", str(relu_pt[0]), "--output", str(tmp_path)]
    assert main(args) == 0
    before = (tmp_path / "model.ckpt-1234.index").stat().st_mtime_ns
    capsys.readouterr()
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "already holds a TF checkpoint" in err and "--overwrite" in err
    assert (tmp_path / "model.ckpt-1234.index").stat().st_mtime_ns == before
    assert main(args + ["--overwrite", "--step", "9"]) == 0
    assert TFCheckpointReader(tmp_path).prefix.name == "model.ckpt-9"


def test_output_that_is_a_file_or_under_a_file(relu_pt, tmp_path, capsys):
    f = tmp_path / "file.txt"
    f.write_text("x")
    for out, message in ((f, "is a file"), (f / "sub", "cannot write to --output")):
        assert main(["convert", "--to", "tpu", "--checkpoint", str(relu_pt[0]), "--output", str(out)]) == 1
        assert message in capsys.readouterr().err
    assert f.read_text() == "x"


def test_failed_write_leaves_nothing(relu_pt, tmp_path, monkeypatch):
    import spinenet.convert.tpu_writer as tw
    from spinenet.engine.checkpoint import checkpoint_config, load_model

    def fail(*_args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tw, "write_checkpoint_state", fail)
    model, ckpt = load_model(relu_pt[0])
    with pytest.raises(ConversionError, match="No space left on device.*nothing was left behind"):
        write_tpu_checkpoint(model, checkpoint_config(ckpt), tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_model_garden_convention_and_unknown_activation_are_refused(tmp_path, capsys):
    from spinenet.engine.checkpoint import make_checkpoint, save_checkpoint
    from spinenet.modeling.factory import build_retinanet
    from spinenet.registry import get_config

    cfg = get_config("retinanet_spinenet49s", params_override={"architecture": {"convention": "model_garden"}})
    with pytest.raises(ConversionError, match="'model_garden' convention.*only architecture.convention 'tpu'"):
        check_tpu_config(cfg, "mg.pt")
    cfg.architecture.convention = "tpu"
    cfg.batch_norm_activation.activation = "gelu"  # past validation, as a hand-edited config would be
    with pytest.raises(ConversionError, match="activation 'gelu' is not one the TPU code has"):
        check_tpu_config(cfg, "x.pt")

    mg = get_config("retinanet_spinenet49s", params_override={"architecture": {"convention": "model_garden",
                                                                               "num_classes": 3}})
    model = build_retinanet(mg)
    pt = save_checkpoint(make_checkpoint(model, mg, variant="retinanet_spinenet49s"), tmp_path / "mg.pt")
    assert main(["convert", "--to", "tpu", "--checkpoint", str(pt), "--output", str(tmp_path / "out")]) == 1
    assert "mg.pt: can't write a TF1 TPU checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_flags_of_the_other_direction_are_errors(relu_pt, tmp_path, capsys):
    assert main(["convert", "--to", "tpu", "--checkpoint", str(relu_pt[0]), "--output", str(tmp_path / "o"),
                 "--model_id", "49S"]) == 1
    assert "--model_id: only for --from" in capsys.readouterr().err
    assert main(["convert", "--from", "tpu", "--checkpoint", "x", "--output", "y.pt", "--overwrite"]) == 1
    assert "--overwrite: only for --to tpu" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["convert", "--from", "tpu", "--to", "tpu", "--checkpoint", "x", "--output", "y"])
    assert not (tmp_path / "o").exists()


def test_convert_help_describes_the_tpu_target(capsys):
    with pytest.raises(SystemExit):
        main(["convert", "--help"])
    out = capsys.readouterr().out
    for word in ("--to {tpu}", "--optimizer_slots", "--overwrite", "params.yaml", "freeze_graph.py", "--framework=3"):
        assert word in out, word


def test_read_only_folder_is_refused(relu_pt, tmp_path):
    """Run as a process without root's override of permission bits (CI runs as root): setpriv drops every
    capability, so the folder's 0555 applies as it would to any user."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to drop root's capabilities")
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        r = subprocess.run(["setpriv", "--bounding-set=-all", "--inh-caps=-all", sys.executable, "-m", "spinenet.cli",
                            "convert", "--to", "tpu", "--checkpoint", str(relu_pt[0]), "--output", str(folder)],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 1, r.stderr
        assert r.stderr.strip().splitlines() == [r.stderr.strip()], r.stderr  # one line, no traceback
        assert f"cannot write to --output {folder}" in r.stderr and "permission denied" in r.stderr
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)
