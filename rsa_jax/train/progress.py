"""Where a run's time goes: data wait vs device time per step, throughput, ETA,
core-hours that survive restarts, and ``jax.profiler`` traces of chosen steps.

Timing method (``StepTimer``): each step the loop (1) fetches and shards the
next batch — *data wait*, the time blocked in the input pipeline — then (2)
dispatches the step, which returns at once, then (3) blocks until the
*previous* step's outputs are ready — *device wait*. The device therefore
always has the next step queued (no bubble), while the host runs at most one
step ahead, so the two waits split each step's wall time: an input-bound run
shows data wait ≈ step time and device wait ≈ 0, a compute-bound run the
opposite. The one extra sync per step is on a few scalars already computed,
and costs only the dispatch of a step that is already queued.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import jax
from absl import logging

PROGRESS_FILE = "progress.json"


class StepTimer:
    """Accumulates data wait and step time between two ``interval()`` calls."""

    def __init__(self) -> None:
        self._pending: Any = None
        self._reset()

    def _reset(self) -> None:
        self.steps, self.data_s, self.device_s, self.step_s = 0, 0.0, 0.0, 0.0
        self._t0: float | None = None

    @contextlib.contextmanager
    def data(self) -> Iterator[None]:
        """Wraps ``next(iterator)`` + sharding: the start of a step."""
        self._t0 = time.perf_counter()
        yield
        self.data_s += time.perf_counter() - self._t0

    def dispatched(self, outputs: Any) -> None:
        """After dispatching a step: waits for the previous step's ``outputs``."""
        t = time.perf_counter()
        if self._pending is not None:
            jax.block_until_ready(self._pending)
        self._pending = outputs
        now = time.perf_counter()
        self.device_s += now - t
        self.step_s += now - (self._t0 if self._t0 is not None else t)
        self.steps += 1

    def drain(self) -> None:
        """Waits for the last dispatched step (before eval, checkpoints, logging)."""
        if self._pending is not None:
            t = time.perf_counter()
            jax.block_until_ready(self._pending)
            dt = time.perf_counter() - t
            self.device_s += dt
            self.step_s += dt
            self._pending = None

    def interval(self) -> dict[str, float]:
        """Per-step means since the last call (ms), then starts a new interval."""
        n = max(1, self.steps)
        out = {"data_wait_ms": 1e3 * self.data_s / n, "device_wait_ms": 1e3 * self.device_s / n,
               "step_ms": 1e3 * self.step_s / n, "steps": float(self.steps)}
        self._reset()
        return out


def throughput(timing: dict[str, float], global_batch_size: int, num_frames: int,
               num_devices: int) -> dict[str, float]:
    """Clips/s overall and images (frames)/s per device from ``StepTimer.interval()``."""
    clips_per_s = global_batch_size / max(timing["step_ms"] / 1e3, 1e-9)
    return {"clips_per_s": clips_per_s,
            "images_per_s_per_device": clips_per_s * num_frames / num_devices}


class RunClock:
    """Wall time and device-hours of a run over all its restarts.

    Kept in ``<workdir>/progress.json``, not in the checkpoint: time spent on
    steps that a restart repeats was still spent, so it must not roll back
    with the parameters. Only process 0 writes.
    """

    def __init__(self, workdir: str, num_devices: int, write: bool = True):
        self._path = os.path.join(workdir, PROGRESS_FILE)
        self._devices, self._write = num_devices, write
        self._start = time.time()
        saved = {}
        if os.path.isfile(self._path):
            try:
                with open(self._path) as f:
                    saved = json.load(f)
            except ValueError:   # cut by a kill mid-write (before os.replace existed)
                logging.warning("%s is unreadable; run time restarts from 0", self._path)
        self.previous_s = float(saved.get("wall_s", 0.0))
        self.previous_core_h = float(saved.get("core_hours", 0.0))
        self.sec_per_step: float | None = saved.get("sec_per_step")
        self.restarts = int(saved.get("restarts", -1)) + 1

    def wall_s(self) -> float:
        return self.previous_s + time.time() - self._start

    def core_hours(self) -> float:
        """Device-hours (GPUs or TPU chips × hours) of every attempt so far."""
        return self.previous_core_h + (time.time() - self._start) * self._devices / 3600

    def eta_s(self, remaining_steps: int, measured_sec_per_step: float,
              includes_compile: bool = False) -> float:
        """Remaining time at the measured rate. The first interval after a
        (re)start holds the compile: then the previous attempt's rate is used."""
        if includes_compile and self.sec_per_step:
            rate = self.sec_per_step
        else:
            rate = self.sec_per_step = measured_sec_per_step
        return remaining_steps * rate

    def save(self, step: int) -> None:
        if not self._write:
            return
        row = {"step": step, "wall_s": self.wall_s(), "core_hours": self.core_hours(),
               "sec_per_step": self.sec_per_step, "restarts": self.restarts}
        tmp = self._path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(row, f)
        os.replace(tmp, self._path)   # atomic: a kill leaves the old or the new file


def parse_profile_steps(spec: str | None) -> tuple[int, int] | None:
    """``'a,b'`` → (a, b): trace steps a..b inclusive; '' or None → no trace.

    Raises:
      ValueError: naming the flag, if the spec is not two steps a <= b.
    """
    if not spec:
        return None
    parts = str(spec).split(",")
    try:
        first, last = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"--config.profile_steps={spec!r} must be 'first,last' "
                         "(two step numbers, e.g. 10,12)") from None
    if not 1 <= first <= last:
        raise ValueError(f"--config.profile_steps={spec!r}: need 1 <= first <= last")
    return first, last


class Profiler:
    """Writes a ``jax.profiler`` trace of steps first..last to ``<workdir>/profile``."""

    def __init__(self, spec: str | None, workdir: str):
        self._steps = parse_profile_steps(spec)
        self.directory = os.path.join(workdir, "profile")
        self._active = False

    def before_step(self, step: int) -> None:
        if self._steps and step == self._steps[0]:
            jax.profiler.start_trace(self.directory)
            self._active = True

    def after_step(self, step: int, outputs: Any) -> None:
        if self._active and step == self._steps[1]:
            jax.block_until_ready(outputs)   # the trace must hold the whole step
            jax.profiler.stop_trace()
            self._active = False
            logging.info("profile of steps %d-%d written to %s", *self._steps, self.directory)

    def close(self) -> None:
        if self._active:   # the run ended (or stopped) inside the window
            jax.profiler.stop_trace()
            self._active = False
