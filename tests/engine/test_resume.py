"""What a resume may change, and which checkpoint it continues from.

Expected old values are configs/spinenet49S_retinanet.yaml's (the reference file), the rest the
reference defaults (eval_batch_size 8).
"""

import pytest

from spinenet.config import config_to_dict, load_config
from spinenet.engine.checkpoint import save_checkpoint
from spinenet.engine.resume import check_resume, select_checkpoint
from spinenet.registry import config_path

RUN = {"seed": 0, "accum_steps": 1, "world_size": 1, "precision": "fp32", "train_annotations_sha256": "a" * 64,
       "val_annotations_sha256": None}


def config(*overrides):
    return config_to_dict(load_config(config_path("retinanet_spinenet49s"), overrides=list(overrides)))


def ckpt(**kw):
    return {"config": config(), "run": RUN, **kw}


@pytest.mark.parametrize(("override", "shown"), [
    ("train.train_batch_size=32", "train.train_batch_size 256 -> 32"),
    ("batch_norm_activation.activation=relu", "batch_norm_activation.activation 'swish' -> 'relu'"),
    ("retinanet_parser.output_size=[512,512]", "retinanet_parser.output_size [640, 640] -> [512, 512]"),
    ("train.learning_rate.init_learning_rate=0.1", "train.learning_rate.init_learning_rate 0.28 -> 0.1"),
])
def test_changes_that_alter_the_run_are_refused_naming_key_and_both_values(tmp_path, override, shown):
    with pytest.raises(ValueError, match="cannot resume ") as e:
        check_resume(ckpt(), tmp_path / "ckpt-2.pt", config(override), RUN, tmp_path)
    message = str(e.value)
    assert "\n" not in message and f"with these changes: {shown}. They alter the run" in message
    assert str(tmp_path / "config.yaml") in message


def test_run_settings_are_compared_too(tmp_path):
    new = {**RUN, "seed": 1, "train_annotations_sha256": "b" * 64}
    with pytest.raises(ValueError, match=r"--seed 0 -> 1, training annotations \(sha256\) 'aaa"):
        check_resume(ckpt(), tmp_path / "c.pt", config(), new, tmp_path)


def test_allowed_changes_are_returned_for_the_record(tmp_path):
    new = {**RUN, "val_annotations_sha256": "c" * 64}  # adding an evaluation set to a run that had none
    changes = check_resume(ckpt(), tmp_path / "c.pt", config("train.total_steps=30000", "eval.eval_batch_size=2"),
                           new, tmp_path)
    assert changes == {"train.total_steps": [231500, 30000], "eval.eval_batch_size": [8, 2]}


def test_total_steps_is_refused_with_the_cosine_schedule(tmp_path):
    old = ckpt(config=config("train.learning_rate.type=cosine"))
    with pytest.raises(ValueError, match="train.total_steps 231500 -> 30000"):
        check_resume(old, tmp_path / "c.pt", config("train.learning_rate.type=cosine", "train.total_steps=30000"),
                     RUN, tmp_path)


def fake_checkpoint(path, step):
    save_checkpoint({"format": "spinenet-checkpoint", "format_version": 1, "step": step}, path)


def test_unreadable_newest_checkpoints_are_skipped_with_a_warning_and_set_aside(tmp_path, capsys):
    for step in (2, 4, 6):
        fake_checkpoint(tmp_path / f"ckpt-{step}.pt", step)
    (tmp_path / "ckpt-8.pt").write_bytes(b"")
    good = (tmp_path / "ckpt-6.pt").read_bytes()
    (tmp_path / "ckpt-6.pt").write_bytes(good[: len(good) // 2])
    (tmp_path / "ckpt-backup.pt").write_bytes(b"the user's")
    path, found = select_checkpoint(tmp_path, None)
    assert path == tmp_path / "ckpt-4.pt" and found["step"] == 4
    err = capsys.readouterr().err
    assert f"warning: skipping {tmp_path / 'ckpt-8.pt'}: {tmp_path / 'ckpt-8.pt'} is empty (0 bytes)" in err
    assert f"warning: skipping {tmp_path / 'ckpt-6.pt'}: {tmp_path / 'ckpt-6.pt'} is not a readable" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-2.pt", "ckpt-4.pt", "ckpt-6.pt.unreadable",
                                                          "ckpt-8.pt.unreadable", "ckpt-backup.pt"]


def test_resume_from_an_earlier_checkpoint_sets_the_newer_ones_aside(tmp_path):
    for step in (2, 4, 6):
        fake_checkpoint(tmp_path / f"ckpt-{step}.pt", step)
    path, found = select_checkpoint(tmp_path, str(tmp_path / "ckpt-2.pt"))
    assert path == tmp_path / "ckpt-2.pt" and found["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-2.pt", "ckpt-4.pt.superseded",
                                                          "ckpt-6.pt.superseded"]
    (tmp_path / "bad.pt").touch()
    with pytest.raises(ValueError, match="bad.pt is empty"):  # a chosen checkpoint is never silently replaced
        select_checkpoint(tmp_path, str(tmp_path / "bad.pt"))
