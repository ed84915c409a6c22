"""Self-describing checkpoints: round trip with weights_only, atomic writes, and clear errors."""

import pytest
import torch

from spinenet import create_model, get_config
from spinenet.engine.checkpoint import (
    CheckpointError,
    load_model,
    make_checkpoint,
    read_checkpoint,
    save_checkpoint,
)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    cfg = get_config("retinanet_spinenet49s", num_classes=3)
    from spinenet.modeling.factory import build_retinanet

    model = build_retinanet(cfg).eval()
    path = tmp_path_factory.mktemp("ckpt") / "m.pt"
    save_checkpoint(make_checkpoint(model, cfg, variant="retinanet_spinenet49s", label_map={1: "a", 2: "b"}), path)
    return model, path


def test_round_trip_loads_with_weights_only_and_same_outputs(saved):
    model, path = saved
    raw = torch.load(path, weights_only=True)
    assert raw["variant"] == "retinanet_spinenet49s" and raw["format_version"] == 1
    assert raw["label_map"] == {"1": "a", "2": "b"}
    assert raw["config"]["architecture"]["num_classes"] == 3
    loaded, _ = load_model(path)
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        a, b = model(x)[0][3], loaded(x)[0][3]
    assert torch.equal(a, b)


def test_no_temporary_files_left(saved):
    _, path = saved
    assert [p.name for p in path.parent.iterdir()] == ["m.pt"]


def test_truncated_file_names_the_file(saved, tmp_path):
    _, path = saved
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.pt is not a readable PyTorch checkpoint"):
        read_checkpoint(bad)


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="nope.pt does not exist"):
        read_checkpoint("nope.pt")


def test_foreign_pickle_is_rejected(tmp_path):
    p = tmp_path / "plain.pt"
    torch.save({"state_dict": {}}, p)
    with pytest.raises(CheckpointError, match="not a spinenet checkpoint"):
        read_checkpoint(p)


def test_checkpoint_of_another_variant_names_missing_and_unexpected_keys(saved, tmp_path):
    model, path = saved
    ckpt = torch.load(path, weights_only=True)
    other = create_model("retinanet_spinenet49", num_classes=3)
    ckpt["model"] = other.state_dict()  # 49 weights under a 49S config
    bad = tmp_path / "other.pt"
    save_checkpoint(ckpt, bad)
    with pytest.raises(CheckpointError, match=r"other.pt does not fit this model \(.*shape mismatches: "):
        load_model(bad)


def test_partial_state_is_never_loaded(saved, tmp_path):
    _, path = saved
    ckpt = torch.load(path, weights_only=True)
    del ckpt["model"]["head.box_net.predict.bias"]
    ckpt["model"]["head.extra.weight"] = torch.zeros(1)
    bad = tmp_path / "partial.pt"
    save_checkpoint(ckpt, bad)
    with pytest.raises(CheckpointError, match="missing keys: head.box_net.predict.bias.*unexpected keys: head.extra"):
        load_model(bad)


def test_failed_write_leaves_previous_file_intact(saved, tmp_path, monkeypatch):
    _, path = saved
    target = tmp_path / "keep.pt"
    target.write_bytes(b"previous")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"format": "x"}, target)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.pt"]


def test_zero_byte_file_is_one_line_naming_it(tmp_path):
    empty = tmp_path / "empty.pt"
    empty.touch()
    with pytest.raises(CheckpointError, match=r"empty.pt is empty \(0 bytes\)") as e:
        load_model(empty)  # what evaluate, export and --init_checkpoint go through
    assert "\n" not in str(e.value)


class Payload:  # stands for any Python object a pickle would construct (and could run code for)
    pass


def test_pickled_code_is_refused_and_never_suggests_unsafe_loading(tmp_path):
    p = tmp_path / "code.pt"
    torch.save({"model": Payload()}, p)
    with pytest.raises(CheckpointError, match=r"code.pt holds pickled Python code \(.*Payload\).*nothing in it "
                                              "was run") as e:
        read_checkpoint(p)
    assert "weights_only" not in str(e.value) and "\n" not in str(e.value)


def test_full_disk_names_the_file_and_keeps_the_previous_one(saved, tmp_path, monkeypatch):
    """ENOSPC simulated in the file's write (test_train_faults.py fills a real tmpfs when run as root)."""
    import errno
    import os

    from spinenet.engine.checkpoint import NoSpaceError

    model, _ = saved
    target = tmp_path / "keep.pt"
    target.write_bytes(b"previous")
    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, data):
            if self.written + len(data) > 100_000:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.written += len(data)
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(os, "fdopen", lambda *a, **k: FullDisk(real_fdopen(*a, **k)))
    with pytest.raises(NoSpaceError) as e:
        save_checkpoint({"model": model.state_dict()}, target)
    assert str(e.value).startswith(f"No space left on device: {target} (not written;")
    assert e.value.errno == errno.ENOSPC and "inline_container" not in str(e.value)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.pt"]
