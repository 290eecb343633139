"""MFU: datasheet peak lookup by device kind, the arithmetic, the CPU measurement."""

from __future__ import annotations

import pytest

from rsa_jax.train import mfu as mfu_lib


@pytest.mark.parametrize("kind,dtype,tflops", [
    ("NVIDIA H200", "bfloat16", 989.5),
    ("NVIDIA H100 80GB HBM3", "bfloat16", 989.5),
    ("NVIDIA H100 PCIe", "bfloat16", 756.5),
    ("NVIDIA H100 PCIe", "float32", 378.0),
    ("NVIDIA A100-SXM4-80GB", "float32", 156.0),
    ("NVIDIA A100-PCIE-40GB", "bf16", 312.0),
    ("NVIDIA L4", "bfloat16", 121.0),
    ("TPU v4", "bfloat16", 275.0),
    ("TPU v5 lite", "bfloat16", 197.0),
    ("TPU v5", "bfloat16", 459.0),
    ("TPU v5p", "float32", 459.0),
    ("TPU v6 lite", "bfloat16", 918.0),
])
def test_table_lookup(kind, dtype, tflops):
    assert mfu_lib.table_peak_flops(kind, dtype) == pytest.approx(tflops * 1e12)


def test_unknown_device_and_dtype():
    assert mfu_lib.table_peak_flops("NVIDIA GeForce RTX 3090", "bfloat16") is None
    assert mfu_lib.mfu(1e12, 1.0, 1, "Some accelerator", "bfloat16") is None
    with pytest.raises(ValueError, match="bfloat16 and float32"):
        mfu_lib.table_peak_flops("TPU v4", "int8")
    with pytest.raises(ValueError, match="step_seconds > 0"):
        mfu_lib.mfu(1e12, 0.0, 1, "TPU v4", "bfloat16")


def test_mfu_arithmetic():
    # 8 H100s at 989.5 TFLOP/s each; a step of 2 s doing 3958 TFLOP overall is 25 %.
    assert mfu_lib.mfu(3958e12, 2.0, 8, "NVIDIA H100 80GB HBM3", "bfloat16") == \
        pytest.approx(0.25)
    assert mfu_lib.train_flops_per_clip(10e9) == 60e9
    meter = mfu_lib.MfuMeter(flops_per_step=6e12, num_devices=2, device_kind="TPU v4",
                             peak_per_device=275e12)
    s = meter.scalars(0.5)
    assert s["model_tflops_per_s"] == pytest.approx(12.0)
    assert s["mfu"] == pytest.approx(12.0 / 550)
    assert meter.format(0.5) == "12 TFLOP/s  MFU 2.2%"
    assert "MFU" not in mfu_lib.MfuMeter(6e12, 1, "x", None).format(0.5)


def test_cpu_peak_is_measured():
    peak = mfu_lib.measured_matmul_flops("float32", n=256, repeats=2)
    # Any CPU core of the last decade does 1e8..1e13 f32 FLOP/s on a 256² matmul.
    assert 1e8 < peak < 1e13
    assert mfu_lib.peak_flops("cpu", "float32", "cpu") == mfu_lib.measured_matmul_flops(
        "float32")
