"""Model FLOP utilisation: achieved model TFLOP/s against the device's peak.

Model FLOPs are the architecture's, not what XLA executes: ``model_stats``'
multiply-adds of one clip's forward pass × 2 (FLOPs per multiply-add) × 3
(forward + the two backward products: input and weight gradients), so
rematerialisation, which recomputes forward work, does not raise the figure
(docs/benchmarks.md).

Peaks are dense (no structured sparsity) per chip, from the vendors' datasheets
(`rsa_jax/chips.py`, the table `rsa_jax.aot` also reads).
The 'float32' peak is what XLA's *default* precision runs a float32 matmul or
convolution at: TF32 tensor cores on NVIDIA Ampere and later, one bfloat16 MXU pass
on TPU; on CPU both peaks are measured with a short matmul benchmark.

Use from a training loop::

    meter = MfuMeter.create(config.model, frames, size, clips_per_step=global_batch)
    line += "  " + meter.format(step_seconds)        # progress line
    writer.write_scalars(step, meter.scalars(step_seconds))  # TensorBoard
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rsa_jax import chips

_DTYPES = {"bfloat16": "bfloat16", "bf16": "bfloat16", "float32": "float32", "f32": "float32"}


def _dtype_name(dtype: Any) -> str:
    name = dtype if isinstance(dtype, str) else jnp.dtype(dtype).name
    if name not in _DTYPES:
        raise ValueError(f"MFU peaks exist for bfloat16 and float32 compute, got {name!r}")
    return _DTYPES[name]


def table_peak_flops(device_kind: str, dtype: Any) -> float | None:
    """Datasheet peak FLOP/s of one chip (`rsa_jax.chips`), or None for a device not
    in that table."""
    dt = _dtype_name(dtype)
    chip = chips.chip_for(device_kind)
    return None if chip is None else chip.peak_flops(dt)


@functools.cache
def measured_matmul_flops(dtype: str = "float32", n: int = 1024, repeats: int = 5) -> float:
    """Best-of-`repeats` FLOP/s of an n×n @ n×n matmul on the default device.

    The CPU "peak": all of this process's cores on XLA:CPU's matmul kernel, the same
    kernel the model's 1×1 convolutions use.  A loaded machine lowers it, and so
    raises the MFU computed against it (say which when quoting either).
    """
    dt = jnp.dtype(_dtype_name(dtype))
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dt)
    f = jax.jit(lambda a, b: a @ b)
    jax.block_until_ready(f(a, a))
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(a, a))
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best


def peak_flops(device_kind: str, dtype: Any, platform: str | None = None) -> float | None:
    """Peak FLOP/s per device: datasheet table, or measured for CPU devices."""
    peak = table_peak_flops(device_kind, dtype)
    if peak is None and (platform == "cpu" or device_kind.lower() == "cpu"):
        peak = measured_matmul_flops(_dtype_name(dtype))
    return peak


def mfu(model_flops_per_step: float, step_seconds: float, num_devices: int,
        device_kind: str, dtype: Any, peak: float | None = None) -> float | None:
    """Fraction of the devices' peak that the model's FLOPs achieve (None: peak unknown).

    Args:
      model_flops_per_step: model FLOPs of one global step (all devices together).
      step_seconds: wall seconds of that step.
      num_devices: devices sharing the step.
      device_kind: ``jax.devices()[0].device_kind``.
      dtype: compute dtype ('bfloat16' / 'float32').
      peak: per-device peak FLOP/s, to skip the table / CPU measurement.
    """
    if step_seconds <= 0 or num_devices <= 0:
        raise ValueError(f"mfu needs step_seconds > 0 and num_devices > 0, "
                         f"got {step_seconds}, {num_devices}")
    peak = peak if peak is not None else peak_flops(device_kind, dtype)
    if peak is None:
        return None
    return model_flops_per_step / step_seconds / (num_devices * peak)


def train_flops_per_clip(macs_per_clip: float) -> float:
    """Training FLOPs of one clip from its forward multiply-adds: × 2 FLOPs × 3 passes."""
    return 6.0 * macs_per_clip


@dataclasses.dataclass(frozen=True)
class MfuMeter:
    """Per-step model FLOPs and the devices' peak, fixed once per run."""

    flops_per_step: float
    num_devices: int
    device_kind: str
    peak_per_device: float | None

    @classmethod
    def create(cls, model_cfg: Any, num_frames: int, image_size: int, clips_per_step: int,
               devices: list | None = None) -> MfuMeter:
        """From the model config (compiles one forward pass for `model_stats`)."""
        from rsa_jax.models import model_stats  # local: models import train helpers
        devices = devices or jax.devices()
        macs = model_stats(model_cfg, num_frames, image_size)["macs"]
        dtype = model_cfg.get("dtype", "float32") if hasattr(model_cfg, "get") else "float32"
        d = devices[0]
        return cls(train_flops_per_clip(macs) * clips_per_step, len(devices),
                   d.device_kind, peak_flops(d.device_kind, dtype, d.platform))

    def scalars(self, step_seconds: float) -> dict[str, float]:
        """``model_tflops_per_s`` (all devices) and, if the peak is known, ``mfu``."""
        out = {"model_tflops_per_s": self.flops_per_step / step_seconds / 1e12}
        if self.peak_per_device:
            out["mfu"] = mfu(self.flops_per_step, step_seconds, self.num_devices,
                             self.device_kind, "float32", peak=self.peak_per_device)
        return out

    def format(self, step_seconds: float) -> str:
        """Progress-line fragment: ``'12.3 TFLOP/s  MFU 4.5%'``."""
        s = self.scalars(step_seconds)
        text = f"{s['model_tflops_per_s']:.3g} TFLOP/s"
        return text + (f"  MFU {100 * s['mfu']:.1f}%" if "mfu" in s else "")


def meter_for_run(config: Any, devices: list | None = None) -> MfuMeter | None:
    """The training loop's meter (one global step of ``global_batch_size`` clips), or
    None when ``config.log_mfu`` is False (it compiles one forward pass at start)."""
    if not config.get("log_mfu", True):
        return None
    return MfuMeter.create(config.model, config.data.num_frames, config.data.image_size,
                           clips_per_step=config.global_batch_size, devices=devices)
