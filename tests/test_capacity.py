"""Input capacity check (rsa_jax/train/capacity.py) with fake pipelines and clocks."""

from __future__ import annotations

import itertools
import time

import ml_collections
import numpy as np
import pytest

from rsa_jax.train import capacity
from rsa_jax.train.mfu import MfuMeter


class _FakeClock:
    """Advances `step` seconds each time a batch is drawn from `batches`."""

    def __init__(self, step: float):
        self.t, self.step = 0.0, step

    def __call__(self) -> float:
        return self.t

    def batches(self, batch: int):
        while True:
            self.t += self.step
            yield {"video": np.zeros((batch, 1), np.uint8)}


def test_rate_is_clips_over_time_and_skips_the_first_batch():
    clock = _FakeClock(step=0.25)           # one batch of 4 clips every 0.25 s: 16 clips/s
    rate = capacity.measure_input_rate(clock.batches(4), seconds=1.0, clock=clock)
    assert rate == pytest.approx(16.0)
    with pytest.raises(ValueError, match="seconds > 0"):
        capacity.measure_input_rate(clock.batches(4), seconds=0)


def test_estimate_arithmetic_and_warning_names_num_workers():
    # 8 devices at 100 TFLOP/s, 40 % MFU: 320 TFLOP/s; a 640 TFLOP step takes 2 s.
    cap = capacity.estimate(10.0, clips_per_step_per_host=32, flops_per_step=640e12,
                            num_devices=8, peak_per_device=100e12, assumed_mfu=0.4,
                            num_workers=3)
    assert cap.step_seconds == pytest.approx(2.0)
    assert cap.needed_clips_per_s == pytest.approx(16.0)
    assert cap.input_bound and "data.num_workers (now 3)" in cap.message()
    fast = capacity.estimate(20.0, 32, 640e12, 8, 100e12, 0.4)
    assert not fast.input_bound and "num_workers" not in fast.message()
    with pytest.raises(ValueError, match="input_check_mfu"):
        capacity.estimate(1.0, 1, 1.0, 1, 1.0, assumed_mfu=0.0)


def _run_config(**kw) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict(dict(
        data=dict(num_workers=0), train_split="train", global_batch_size=8, seed=0,
        input_check_seconds=0.3, input_check_mfu=0.5))
    c.update(kw)
    return c


def _slow_pipeline(delay: float):
    """A stand-in for pipeline.create_iterator whose batches take `delay` s each."""
    seen = {}

    def create_iterator(data_cfg, *, split, mode, global_batch_size, process_index,
                        process_count, seed):
        seen.update(split=split, mode=mode, batch=global_batch_size // process_count)

        def gen():
            for _ in itertools.count():
                time.sleep(delay)
                yield {"video": np.zeros((global_batch_size // process_count, 1))}
        return gen()
    return create_iterator, seen


def test_check_run_warns_on_a_slow_pipeline(caplog):
    # 2 hosts × 4 devices of 1 TFLOP/s at 50 % MFU; a 2 TFLOP step takes 1 s, so this
    # host must supply 4 clips/s; the fake pipeline gives 4 clips / 0.1 s = 40 clips/s.
    meter = MfuMeter(flops_per_step=2e12, num_devices=4, device_kind="x", peak_per_device=1e12)
    fn, seen = _slow_pipeline(0.1)
    cap = capacity.check_run(_run_config(), meter, 0, 2, iterator_fn=fn)
    assert seen == {"split": "train", "mode": "train", "batch": 4}
    assert cap.needed_clips_per_s == pytest.approx(4.0)
    assert 10 < cap.input_clips_per_s <= 40.5 and not cap.input_bound
    # The same pipeline against a 100x faster model is input-bound.
    fast = MfuMeter(2e10, 4, "x", 1e12)
    with caplog.at_level("WARNING"):
        cap = capacity.check_run(_run_config(), fast, 0, 2, iterator_fn=fn)
    assert cap.input_bound
    assert "INPUT-BOUND" in caplog.text and "--config.data.num_workers (now 0)" in caplog.text


def test_check_run_can_be_disabled_and_needs_a_peak():
    fn, seen = _slow_pipeline(0.0)
    meter = MfuMeter(1e12, 1, "x", 1e12)
    assert capacity.check_run(_run_config(input_check_seconds=0), meter, 0, 1, fn) is None
    assert capacity.check_run(_run_config(), MfuMeter(1e12, 1, "x", None), 0, 1, fn) is None
    assert not seen                           # the pipeline was never started
