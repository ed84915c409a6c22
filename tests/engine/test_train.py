"""Training end to end on a tiny synthetic set: it runs, learns, stops on NaN, and resumes exactly."""

import json

import pytest
import torch

from spinenet.config import load_config
from spinenet.data.synthetic import make_synthetic_dataset
from spinenet.engine.checkpoint import read_checkpoint
from spinenet.engine.train import NonFiniteLossError, TrainOptions, train
from spinenet.registry import config_path

OVERRIDE = {"architecture": {"num_classes": 6}, "retinanet_parser": {"output_size": [128, 128]},
            "train": {"train_batch_size": 2, "total_steps": 50,
                      "learning_rate": {"warmup_steps": 2, "init_learning_rate": 0.01,
                                        "learning_rate_levels": [0.001, 0.0001], "learning_rate_steps": [40, 45]}},
            "eval": {"eval_batch_size": 4}}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    make_synthetic_dataset(root, num_train=8, num_val=4, image_size=128, seed=3, progress=False)
    return root


def cfg(**extra):
    return load_config(config_path("retinanet_spinenet49s"), [OVERRIDE, extra] if extra else OVERRIDE)


def opts(data, model_dir, **kw):
    base = dict(model_dir=model_dir, train_data=(str(data / "annotations/instances_train.json"), str(data / "train")),
                num_workers=0, progress=False, tensorboard=False, seed=5, deterministic=True, checkpoint_every=2)
    base.update(kw)
    return TrainOptions(**base)


def final_weights(model_dir):
    ckpts = sorted(model_dir.glob("ckpt-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
    return read_checkpoint(ckpts[-1])


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(data, tmp_path):
    train(cfg(), opts(data, tmp_path / "a", max_steps=4))
    train(cfg(), opts(data, tmp_path / "b", max_steps=2))
    train(cfg(), opts(data, tmp_path / "b", max_steps=4, resume=True))
    a, b = final_weights(tmp_path / "a"), final_weights(tmp_path / "b")
    assert a["step"] == b["step"] == 4
    assert a["data_position"] == b["data_position"] == {"batches_consumed": 4}
    for k, v in a["model"].items():
        assert torch.allclose(v.float(), b["model"][k].float(), atol=1e-6, rtol=0), k


def test_checkpoints_describe_themselves_and_old_ones_are_pruned(data, tmp_path):
    summary = train(cfg(), opts(data, tmp_path / "c", max_steps=6, keep_last=2,
                                val_data=(str(data / "annotations/instances_val.json"), str(data / "val")))
                    )
    names = sorted(p.name for p in (tmp_path / "c").glob("*.pt"))
    assert names == ["best.pt", "ckpt-4.pt", "ckpt-6.pt"]
    ckpt = torch.load(tmp_path / "c" / "ckpt-6.pt", weights_only=True)
    assert ckpt["variant"] == "retinanet_spinenet49s" and ckpt["config"]["architecture"]["num_classes"] == 6
    assert ckpt["label_map"] == {"1": "circle", "2": "square", "3": "triangle", "4": "star", "5": "cross"}
    assert "AP" in summary["metrics"]
    json.dumps(summary["metrics"])


def test_existing_run_needs_resume(data, tmp_path):
    train(cfg(), opts(data, tmp_path / "d", max_steps=2))
    with pytest.raises(ValueError, match="already holds checkpoints.*--resume"):
        train(cfg(), opts(data, tmp_path / "d", max_steps=2))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(data, tmp_path):
    # A learning rate of 1e30 from step 0: step 1 (weights ~1e30) is the first non-finite loss.
    huge = cfg(train={"learning_rate": {"init_learning_rate": 1e30, "warmup_learning_rate": 1e30}})
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step 1: .*cls .*box .*ckpt-1.pt"):
        train(huge, opts(data, tmp_path / "e", max_steps=6, checkpoint_every=1))
    assert sorted(p.name for p in (tmp_path / "e").glob("*.pt")) == ["ckpt-1.pt"]


def test_resume_refuses_a_changed_run_and_records_allowed_changes(data, tmp_path):
    d = tmp_path / "f"
    train(cfg(), opts(data, d, max_steps=2, log_every=1))
    with pytest.raises(ValueError, match=r"ckpt-2.pt with these changes: batch_norm_activation.activation 'swish' "
                                         r"-> 'relu', train.train_batch_size 2 -> 4\. They alter the run"):
        train(cfg(batch_norm_activation={"activation": "relu"}, train={"train_batch_size": 4}),
              opts(data, d, max_steps=4, resume=True))
    with pytest.raises(ValueError, match=r"--seed 5 -> 6\. They alter the run"):
        train(cfg(), opts(data, d, max_steps=4, resume=True, seed=6))
    train(cfg(train={"total_steps": 60}), opts(data, d, max_steps=3, resume=True, log_every=1))
    assert read_checkpoint(d / "ckpt-3.pt")["resume_changes"] == [
        {"step": 2, "changes": {"train.total_steps": [50, 60]}}]
    # The resolved config of the latest start is in config.yaml, and it resumes as it is.
    assert load_config(d / "config.yaml") == cfg(train={"total_steps": 60})
    records = [json.loads(ln) for ln in (d / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r.get("event")) for r in records] == [(1, None), (2, None), (2, "resume"), (3, None)]
    assert records[2]["changes"] == {"train.total_steps": [50, 60]} and records[2]["source"].endswith("ckpt-2.pt")
    assert {"train/total_loss", "train/learning_rate", "train/images_per_second"} <= set(records[3])


def test_resume_skips_an_unreadable_newest_checkpoint(data, tmp_path, capsys):
    d = tmp_path / "g"
    train(cfg(), opts(data, d, max_steps=4))
    (d / "ckpt-4.pt").write_bytes(b"")  # as a full disk or a crash outside our atomic write could leave it
    (d / "ckpt-backup.pt").write_bytes(b"the user's copy")
    capsys.readouterr()
    train(cfg(), opts(data, d, max_steps=4, resume=True))
    out = capsys.readouterr()
    assert f"warning: skipping {d / 'ckpt-4.pt'}: {d / 'ckpt-4.pt'} is empty (0 bytes)" in out.err
    assert f"resumed from {d / 'ckpt-2.pt'} at step 2" in out.out
    assert read_checkpoint(d / "ckpt-4.pt")["step"] == 4 and (d / "ckpt-4.pt.unreadable").exists()
