"""Preemption: a SIGTERM mid-epoch checkpoints the step where the run stops
(state and data iterator), the rerun ends bit-identical to an uninterrupted
run, and a second signal while that checkpoint is written is ignored.

The end-to-end tests use the tiny synthetic net of tests/test_train_loop.py; the
signal is sent from inside the loop (when the third batch is fetched) so the
stop step is known: 3, which is not a checkpoint step (every 4).
"""

import glob
import json
import os
import re
import signal
import time

import jax
import ml_collections
import numpy as np
import pytest

from rsa_jax import parallel
from rsa_jax.data import pipeline
from rsa_jax.train import preemption, train
from tests import train_helpers


def test_signal_only_sets_a_flag_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    guard = preemption.PreemptionGuard()
    with guard:
        assert not guard.should_stop(1)
        os.kill(os.getpid(), signal.SIGTERM)     # default action would end pytest
        assert guard.signalled and guard.should_stop(2) and guard.reason == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before


def test_second_signal_during_save_is_ignored(capfd):
    guard = preemption.PreemptionGuard()
    with guard:
        os.kill(os.getpid(), signal.SIGINT)
        with guard.saving():
            os.kill(os.getpid(), signal.SIGTERM)     # would raise/terminate if not caught
            os.kill(os.getpid(), signal.SIGINT)      # KeyboardInterrupt by default
        assert guard.reason is None and guard.should_stop(5) and guard.reason == "SIGINT"
    err = capfd.readouterr().err
    assert "SIGINT received: will checkpoint" in err
    assert err.count("while writing the preemption checkpoint: ignored") == 2


def test_preempted_message_says_how_to_resume():
    e = preemption.Preempted(7, "/w/checkpoints", "SIGTERM")
    assert e.exit_code == 143 and str(e) == (
        "SIGTERM: stopped at step 7; checkpoint saved to /w/checkpoints/7; "
        "rerun the same command to resume")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jit_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    d = str(tmp_path_factory.mktemp("tfds"))
    pipeline.prepare(tiny_config(d).data)
    return d


def tiny_config(data_dir, **kw) -> ml_collections.ConfigDict:
    """configs/synthetic.py:tiny, 6 steps, checkpoints every 4."""
    return train_helpers.tiny_config(data_dir, **{
        "num_train_steps": 6, "log_every_steps": 1, "eval_every_epochs": 100,
        "checkpoint_every_steps": 4, "keep_checkpoints": 5, **kw})


def leaves(workdir, step):
    """Every array of the saved train state, gathered onto one device (also for a
    checkpoint written by two processes, whose device ids this process lacks)."""
    import orbax.checkpoint as ocp
    path = os.path.join(workdir, "checkpoints", str(step), "state")
    ckptr = ocp.StandardCheckpointer()
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree_util.tree_map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one),
        ckptr.metadata(path).item_metadata)
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(ckptr.restore(path, target))]


def _signal_on_fetch(monkeypatch, n, signum=signal.SIGTERM):
    """Sends ``signum`` to this process while the loop fetches its n-th batch."""
    calls, shard = [0], parallel.shard_batch

    def shard_and_signal(batch, mesh):
        calls[0] += 1
        if calls[0] == n:
            os.kill(os.getpid(), signum)
        return shard(batch, mesh)
    monkeypatch.setattr(parallel, "shard_batch", shard_and_signal)


@pytest.mark.slow
def test_sigterm_mid_epoch_then_rerun_is_bit_identical(data_dir, tmp_path, monkeypatch,
                                                       capsys):
    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    train.train_and_evaluate(tiny_config(data_dir, profile_steps="2,3", log_mfu=True,
                                         input_check_seconds=0.3), full)
    # Where time goes (docs/reliability.md#where-time-goes), on the uninterrupted run:
    assert glob.glob(os.path.join(full, "profile", "**", "*.xplane.pb"), recursive=True)
    out = capsys.readouterr().out
    assert "input capacity:" in out and "clips/s decoded+augmented on this host" in out
    progress = [ln for ln in out.splitlines() if re.match(r"step \d+/6 ", ln)]
    assert len(progress) == 6 and all("ms/step" in ln and "TFLOP/s" in ln and "MFU" in ln
                                      for ln in progress)
    rows = [json.loads(line) for line in open(os.path.join(full, "metrics.jsonl"))]
    train_rows = [r for r in rows if "train/loss" in r]
    assert len(train_rows) == 6 and all(
        r["train/step_ms"] >= r["train/data_wait_ms"] >= 0
        and r["train/images_per_s_per_device"] > 0
        and (r["train/accuracy"] * 8 / 100).is_integer()   # percent of 8 clips
        for r in train_rows)
    _signal_on_fetch(monkeypatch, 3)
    with pytest.raises(preemption.Preempted, match="stopped at step 3") as stop:
        train.train_and_evaluate(tiny_config(data_dir), part)
    assert stop.value.exit_code == 143
    assert sorted(os.listdir(os.path.join(part, "checkpoints"))) == ["3"]
    assert os.listdir(os.path.join(part, "checkpoints", "3", "data"))   # iterator position
    monkeypatch.undo()
    train.train_and_evaluate(tiny_config(data_dir), part)
    a, b = leaves(full, 6), leaves(part, 6)
    assert len(a) == len(b) > 20
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    # The run clock carried over: one restart, and the rerun logged steps 4..6 only.
    clock = json.load(open(os.path.join(part, "progress.json")))
    assert clock["restarts"] == 1 and clock["step"] == 6 and clock["core_hours"] > 0
    rows = [json.loads(line) for line in open(os.path.join(part, "metrics.jsonl"))]
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3, 4, 5, 6]


# Two processes (the harness of tests/test_multihost_train.py): SIGTERM reaches
# process 1 only; both must stop at the same step, save it together, exit 143,
# and a restart of both must end bit-identical to an uninterrupted run.
MULTIHOST = {"num_train_steps": 8, "checkpoint_every_steps": 4}


@pytest.fixture(scope="module")
def two_process_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("preempt_multihost")
    train_helpers.write_config_py(d, **{**train_helpers.MULTIHOST_OVERRIDES, **MULTIHOST,
                                        "data.data_dir": str(d / "tfds")})
    return d


def _train_rows(workdir):
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return 0
    return sum('"train/loss"' in line for line in open(path))


@pytest.mark.slow
def test_two_processes_sigterm_one_host_then_rerun_is_bit_identical(two_process_dir):
    from tests.train_helpers import TIMEOUT_S, kill, start, tail, wait
    # The persistent compilation cache is on (as in test_multihost_train): a host that
    # finds its executables cached waits for the other at the start barrier, which
    # comes after the train step is compiled (rsa_jax/train/train.py).

    def run(workdir, tag):
        procs = start(d, workdir, tag)
        try:
            wait(procs)
        finally:
            kill(procs)

    d = two_process_dir
    full, part = str(d / "full"), str(d / "part")
    run(full, "run")
    procs = start(d, part, "preempted")
    try:
        deadline = time.time() + TIMEOUT_S
        while _train_rows(part) < 2 and time.time() < deadline:
            assert all(p.poll() is None for p in procs), tail(procs)
            time.sleep(0.05)
        os.kill(procs[1].pid, signal.SIGTERM)              # one host is preempted
        codes = [p.wait(timeout=TIMEOUT_S) for p in procs]
    finally:
        kill(procs)
    assert codes == [143, 143], tail(procs)
    log0, log1 = (open(p.log_path).read() for p in procs)
    m = re.search(r"a signal on another host: stopped at step (\d+)", log0)
    assert m, tail(procs)
    stop = int(m.group(1))
    assert 2 <= stop < 8 and f"SIGTERM: stopped at step {stop}" in log1
    assert os.path.isdir(os.path.join(part, "checkpoints", str(stop), "data"))
    run(part, "resumed")
    a, b = leaves(full, 8), leaves(part, 8)
    assert len(a) == len(b) > 20
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.slow
def test_chaos_resume_two_kills_is_bit_identical(tmp_path):
    """benchmarks/chaos_resume.py with a small N (docs/reliability.md; N = 20 in
    benchmarks/RESULTS.md): SIGKILLs, one of them inside a checkpoint write."""
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
    import chaos_resume
    row = chaos_resume.main(["--kills", "2", "--steps", "8", "--seed", "0",
                             "--workdir", str(tmp_path)])
    assert row["kills"] == 2 and row["restarts"] == 2 and row["kills_in_checkpoint_write"] == 1
    assert row["bit_identical"] and row["metrics_identical"]
    assert row["arrays_compared"] > 20 and row["metric_values_compared"] >= 8 * 4
