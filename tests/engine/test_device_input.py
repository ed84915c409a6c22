"""`--input_pipeline device` in training: the same batches and positions as the CPU path (skipped images and a
batch prepared ahead included), the same weights, and an exact resume across the two paths."""

import itertools

import pytest
import torch

from spinenet.config import load_config
from spinenet.data.synthetic import make_synthetic_dataset
from spinenet.engine.checkpoint import read_checkpoint
from spinenet.engine.data import DataPosition
from spinenet.engine.device_input import DeviceTrainLoader, build_train_input, resolve_pipeline
from spinenet.engine.distributed import DistInfo
from spinenet.engine.train import TrainOptions, train
from spinenet.modeling.anchors import Anchors
from spinenet.registry import config_path

OVERRIDE = {"architecture": {"num_classes": 6}, "retinanet_parser": {"output_size": [128, 128]},
            "train": {"train_batch_size": 2, "total_steps": 50,
                      "learning_rate": {"warmup_steps": 2, "init_learning_rate": 0.01}}}
CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    # odd_size_fraction 0.5: letterboxed, portrait and landscape images in most batches.
    make_synthetic_dataset(root, num_train=10, num_val=0, image_size=128, seed=3, odd_size_fraction=0.5,
                           progress=False)
    return root


def _cfg():
    return load_config(config_path("retinanet_spinenet49s"), OVERRIDE)


def _batches(data, pipeline, start=0, count=12, ahead=None, micro=2):
    cfg = _cfg()
    anchors = Anchors((128, 128), 3, 7, 3, (1.0, 2.0, 0.5), 4.0).boxes
    loader = build_train_input(cfg, (str(data / "annotations/instances_train.json"), str(data / "train")), micro,
                               anchors, CPU, 5, 0, DataPosition(start), torch.device("cpu"), pipeline)
    assert isinstance(loader, DeviceTrainLoader) == (pipeline == "device")
    if ahead is not None:
        loader.ahead = ahead
    out = []
    for batch in itertools.islice(iter(loader), count):
        out.append((loader.position().batches_consumed, batch))
    return out, loader


def _same(a, b):
    assert [p for p, _ in a] == [p for p, _ in b]
    for (_, x), (_, y) in zip(a, b, strict=True):
        for s, t in zip(x, y, strict=True):
            assert torch.equal(s, t)


@pytest.mark.parametrize("ahead", [0, 1])
def test_device_batches_and_positions_equal_the_cpu_path_with_skipped_images(data, tmp_path, ahead):
    # A missing image: with micro-batch 1 its batch is skipped, so the positions jump over it.
    missing = sorted((data / "train").iterdir())[3]
    moved = tmp_path / missing.name
    missing.rename(moved)
    try:
        ref, ref_loader = _batches(data, "cpu", count=14, micro=1)
        got, loader = _batches(data, "device", count=14, ahead=ahead, micro=1)
    finally:
        moved.rename(missing)
    _same(got, ref)
    positions = [p for p, _ in ref]
    assert positions[-1] > 14 and len(positions) == 14  # skipped batches in the window (over an epoch's end)
    assert loader.dataset.skipped_images() == ref_loader.dataset.skipped_images() != []
    assert loader.skipped_loads == ref_loader.skipped_loads


def test_device_batches_resume_mid_epoch(data):
    full, _ = _batches(data, "device", count=7)
    resumed, _ = _batches(data, "device", start=3, count=4, ahead=1)
    _same(resumed, full[3:])


def test_unknown_pipeline_is_refused():
    with pytest.raises(ValueError, match="input pipeline 'gpu' is unknown; valid: auto, device, cpu"):
        resolve_pipeline("gpu", torch.device("cpu"))
    assert resolve_pipeline("auto", torch.device("cpu")) == "cpu"
    assert resolve_pipeline("auto", torch.device("cuda")) == "device"


def _opts(data, model_dir, **kw):
    base = dict(model_dir=model_dir, train_data=(str(data / "annotations/instances_train.json"), str(data / "train")),
                num_workers=0, progress=False, tensorboard=False, seed=5, deterministic=True, checkpoint_every=2)
    return TrainOptions(**{**base, **kw})


def test_training_on_the_device_path_equals_the_cpu_path_and_resumes_across_them(data, tmp_path):
    train(_cfg(), _opts(data, tmp_path / "cpu", max_steps=4, input_pipeline="cpu"))
    train(_cfg(), _opts(data, tmp_path / "dev", max_steps=2, input_pipeline="device", num_workers=1))
    train(_cfg(), _opts(data, tmp_path / "dev", max_steps=4, input_pipeline="device", resume=True))
    a, b = read_checkpoint(tmp_path / "cpu" / "ckpt-4.pt"), read_checkpoint(tmp_path / "dev" / "ckpt-4.pt")
    assert a["data_position"] == b["data_position"] == {"batches_consumed": 4}
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
