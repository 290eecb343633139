"""One table of accelerator chips: peak FLOP/s, HBM bandwidth and HBM capacity.

Read by `rsa_jax.aot` (roofline step times, does a batch fit) and by
`rsa_jax.train.mfu` (MFU against the peak).  Figures are per chip, dense (no
structured sparsity: sparsity figures / 2), from the vendors' pages:

* Cloud TPU system architecture pages (cloud.google.com/tpu/docs/v4, /v5e, /v5p,
  /v6e): bf16 TFLOP/s 275 / 197 / 459 / 918; HBM 32 GiB at 1,200 GB/s (v4), 16 GiB at
  819 GB/s (v5e), 95 GiB at 2,765 GB/s (v5p), 32 GiB at 1,640 GB/s (v6e).  A float32
  matmul at XLA's default precision runs as one bf16 MXU pass, so its peak is the
  bf16 one.
* NVIDIA datasheets: H100 SXM BF16 1,979 / TF32 989 TFLOPS with sparsity, 80 GB
  HBM3 at 3.35 TB/s; H100 PCIe 1,513 / 756 with sparsity, 80 GB at 2.0 TB/s; H200
  SXM 1,979 / 989 with sparsity, 141 GB HBM3e at 4.8 TB/s; A100 SXM 80 GB BF16 312
  / TF32 156 dense, 2,039 GB/s; L4 BF16 242 / TF32 120 with sparsity, 24 GB at 300
  GB/s.  The float32 peak is TF32's: what XLA's default precision runs on Ampere
  and later.

JAX names v5e "TPU v5 lite", v6e "TPU v6 lite" and v5p "TPU v5" (device_kind).
"""

from __future__ import annotations

import dataclasses
import re

GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
    """One accelerator chip.

    Attributes:
      name: short name ('v5e', 'h100').
      kind_pattern: regex matching jax's ``device.device_kind``.
      bf16_tflops, f32_tflops: dense peak TFLOP/s of bf16 and default-precision f32.
      hbm_gbps: HBM bandwidth, GB/s (1e9 bytes).
      hbm_bytes: HBM capacity, bytes.
    """

    name: str
    kind_pattern: str
    bf16_tflops: float
    f32_tflops: float
    hbm_gbps: float
    hbm_bytes: int

    def peak_flops(self, dtype: str) -> float:
        """Peak FLOP/s for compute in `dtype` ('bfloat16' or 'float32')."""
        return 1e12 * (self.f32_tflops if dtype == "float32" else self.bf16_tflops)

    def roofline_seconds(self, flops: float, hbm_bytes: float, dtype: str) -> float:
        """max(FLOPs / peak, bytes / bandwidth): the shortest time the chip can take."""
        return max(flops / self.peak_flops(dtype), hbm_bytes / (1e9 * self.hbm_gbps))


# First match wins: more specific patterns come first.
CHIPS: tuple[Chip, ...] = (
    Chip("h200", r"H200", 989.5, 494.7, 4800.0, 141 * 10 ** 9),
    Chip("h100-pcie", r"H100.*PCIe", 756.5, 378.0, 2000.0, 80 * 10 ** 9),
    Chip("h100", r"H100", 989.5, 494.7, 3350.0, 80 * 10 ** 9),
    Chip("a100", r"A100", 312.0, 156.0, 2039.0, 80 * 10 ** 9),
    Chip("l4", r"\bL4\b", 121.0, 60.0, 300.0, 24 * 10 ** 9),
    Chip("v5e", r"TPU v5 ?lite|TPU v5e", 197.0, 197.0, 819.0, 16 * GIB),
    Chip("v6e", r"TPU v6 ?lite|TPU v6e", 918.0, 918.0, 1640.0, 32 * GIB),
    Chip("v5p", r"TPU v5p?\b", 459.0, 459.0, 2765.0, 95 * GIB),
    Chip("v4", r"TPU v4", 275.0, 275.0, 1200.0, 32 * GIB),
)
TPU_GENERATIONS = ("v4", "v5e", "v5p", "v6e")


def chip_for(device_kind: str) -> Chip | None:
    """The `CHIPS` entry whose pattern matches a jax ``device_kind``, or None."""
    for chip in CHIPS:
        if re.search(chip.kind_pattern, device_kind, re.IGNORECASE):
            return chip
    return None


def by_name(name: str) -> Chip:
    """The chip called `name` ('v5e', 'h100', ...).

    Raises:
      KeyError: naming the known chips.
    """
    for chip in CHIPS:
        if chip.name == name.lower():
            return chip
    raise KeyError(f"unknown chip {name!r}; known: {', '.join(c.name for c in CHIPS)}")
