"""Where time goes: the data-wait / device-wait split, throughput per device,
the run clock across restarts, profile traces, flat hparams, console filters."""

import glob
import logging
import os
import time

import jax.numpy as jnp
import pytest

import configs.synthetic as synthetic
from rsa_jax.train import progress, writers


class _SlowOutput:
    """A step output that becomes ready ``seconds`` after it is first waited on."""

    def __init__(self, seconds):
        self.seconds = seconds

    def block_until_ready(self):
        time.sleep(self.seconds)
        return self


def test_input_bound_steps_show_as_data_wait():
    timer = progress.StepTimer()
    for _ in range(3):
        with timer.data():
            time.sleep(0.03)                       # a slow input pipeline
        timer.dispatched(_SlowOutput(0.0))
    timer.drain()
    t = timer.interval()
    assert t["steps"] == 3 and t["data_wait_ms"] >= 30
    assert t["device_wait_ms"] < 10 and t["step_ms"] >= t["data_wait_ms"]
    assert timer.interval()["steps"] == 0          # a new interval starts empty


def test_device_bound_steps_show_as_device_wait():
    timer = progress.StepTimer()
    for _ in range(3):
        with timer.data():
            pass
        timer.dispatched(_SlowOutput(0.03))        # waited on one step later
    timer.drain()
    t = timer.interval()
    assert t["device_wait_ms"] >= 30 and t["data_wait_ms"] < 5
    assert t["step_ms"] == pytest.approx(t["data_wait_ms"] + t["device_wait_ms"], rel=0.2)


def test_images_per_second_per_device():
    rates = progress.throughput({"step_ms": 500.0}, global_batch_size=64, num_frames=8,
                                num_devices=16)
    assert rates["clips_per_s"] == pytest.approx(128.0)
    assert rates["images_per_s_per_device"] == pytest.approx(128.0 * 8 / 16)


def test_run_clock_carries_over_restarts(tmp_path, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(progress.time, "time", lambda: now[0])
    first = progress.RunClock(str(tmp_path), num_devices=4)
    now[0] += 1800                                 # half an hour on 4 devices
    assert first.eta_s(100, 2.0) == 200.0
    first.save(step=900)
    now[0] += 600                                  # lost to the kill: not saved
    second = progress.RunClock(str(tmp_path), num_devices=4)
    assert second.restarts == 1 and second.previous_s == 1800
    now[0] += 360
    assert second.wall_s() == pytest.approx(2160)
    assert second.core_hours() == pytest.approx((1800 + 360) * 4 / 3600)
    # The first interval after a restart holds the compile: the saved rate is used.
    assert second.eta_s(50, 30.0, includes_compile=True) == 100.0
    assert second.eta_s(50, 3.0) == 150.0


def test_profile_steps_spec():
    assert progress.parse_profile_steps("") is None
    assert progress.parse_profile_steps("10,12") == (10, 12)
    with pytest.raises(ValueError, match=r"--config.profile_steps='10' must be 'first,last'"):
        progress.parse_profile_steps("10")
    with pytest.raises(ValueError, match="1 <= first <= last"):
        progress.parse_profile_steps("5,3")


def test_profiler_traces_the_chosen_steps(tmp_path):
    prof = progress.Profiler("2,3", str(tmp_path))
    x = jnp.ones((8, 8))
    for step in range(1, 5):
        prof.before_step(step)
        x = x @ x
        prof.after_step(step, x)
        assert prof._active == (step == 2)
    prof.close()
    traces = glob.glob(os.path.join(str(tmp_path), "profile", "**", "*.xplane.pb"),
                       recursive=True)
    assert len(traces) == 1 and os.path.getsize(traces[0]) > 0


def test_hparams_are_flat_with_nested_fields():
    config = synthetic.get_config()
    hp = writers.flat_hparams(config)
    assert hp["model.depth"] == config.model.depth
    assert hp["data.num_frames"] == config.data.num_frames
    # a field two levels down (a dict inside a ConfigDict) is flattened with dots
    assert hp["model.rsa.num_heads"] == config.model.rsa["num_heads"]
    assert hp["learning_rate"] == config.learning_rate
    assert hp["data.crop_scales"] == "[1.0, 0.875]" and hp["data.data_dir"] == "null"
    assert all(isinstance(v, (bool, int, float, str)) for v in hp.values())


@pytest.mark.parametrize("message,dropped", [
    ("Unable to initialize backend 'tpu': INTERNAL: Failed to open libtpu.so", True),
    ("Given directory is read only=/w/checkpoints", True),
    ("/w/checkpoints is read only, save will be skipped", True),
    ("step 3/6  loss 2.0794", False),
    ("checkpoint /w/checkpoints/3 is unusable (...)", False),
])
def test_console_drops_library_noise_only(message, dropped):
    record = logging.LogRecord("absl", logging.WARNING, __file__, 1, message, None, None)
    assert writers.DropNoise().filter(record) is not dropped
