"""Evaluation and skipped images during training: evaluating must not change the weights, and images skipped in
the data workers are named (file and reason) in the run's summary and output."""

import json

import torch

from spinenet.config import load_config
from spinenet.data.synthetic import make_synthetic_dataset
from spinenet.engine.train import TrainOptions, train
from spinenet.registry import config_path

# Stochastic depth on (the 49S recipe's 0.2): training draws from the global RNG, so anything else that draws
# from it between steps would change the weights.
OVERRIDE = {"architecture": {"num_classes": 6}, "retinanet_parser": {"output_size": [128, 128]},
            "spinenet": {"init_drop_connect_rate": 0.2},
            "train": {"train_batch_size": 2, "total_steps": 50,
                      "learning_rate": {"warmup_steps": 2, "init_learning_rate": 0.01}},
            "eval": {"eval_batch_size": 2}}


def _data(root, num_train=4, num_val=2):
    make_synthetic_dataset(root, num_train=num_train, num_val=num_val, image_size=128, seed=3, progress=False)
    return root


def _opts(data, model_dir, **kw):
    base = dict(model_dir=model_dir, train_data=(str(data / "annotations/instances_train.json"), str(data / "train")),
                num_workers=0, progress=False, tensorboard=False, seed=5, deterministic=True, checkpoint_every=100)
    base.update(kw)
    return TrainOptions(**base)


def _weights(model_dir, step):
    return torch.load(model_dir / f"ckpt-{step}.pt", weights_only=True)["model"]


def test_evaluating_during_training_leaves_the_weights_bit_identical(tmp_path):
    data = _data(tmp_path / "data")
    cfg = load_config(config_path("retinanet_spinenet49s"), OVERRIDE)
    plain = train(cfg, _opts(data, tmp_path / "plain", max_steps=3))
    val = (str(data / "annotations/instances_val.json"), str(data / "val"))
    # An evaluation after every step, with a worker process (its seed is drawn when the loader is iterated).
    evaluated = train(cfg, _opts(data, tmp_path / "eval", max_steps=3, val_data=val, eval_every=1, num_workers=1))
    a, b = _weights(tmp_path / "plain", 3), _weights(tmp_path / "eval", 3)
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert plain["weights_digest"] == evaluated["weights_digest"]


def test_images_skipped_in_workers_are_named_in_the_summary_and_the_run_folder(tmp_path, caplog):
    data = _data(tmp_path / "data", num_train=8, num_val=0)
    (data / "train/000000000002.jpg").unlink()
    (data / "train/000000000003.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    cfg = load_config(config_path("retinanet_spinenet49s"), [OVERRIDE, {"train": {"train_batch_size": 4}}])
    # Two steps of four images read every image once (each batch keeps >= 2 usable images: BN needs 2).
    summary = train(cfg, _opts(data, tmp_path / "run", max_steps=2, num_workers=1))
    assert "2 image(s) skipped: 000000000002.jpg (missing_image), 000000000003.jpg (corrupt_image)" \
        in summary["skipped"]
    listed = json.loads((tmp_path / "run" / "skipped_images.json").read_text())
    assert [(s["file_name"], s["reason"]) for s in listed["skipped_images"]] == [
        ("000000000002.jpg", "missing_image"), ("000000000003.jpg", "corrupt_image")]
    assert "000000000003.jpg" in listed["skipped_images"][1]["detail"]
