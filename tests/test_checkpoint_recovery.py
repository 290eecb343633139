"""Damaged checkpoints and changed configs on resume.

A small pytree and a grain iterator stand in for the train state (the
Checkpointer is the same code path as training). Checkpoints 1, 2, 3 are
written after 1, 2, 3 iterator steps; damaging the newest must fall back to 2
with a warning naming step 3 and what is wrong; damaging all must stop with
every problem listed.
"""

import glob
import logging
import os
import shutil

import grain
import jax
import numpy as np
import pytest

import configs.synthetic as synthetic
from rsa_jax.train.checkpoint import Checkpointer, CheckpointError, check_resume_config


def _state(step):
    return {"w": np.arange(600, dtype=np.float32).reshape(6, 100) + step,
            "b": np.full(3, step, np.float32)}


def _iterator():
    return iter(grain.MapDataset.range(100).to_iter_dataset())


ABSTRACT = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _state(0))


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("ckpt") / "checkpoints")
    it, ckpt = _iterator(), Checkpointer(d, keep=5)
    for step in (1, 2, 3):
        next(it)
        ckpt.save(step, _state(step), it)
    ckpt.close()
    return d


@pytest.fixture
def copy(written, tmp_path):
    d = str(tmp_path / "checkpoints")
    shutil.copytree(written, d)
    return d


def _largest_array_file(step_dir):
    files = [f for f in glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True)
             if os.path.isfile(f)]
    return max(files, key=os.path.getsize)


def _truncate_array(step_dir):
    f = _largest_array_file(step_dir)
    with open(f, "r+b") as fh:
        fh.truncate(os.path.getsize(f) // 2)


def _delete_iterator_state(step_dir):
    os.remove(os.path.join(step_dir, "data", "process_0-of-1.json"))


def _cut_metadata(step_dir):
    with open(os.path.join(step_dir, "state", "_METADATA"), "r+b") as fh:
        fh.truncate(60)


@pytest.mark.parametrize("damage,reason", [
    (_truncate_array, "Error reading"),
    (_delete_iterator_state, "data/process_0-of-1.json is missing"),
    (_cut_metadata, "state/_METADATA is not valid JSON"),
], ids=["truncated_array", "deleted_file", "cut_metadata"])
def test_damaged_latest_falls_back_to_newest_good(copy, caplog, damage, reason):
    damage(os.path.join(copy, "3"))
    it = _iterator()
    with caplog.at_level(logging.WARNING):
        step, state, it = Checkpointer(copy).restore_latest(ABSTRACT, it)
    assert step == 2
    np.testing.assert_array_equal(state["w"], _state(2)["w"])
    assert next(it) == 2                       # the iterator resumes after 2 elements
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                and "unusable" in r.getMessage()]
    assert len(warnings) == 1 and f"{copy}/3 is unusable" in warnings[0]
    assert reason in warnings[0]


def test_all_damaged_stops_listing_each(copy):
    _truncate_array(os.path.join(copy, "3"))
    _delete_iterator_state(os.path.join(copy, "2"))
    _cut_metadata(os.path.join(copy, "1"))
    with pytest.raises(CheckpointError) as e:
        Checkpointer(copy).restore_latest(ABSTRACT, _iterator())
    msg = str(e.value)
    assert msg.startswith(f"no usable checkpoint in {copy}: step 3: ")
    assert "step 2: data/process_0-of-1.json is missing" in msg
    assert "step 1: state/_METADATA is not valid JSON" in msg


def test_no_checkpoint_starts_fresh(tmp_path):
    it = _iterator()
    step, state, out = Checkpointer(str(tmp_path / "none")).restore_latest(ABSTRACT, it)
    assert step is None and state is None and out is it


def test_best_or_latest_step(written, tmp_path):
    """The step loaded from a run: the best by top-1 where metrics were saved, else the
    latest; None without checkpoints (eval, init_from and predict all ask this)."""
    assert Checkpointer(written, read_only=True).best_or_latest_step() == 3   # no metrics
    d = str(tmp_path / "checkpoints")
    ckpt = Checkpointer(d, keep=5)
    assert ckpt.best_or_latest_step() is None
    for step, top1 in ((1, 20.0), (2, 70.0), (3, 40.0)):
        ckpt.save(step, _state(step), metrics={"top1": top1})
    ckpt.close()
    assert Checkpointer(d, read_only=True).best_or_latest_step() == 2


def _workdir_with(tmp_path, config, checkpoint=True):
    w = tmp_path / "w"
    (w / "checkpoints" / ("5" if checkpoint else "tmp")).mkdir(parents=True)
    (w / "config.json").write_text(config.to_json_best_effort(indent=2))
    return str(w)


def test_shape_changes_stop_with_every_differing_field(tmp_path):
    workdir = _workdir_with(tmp_path, synthetic.get_config())
    now = synthetic.get_config()
    now.model.depth = 34
    now.model.num_classes = 10
    now.model.rsa_positions = ((), (1,), (1,), (1,))
    now.data.num_frames = 16
    with pytest.raises(CheckpointError) as e:
        check_resume_config(workdir, now)
    inner = str(e.value).split("input shape (")[1].split("); use")[0]
    assert [part.split(":")[0] for part in inner.split("; ")] == [
        "data.num_frames", "model.depth", "model.num_classes", "model.rsa_positions"], inner
    assert "model.depth: 18 -> 34" in inner and "data.num_frames: 8 -> 16" in inner


def test_harmless_changes_resume(tmp_path):
    workdir = _workdir_with(tmp_path, synthetic.get_config())
    now = synthetic.get_config()
    now.eval_every_epochs = 1
    now.log_every_steps = 7
    now.data.num_workers = 4
    now.data.num_threads = 8
    now.model.dtype = "bfloat16"
    now.data.data_dir = "/elsewhere"
    check_resume_config(workdir, now)


def test_no_checkpoint_means_no_check(tmp_path):
    saved = synthetic.get_config()
    saved.model.depth = 50
    check_resume_config(_workdir_with(tmp_path, saved, checkpoint=False), synthetic.get_config())


def test_training_checks_before_overwriting_config_json(tmp_path):
    saved = synthetic.get_config()
    workdir = _workdir_with(tmp_path, saved)
    before = open(os.path.join(workdir, "config.json")).read()
    now = synthetic.get_config()
    now.model.width = 32
    from rsa_jax.train import train
    with pytest.raises(CheckpointError, match=rf"model.width: {saved.model.width} -> 32"):
        train.train_and_evaluate(now, workdir)   # stops before any build or compile
    assert open(os.path.join(workdir, "config.json")).read() == before
