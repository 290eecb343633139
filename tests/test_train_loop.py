"""End to end on the tiny synthetic_motion split with the real model and pipeline:
kill-and-resume is bit-exact, a NaN loss stops the run, eval/test write score
files, and the ensemble tool reads them.

One small RSA net (depth 18, width 8, one RSA block) is compiled a few times;
the persistent compilation cache keeps the repeats cheap.
"""

import json
import os

import jax
import ml_collections
import numpy as np
import pytest

from rsa_jax import ensemble
from rsa_jax.data import pipeline
from rsa_jax.train import train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jit_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    d = str(tmp_path_factory.mktemp("tfds"))
    pipeline.prepare(_config(d).data)
    return d


def _config(data_dir, **kw) -> ml_collections.ConfigDict:
    import configs.synthetic as synthetic  # the README's config, shrunk below
    c = synthetic.get_config()
    c.data.builder_config = "tiny"          # 32 train / 16 validation clips, 32×40
    c.data.data_dir = data_dir
    c.data.num_frames = 4
    c.data.image_size = 32
    c.data.num_threads = 1
    c.model.width = 8
    c.model.rsa_positions = [[], [], [], [1]]
    c.model.rsa = dict(num_heads=2, kernel_size=[3, 3, 3], kernel_type="VplusR",
                       context_type="VplusR", implementation="conv")
    c.global_batch_size = 8                 # 4 steps per epoch, one clip per device
    c.eval_batch_size = 8
    c.test_batch_size = 8
    c.num_epochs = 2
    c.log_every_steps = 2
    c.eval_every_epochs = 1
    c.checkpoint_every_steps = 2
    c.update(kw)
    return c


def _params(workdir, step):
    import orbax.checkpoint as ocp
    restored = ocp.StandardCheckpointer().restore(
        os.path.join(workdir, "checkpoints", str(step), "state"))
    return restored["params"], restored["batch_stats"], restored["opt_state"]


def test_kill_and_resume_is_bit_exact(data_dir, tmp_path):
    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    train.train_and_evaluate(_config(data_dir, num_train_steps=6), full)
    train.train_and_evaluate(_config(data_dir, num_train_steps=3), part)   # "killed" at 3
    metrics = train.train_and_evaluate(_config(data_dir, num_train_steps=6), part)
    a, b = _params(full, 6), _params(part, 6)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(x, y)
    assert 0.0 <= metrics["top1"] <= 100.0 and metrics["num_videos"] == 16
    rows = [json.loads(l) for l in open(os.path.join(full, "metrics.jsonl"))]
    assert any("train/loss" in r for r in rows) and any("eval/top1" in r for r in rows)
    assert os.path.exists(os.path.join(full, "eval", "validation_scores.npz"))
    assert os.path.exists(os.path.join(full, "config.json"))
    kept = sorted(int(s) for s in os.listdir(os.path.join(full, "checkpoints")) if s.isdigit())
    assert kept[-2:] == [4, 6] and len(kept) <= 3        # last 2 + best


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(data_dir, tmp_path):
    workdir = str(tmp_path / "nan")
    train.train_and_evaluate(_config(data_dir, num_train_steps=2), workdir)
    with pytest.raises(FloatingPointError, match="last good checkpoint is step 2"):
        train.train_and_evaluate(_config(data_dir, num_train_steps=6, learning_rate=1e30),
                                     workdir)
    steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
    assert steps == [2]


def test_eval_and_test_modes_write_scores_and_ensemble(data_dir, tmp_path):
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(_config(data_dir, num_train_steps=2), workdir)
    m_eval = train.evaluate_checkpoint(_config(data_dir), workdir, mode="eval")
    m_test = train.evaluate_checkpoint(_config(data_dir), workdir, mode="test")
    f_eval = np.load(os.path.join(workdir, "eval", "validation_scores.npz"))
    f_test = np.load(os.path.join(workdir, "eval", "validation_test_scores.npz"))
    assert f_eval["scores"].shape == (16, 8) and int(f_test["views"]) == 6
    np.testing.assert_array_equal(f_eval["index"], np.arange(16))
    top1 = 100 * np.mean(f_eval["scores"].argmax(1) == f_eval["labels"])
    assert m_eval["top1"] == pytest.approx(top1) and m_test["num_videos"] == 16
    out = str(tmp_path / "ens.npz")
    ens = ensemble.main([os.path.join(workdir, "eval", "validation_scores.npz"),
                         os.path.join(workdir, "eval", "validation_test_scores.npz"),
                         "--out", out])
    assert ens["num_videos"] == 16 and np.load(out)["scores"].shape == (16, 8)
