"""Input capacity check: can this host decode and augment clips as fast as its devices
will consume them?

At the start of a run, `check_run` pulls batches from the run's own train pipeline for
a second or two and compares the measured clips/s with an *estimate* of what the
devices will consume: this host's share of a global step (``global_batch_size /
process_count`` clips) divided by the expected step time, which is the model's
training FLOPs per step (`mfu.MfuMeter`) over the devices' peak at an assumed MFU
(``input_check_mfu``, default 0.3).  The estimate is rough on purpose — the real step
time is only known after compilation — and it is stated in the logged line, so a
reader can redo the arithmetic with the MFU the progress lines then report.
See docs/benchmarks.md and docs/data.md#pipeline.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from typing import Any

from absl import logging

DEFAULT_ASSUMED_MFU = 0.3


def measure_input_rate(batches: Iterator[Any], seconds: float = 1.5,
                       clock: Callable[[], float] = time.perf_counter,
                       max_batches: int = 1000) -> float:
    """Clips/s that `batches` yields, timed over about `seconds` after a first batch.

    The first batch is not timed: it includes starting the pipeline's threads or
    worker processes.  Batch sizes are read from the leading axis of ``"video"`` (or
    of the batch itself when it is an array).

    Raises:
      ValueError: when `seconds` is not positive.
    """
    if seconds <= 0:
        raise ValueError(f"measure_input_rate needs seconds > 0, got {seconds}")
    next(batches)
    clips, t0 = 0, clock()
    elapsed = 0.0
    for _ in range(max_batches):
        batch = next(batches)
        clips += len(batch["video"] if isinstance(batch, dict) else batch)
        elapsed = clock() - t0
        if elapsed >= seconds:
            break
    return clips / max(elapsed, 1e-9)


@dataclasses.dataclass(frozen=True)
class Capacity:
    """One host's input rate against its devices' expected consumption."""

    input_clips_per_s: float
    needed_clips_per_s: float
    step_seconds: float
    assumed_mfu: float
    num_workers: int

    @property
    def input_bound(self) -> bool:
        return self.input_clips_per_s < self.needed_clips_per_s

    def message(self) -> str:
        """One log line; names ``data.num_workers`` when the run will be input-bound."""
        line = (f"input capacity: {self.input_clips_per_s:.1f} clips/s decoded+augmented on "
                f"this host; devices need ~{self.needed_clips_per_s:.1f} clips/s "
                f"(expected {self.step_seconds:.3g} s/step, assuming "
                f"{100 * self.assumed_mfu:.0f}% MFU)")
        if self.input_bound:
            line += (f" -> INPUT-BOUND: raise --config.data.num_workers (now "
                     f"{self.num_workers}) or use a faster frame storage")
        return line


def estimate(input_clips_per_s: float, clips_per_step_per_host: float,
             flops_per_step: float, num_devices: int, peak_per_device: float,
             assumed_mfu: float = DEFAULT_ASSUMED_MFU, num_workers: int = 0) -> Capacity:
    """Compares a measured input rate with the consumption at an assumed MFU.

    Expected step time = ``flops_per_step / (num_devices · peak_per_device ·
    assumed_mfu)``; the host must supply ``clips_per_step_per_host`` per step.
    """
    if not 0 < assumed_mfu <= 1:
        raise ValueError(f"input_check_mfu must be in (0, 1], got {assumed_mfu}")
    step_s = flops_per_step / (num_devices * peak_per_device * assumed_mfu)
    return Capacity(input_clips_per_s, clips_per_step_per_host / step_s, step_s,
                    assumed_mfu, num_workers)


def check_run(config: Any, meter: Any, process_index: int, process_count: int,
              iterator_fn: Callable[..., Iterator[Any]] | None = None) -> Capacity | None:
    """Measures the run's train pipeline on this host and logs (warns) one line.

    Args:
      config: the run config (``data``, ``global_batch_size``, ``seed``, and optional
        ``input_check_seconds`` (0 disables the check) and ``input_check_mfu``).
      meter: the run's `mfu.MfuMeter` (model FLOPs per step and device peak), or None.
      process_index, process_count: this host's place in the run.
      iterator_fn: ``pipeline.create_iterator`` (injectable for tests).

    Returns:
      the `Capacity`, or None when disabled or the device peak is unknown.
    """
    seconds = float(config.get("input_check_seconds", 1.5))
    if seconds <= 0 or meter is None or not meter.peak_per_device:
        return None
    if iterator_fn is None:
        from rsa_jax.data import pipeline  # local: keeps this module free of TF imports
        iterator_fn = pipeline.create_iterator
    it = iterator_fn(config.data, split=config.train_split, mode="train",
                     global_batch_size=config.global_batch_size, process_index=process_index,
                     process_count=process_count, seed=config.seed)
    rate = measure_input_rate(iter(it), seconds)
    cap = estimate(rate, config.global_batch_size / process_count, meter.flops_per_step,
                   meter.num_devices, meter.peak_per_device,
                   float(config.get("input_check_mfu", DEFAULT_ASSUMED_MFU)),
                   int(config.data.get("num_workers", 0)))
    (logging.warning if cap.input_bound else logging.info)("%s", cap.message())
    if process_index == 0:
        print(cap.message(), flush=True)
    return cap
