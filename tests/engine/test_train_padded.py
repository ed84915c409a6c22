"""``spinenet train --pad_channels 8`` end to end: an exact resume, checkpoints an unpadded model reads, and a
resume may switch padding on (it changes layout, not the run)."""

import pytest
import torch

from spinenet.config import load_config
from spinenet.data.synthetic import make_synthetic_dataset
from spinenet.engine.checkpoint import load_state_dict_strict, read_checkpoint
from spinenet.engine.train import TrainOptions, train
from spinenet.modeling.factory import build_retinanet
from spinenet.registry import config_path

OVERRIDE = {"architecture": {"num_classes": 6}, "retinanet_parser": {"output_size": [128, 128]},
            "train": {"train_batch_size": 2, "total_steps": 50,
                      "learning_rate": {"warmup_steps": 2, "init_learning_rate": 0.01,
                                        "learning_rate_levels": [0.001, 0.0001], "learning_rate_steps": [40, 45]}}}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    make_synthetic_dataset(root, num_train=8, num_val=4, image_size=128, seed=3, progress=False)
    return root


def cfg():
    return load_config(config_path("retinanet_spinenet49s"), OVERRIDE)


def opts(data, model_dir, **kw):
    base = dict(model_dir=model_dir, train_data=(str(data / "annotations/instances_train.json"), str(data / "train")),
                num_workers=0, progress=False, tensorboard=False, seed=5, deterministic=True, checkpoint_every=2)
    base.update(kw)
    return TrainOptions(**base)


def test_padded_training_resumes_exactly_and_saves_standard_checkpoints(data, tmp_path):
    a = train(cfg(), opts(data, tmp_path / "a", max_steps=4, pad_channels=8))
    train(cfg(), opts(data, tmp_path / "b", max_steps=2, pad_channels=8))
    b = train(cfg(), opts(data, tmp_path / "b", max_steps=4, resume=True, pad_channels=8))
    assert a["weights_digest"] == b["weights_digest"]  # sha256 of the (unpadded) state dict: bit for bit
    ckpt = read_checkpoint(tmp_path / "a" / "ckpt-4.pt")
    plain = build_retinanet(cfg())
    load_state_dict_strict(plain, ckpt["model"], "ckpt-4.pt")  # evaluate / export / convert read it as it is
    params = list(plain.parameters())
    buffers = ckpt["optimizer"]["state"]
    assert len(buffers) == len(params)
    for i, p in enumerate(params):  # momentum buffers in the unpadded layout, index for index
        assert buffers[i]["momentum_buffer"].shape == p.shape


def test_a_resume_may_switch_padding_on(data, tmp_path):
    train(cfg(), opts(data, tmp_path / "c", max_steps=2))
    summary = train(cfg(), opts(data, tmp_path / "c", max_steps=3, resume=True, pad_channels=8))
    assert summary["step"] == 3 and torch.isfinite(torch.tensor(summary["total_loss"]))
