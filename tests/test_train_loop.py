"""End to end on the tiny synthetic_motion split with the real model and pipeline:
kill-and-resume is bit-exact, a NaN loss stops the run, eval/test write score
files, and the ensemble tool reads them.

One small RSA net (configs/synthetic.py:tiny: depth 18, width 8, one RSA block) is
compiled a few times;
the persistent compilation cache keeps the repeats cheap.
"""

import json
import os

import jax
import numpy as np
import pytest

from rsa_jax import ensemble
from rsa_jax.data import pipeline
from rsa_jax.train import train
from rsa_jax.train.checkpoint import Checkpointer
from tests.train_helpers import tiny_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jit_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    d = str(tmp_path_factory.mktemp("tfds"))
    pipeline.prepare(tiny_config(d).data)
    return d


def _params(workdir, step):
    import orbax.checkpoint as ocp
    restored = ocp.StandardCheckpointer().restore(
        os.path.join(workdir, "checkpoints", str(step), "state"))
    return restored["params"], restored["batch_stats"], restored["opt_state"]


def test_kill_and_resume_is_bit_exact(data_dir, tmp_path):
    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    train.train_and_evaluate(tiny_config(data_dir, num_train_steps=6), full)
    train.train_and_evaluate(tiny_config(data_dir, num_train_steps=3), part)   # "killed" at 3
    metrics = train.train_and_evaluate(tiny_config(data_dir, num_train_steps=6), part)
    a, b = _params(full, 6), _params(part, 6)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(x, y)
    assert 0.0 <= metrics["top1"] <= 100.0 and metrics["num_videos"] == 16
    rows = [json.loads(ln) for ln in open(os.path.join(full, "metrics.jsonl"))]
    assert any("train/loss" in r for r in rows) and any("eval/top1" in r for r in rows)
    assert os.path.exists(os.path.join(full, "eval", "validation_scores.npz"))
    assert os.path.exists(os.path.join(full, "config.json"))
    kept = sorted(int(s) for s in os.listdir(os.path.join(full, "checkpoints")) if s.isdigit())
    assert kept[-2:] == [4, 6] and len(kept) <= 3        # last 2 + best


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(data_dir, tmp_path):
    workdir = str(tmp_path / "nan")
    train.train_and_evaluate(tiny_config(data_dir, num_train_steps=2), workdir)
    with pytest.raises(FloatingPointError, match="last good checkpoint is step 2"):
        train.train_and_evaluate(tiny_config(data_dir, num_train_steps=6, learning_rate=1e30),
                                     workdir)
    steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
    assert steps == [2]


def test_eval_and_test_modes_write_scores_and_ensemble(data_dir, tmp_path):
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(tiny_config(data_dir, num_train_steps=2), workdir)
    m_eval = train.evaluate_checkpoint(tiny_config(data_dir), workdir, mode="eval")
    m_test = train.evaluate_checkpoint(tiny_config(data_dir), workdir, mode="test")
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


def test_eval_schedule_checkpoints_every_eval_and_mode_eval_takes_the_best(
        data_dir, tmp_path, capsys):
    """3 epochs of 4 steps: eval every 3 epochs + each of the last 2 (steps 8, 12),
    checkpoints every 3 steps, periods that do not divide each other; the run also
    uses uint8 input, BN groups of 4 clips and the official epoch step."""
    workdir = str(tmp_path / "run")
    cfg = tiny_config(data_dir, num_epochs=3, eval_every_epochs=3, eval_last_epochs=2,
                  checkpoint_every_steps=3, keep_checkpoints=5, official_epoch_step=True)
    cfg.data.uint8_output = True
    cfg.model.bn_group_clips = 4
    train.train_and_evaluate(cfg, workdir)
    rows = [json.loads(ln) for ln in open(os.path.join(workdir, "metrics.jsonl"))]
    evals = {r["step"]: r["eval/top1"] for r in rows if "eval/top1" in r}
    assert sorted(evals) == [8, 12]
    assert all("eval/loss_smoothed" in r for r in rows if "eval/top1" in r)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    assert sorted(int(s) for s in os.listdir(ckpt_dir) if s.isdigit()) == [3, 6, 8, 9, 12]
    best = Checkpointer(ckpt_dir, read_only=True).best_step()
    assert best in (8, 12) and evals[best] == max(evals.values())
    capsys.readouterr()
    m = train.evaluate_checkpoint(_with(cfg, init_from=str(tmp_path)), workdir)
    out = capsys.readouterr().out
    assert f"evaluating {ckpt_dir}/{best} (best top1); --config.init_from=" in out
    assert m["top1"] == pytest.approx(evals[best])
    # init_from takes a workdir or a step folder, not only the inner state folder
    assert train.resolve_init_from(workdir) == os.path.join(ckpt_dir, str(best), "state")
    assert train.resolve_init_from(os.path.join(ckpt_dir, "3")) == os.path.join(
        ckpt_dir, "3", "state")
    fresh = train.evaluate_checkpoint(_with(cfg, init_from=workdir), str(tmp_path / "empty"))
    assert fresh["top1"] == pytest.approx(evals[best])


def _with(cfg, **kw):
    c = cfg.copy_and_resolve_references()
    c.update(kw)
    return c


def test_progress_figures_use_the_measured_step_time(data_dir, tmp_path, capsys, monkeypatch):
    """A fake clock on which every step takes `device_s` of device time: the progress
    lines' ms/step, clips/s, TFLOP/s and MFU and progress.json's sec_per_step must all
    be that step time, for 1-step intervals too (the host runs a step ahead, so wall
    time read before the last step finished gave MFU 75065 %)."""
    import types

    from rsa_jax.train import mfu as mfu_lib
    from rsa_jax.train import progress

    device_s, flops, peak = 7.0, 3.0e12, 2.0e12   # one step of F FLOPs; per-device peak
    now = [1000.0]
    fake_time = types.SimpleNamespace(perf_counter=lambda: now[0], time=lambda: now[0])

    def block_until_ready(x):   # the device finishes a step device_s after it is waited on
        now[0] += device_s
        return jax.block_until_ready(x)

    monkeypatch.setattr(progress, "time", fake_time)
    monkeypatch.setattr(progress, "jax", types.SimpleNamespace(
        block_until_ready=block_until_ready, profiler=jax.profiler))
    meter = mfu_lib.MfuMeter(flops, 1, "cpu", peak)
    monkeypatch.setattr(mfu_lib, "meter_for_run", lambda config: meter)
    workdir = str(tmp_path / "run")
    cfg = tiny_config(data_dir, num_train_steps=3, log_every_steps=1, eval_every_epochs=10)
    capsys.readouterr()
    train.train_and_evaluate(cfg, workdir)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("step ")
             and "ms/step" in ln]
    assert len(lines) == 3, lines
    for line in lines:
        assert f"of {1e3 * device_s:.0f} ms/step" in line, line
        assert f"{cfg.global_batch_size / device_s:.1f} clips/s" in line, line
        assert f"{flops / device_s / 1e12:.3g} TFLOP/s" in line, line
        assert f"MFU {100 * flops / device_s / peak:.1f}%" in line, line
    with open(os.path.join(workdir, progress.PROGRESS_FILE)) as f:
        assert json.load(f)["sec_per_step"] == pytest.approx(device_s)
