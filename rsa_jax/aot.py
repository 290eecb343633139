"""``python -m rsa_jax.aot``: compile the real train step for TPU chips from any host.

    python -m rsa_jax.aot --config configs/ssv2.py --topology v5p:2x2x1 \\
        [--per_chip_batch N | --fit] [--config.model.remat=block] [--json]

libtpu's compile-only client (the ``libtpu`` wheel that ``jax[tpu]`` pins) describes
the chips of a TPU slice — a single host's or a pod's of many hosts — without any TPU
attached (`jax.experimental.topologies`).  The step is `train.compiled.compile_step`:
exactly what ``python -m rsa_jax.main`` would run on that slice.  The report gives,
per chip: HBM use against the chip's capacity; FLOPs, HBM bytes and arithmetic
intensity; the roofline step time max(FLOPs / peak, bytes / bandwidth) with the
clips/s it implies; the collectives; and the compile time.  ``--fit`` finds the
largest per-chip batch that fits.
See docs/benchmarks.md#checking-a-pod-configuration-from-a-laptop.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import sys
from typing import Any

# libtpu's start-up probes for TPU hardware (GCE metadata, worker addresses) unless
# told where it is; a compile-only client needs none.  The lock file guards a real
# TPU against two processes: compile-only processes may share the host.
COMPILE_ONLY_ENV = {"TPU_SKIP_MDS_QUERY": "1", "TPU_ACCELERATOR_TYPE": "v5litepod-4",
                    "TPU_WORKER_HOSTNAMES": "localhost", "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}
LIBTPU_PIN = "libtpu==0.0.42.*"
# Examples of slice shapes; any <generation>:<chips per axis> that tiles whole hosts
# (2x2 chips, 2x2x1 for v4 / v5p) or fits one host works.
KNOWN_TOPOLOGIES = ("v4:2x2x1", "v4:4x4x4", "v5e:1x1", "v5e:2x2", "v5e:4x4", "v5e:16x16",
                    "v5p:2x2x1", "v5p:4x4x4", "v5p:8x8x8", "v6e:1x1", "v6e:2x2", "v6e:16x16")


# Deviceless GPU compiles (jax's CUDA plugin, `topologies.get_topology_desc(platform=
# "cuda", target_config=...)`): the device description XLA compiles for.  H100 SXM
# figures from NVIDIA's datasheet and CUDA's device query (132 SMs, 80 GB HBM3 at
# 3.35 TB/s, compute capability 9.0).
GPU_TARGETS = {"h100": """gpu_device_info {
  threads_per_block_limit: 1024 threads_per_warp: 32
  shared_memory_per_block: 49152 shared_memory_per_core: 233472
  threads_per_core_limit: 2048 core_count: 132 fpus_per_core: 128
  block_dim_limit_x: 2147483647 block_dim_limit_y: 65535 block_dim_limit_z: 65535
  memory_bandwidth: 3352320000000 l2_cache_size: 52428800 clock_rate_ghz: 1.98
  device_memory_size: 84929347584 shared_memory_per_block_optin: 232448
  cuda_compute_capability { major: 9 minor: 0 }
  registers_per_core_limit: 65536 registers_per_block_limit: 65536
}
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 8 patch: 0 }
device_description_str: "NVIDIA H100 80GB HBM3"
"""}
# XLA's Triton GEMM fusion aborts on the step's strided 1×1 convolutions (a CHECK in
# triton_tiling_propagation, reported upstream for real GPUs too); cuBLAS does them.
GPU_XLA_FLAG = "--xla_gpu_enable_triton_gemm=false"


class AotError(Exception):
    """A mistake in the request: one line, no traceback."""


def set_compile_only_env() -> None:
    """Environment for libtpu's compile-only client; keeps a user's own settings."""
    for key, value in COMPILE_ONLY_ENV.items():
        os.environ.setdefault(key, value)


def topology_devices(topology: str) -> list[Any]:
    """The devices of a TPU slice such as 'v5e:2x2' or 'v5p:4x4x4', from libtpu.

    Raises:
      AotError: libtpu is not installed, or `topology` is not one libtpu knows.
    """
    from rsa_jax import chips
    if importlib.util.find_spec("libtpu") is None:
        raise AotError(f"libtpu is not installed; it brings the TPU compiler: "
                       f"pip install '{LIBTPU_PIN}' (the version jax[tpu] pins for this jax)")
    m = re.fullmatch(r"(v\d+[a-z]*):(\d+(?:x\d+){1,2})", topology)
    if m is None or m.group(1) not in chips.TPU_GENERATIONS:
        raise AotError(_unknown(topology))
    set_compile_only_env()
    import jax
    from jax.experimental import topologies
    dims = tuple(int(n) for n in m.group(2).split("x"))
    kwargs = {}
    if all(n == 1 for n in dims):        # smaller than libtpu's default host (2x2x1)
        kwargs["chips_per_host_bounds"] = (1, 1, 1)
    try:
        return list(topologies.get_topology_desc(topology_name=topology, platform="tpu",
                                                 **kwargs).devices)
    except jax.errors.JaxRuntimeError as e:
        raise AotError(f"{_unknown(topology)} (libtpu: {str(e).splitlines()[0]})") from None


def has_module(name: str) -> bool:
    """Whether `name` (dotted) can be imported, without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:          # a parent package is missing
        return False


def gpu_devices(gpu: str, topology: str) -> list[Any]:
    """Devices of `topology` GPUs of kind `gpu`, ``'<partitions>x<hosts>x<GPUs per
    host>'`` (e.g. '1x1x8': one 8-GPU host), described without a GPU.

    Raises:
      AotError: an unknown GPU or topology, or no CUDA plugin for this jax.
    """
    import jax
    if gpu not in GPU_TARGETS:
        raise AotError(f"unknown GPU {gpu!r}; known: {', '.join(sorted(GPU_TARGETS))}")
    if not re.fullmatch(r"\d+x\d+x\d+", topology):
        raise AotError(f"a GPU topology is <partitions>x<hosts>x<GPUs per host>, e.g. 1x1x8; "
                       f"got {topology!r}")
    if not has_module("jax_plugins.xla_cuda12"):
        raise AotError(
            f"jax's CUDA plugin is not installed; in a separate environment: pip install "
            f"--no-deps jax-cuda12-plugin=={jax.__version__} jax-cuda12-pjrt=={jax.__version__}"
            f" (and nvidia-cuda-nvcc-cu12 where no CUDA toolkit provides ptxas)")
    if GPU_XLA_FLAG not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {GPU_XLA_FLAG}".strip()
    from jax.experimental import topologies
    return list(topologies.get_topology_desc(platform="cuda", topology=topology,
                                             target_config=GPU_TARGETS[gpu]).devices)


def _unknown(topology: str) -> str:
    return (f"unknown TPU topology {topology!r}: use <generation>:<chips per axis> with "
            f"generation v4, v5e, v5p or v6e, e.g. {', '.join(KNOWN_TOPOLOGIES)}")


def chip_layout(devices: list[Any]) -> tuple[int, int]:
    """(chips, devices per chip): libtpu describes each v4 TensorCore as a device."""
    coords = {tuple(getattr(d, "coords", (i,))) for i, d in enumerate(devices)}
    return len(coords), len(devices) // len(coords)


def summary(report: Any, chip: Any, per_chip: int, dtype: str, topology: str,
            config: Any) -> dict:
    """The report as one JSON-able dict, per chip (v4: both TensorCores' programs)."""
    n = per_chip
    flops, hbm = report.flops * n, report.hbm_bytes * n
    compute = flops / chip.peak_flops(dtype)
    # Without HBM bytes (GPU compiles) the roofline is the compute time, a lower bound.
    roof = compute if math.isnan(hbm) else chip.roofline_seconds(flops, hbm, dtype)
    clips = report.per_chip_batch * n
    return {
        "topology": topology, "chip": chip.name, "chips": report.chips // n, "dtype": dtype,
        "frames": int(config.data.num_frames), "image_size": int(config.data.image_size),
        "backbone": str(config.model.get("backbone", "rsa")),
        "remat": str(config.model.get("remat", "none")), "per_chip_batch": clips,
        "global_batch": clips * (report.chips // n), "compile_s": round(report.compile_s, 1),
        "hbm": {"arguments": report.argument_bytes * n, "temporaries": report.temp_bytes * n,
                "outputs": report.output_bytes * n, "aliased": report.alias_bytes * n,
                "code": report.code_bytes * n, "total": report.hbm_total * n,
                "capacity": chip.hbm_bytes},
        "temp_per_clip": report.temp_bytes * n / clips,
        "flops": flops, "hbm_bytes": hbm, "intensity": report.intensity,
        "chip_balance": chip.peak_flops(dtype) / (1e9 * chip.hbm_gbps),
        "roofline_s": roof, "compute_s": compute,
        "bound": "unknown" if math.isnan(hbm) else "compute" if compute >= roof else "HBM",
        "clips_per_s_chip": clips / roof, "clips_per_s_slice": clips / roof * (report.chips // n),
        "collectives": report.collectives,
    }


def _gib(x: float) -> str:
    return f"{x / 2 ** 30:.2f} GiB"


def format_summary(s: dict) -> str:
    """The human-readable report of `summary`."""
    h = s["hbm"]
    coll = ", ".join(f"{k} ×{v['count']} ({v['bytes'] / 1e6:.1f} MB)"
                     for k, v in sorted(s["collectives"].items())) or "none"
    return "\n".join([
        f"{s['topology']}: {s['chips']} × {s['chip']}, per-chip batch {s['per_chip_batch']} "
        f"(global {s['global_batch']}), {s['backbone']} {s['frames']}×{s['image_size']}², "
        f"{s['dtype']}, remat {s['remat']}; compiled in {s['compile_s']:.0f} s",
        f"  HBM per chip   {_gib(h['total'])} of {_gib(h['capacity'])} "
        f"({100 * h['total'] / h['capacity']:.0f} %): arguments {_gib(h['arguments'])}, "
        f"temporaries {_gib(h['temporaries'])}, outputs {_gib(h['outputs'])}, "
        f"aliased {_gib(h['aliased'])}, code {_gib(h['code'])}",
        f"  per clip       temporaries {_gib(s['temp_per_clip'])}",
        f"  cost per chip  {s['flops'] / 1e9:.1f} GFLOP, {s['hbm_bytes'] / 1e9:.2f} GB HBM: "
        f"{s['intensity']:.1f} FLOP/byte (the chip's balance point: "
        f"{s['chip_balance']:.0f})" if not math.isnan(s["hbm_bytes"]) else
        f"  cost per chip  {s['flops'] / 1e9:.1f} GFLOP (this compiler gives no HBM bytes: "
        f"the roofline below is the compute time alone)",
        (f"  roofline       {1e3 * s['roofline_s']:.2f} ms/step, {s['bound']}-bound "
         f"(compute alone {1e3 * s['compute_s']:.2f} ms)" if s["bound"] != "unknown" else
         f"  roofline       ≥ {1e3 * s['roofline_s']:.2f} ms/step (compute alone)")
        + f": {s['clips_per_s_chip']:.1f} clips/s per chip, {s['clips_per_s_slice']:.1f} per slice",
        f"  collectives    {coll}",
    ])


def run(config: Any, topology: str, per_chip_batch: int | None = None,
        fit: bool = False, devices: list[Any] | None = None) -> dict:
    """Compiles the train step of `config` for `topology`; returns `summary`'s dict,
    with ``'fit'`` (largest per-chip batch, the batches tried) when `fit`.

    Raises:
      AotError: libtpu missing, unknown topology, a batch that does not divide or
        does not fit (without `fit`).
    """
    from rsa_jax import chips
    from rsa_jax.train import compiled
    devices = devices if devices is not None else topology_devices(topology)
    n_chips, per_chip = chip_layout(devices)
    chip = chips.chip_for(devices[0].device_kind)
    if chip is None:
        raise AotError(f"no peak/HBM figures for device kind {devices[0].device_kind!r} "
                       f"(rsa_jax/chips.py)")
    dtype = "bfloat16" if str(config.model.get("dtype", "float32")) == "bfloat16" else "float32"
    step = compiled.batch_step(config, len(devices))

    def compile_at(clips_per_chip: int) -> Any:
        if clips_per_chip % per_chip:
            raise ValueError(f"per-chip batch {clips_per_chip} must be a multiple of the "
                             f"{per_chip} TensorCores libtpu describes per {chip.name} chip")
        report = compiled.compile_step(config, devices, clips_per_chip // per_chip)
        if report.hbm_total > chip.hbm_bytes / per_chip:   # GPU compilers do not refuse
            raise compiled.DoesNotFit(
                clips_per_chip, report.hbm_total, chip.hbm_bytes,
                f"it needs {report.hbm_total / 2 ** 30:.2f} GiB per chip of "
                f"{chip.hbm_bytes / 2 ** 30:.2f} GiB")
        return report

    try:
        if fit:
            best, tried = compiled.largest_batch(
                lambda b: compile_at(b * per_chip), step, chip.hbm_bytes / per_chip)
            if best == 0:
                raise AotError(f"{tried[step]} on {topology} with this config; try "
                               f"--config.model.remat=block or a larger slice")
            out = summary(tried[best], chip, per_chip, dtype, topology, config)
            out["fit"] = {"largest_per_chip_batch": best * per_chip,
                          "tried": {b * per_chip: isinstance(r, compiled.StepReport)
                                    for b, r in sorted(tried.items())}}
            return out
        if per_chip_batch is None:
            gb = int(config.global_batch_size)
            if gb % n_chips:
                raise AotError(f"global_batch_size {gb} does not divide over the {n_chips} "
                               f"chips of {topology}: pass --per_chip_batch")
            per_chip_batch = gb // n_chips
        return summary(compile_at(per_chip_batch), chip, per_chip, dtype, topology, config)
    except compiled.DoesNotFit as e:
        raise AotError(f"{topology}: {e}; --fit finds the largest per-chip batch that "
                       f"fits") from None
    except ValueError as e:
        raise AotError(str(e)) from None


def main(argv: list[str]) -> None:
    del argv
    from absl import flags
    flags_ = flags.FLAGS
    if flags_.fit and flags_.per_chip_batch is not None:
        sys.exit("FATAL: pass --per_chip_batch or --fit, not both")
    try:
        devices = gpu_devices(flags_.gpu, flags_.topology) if flags_.gpu else None
        out = run(flags_.config, f"{flags_.gpu}:{flags_.topology}" if flags_.gpu
                  else flags_.topology, flags_.per_chip_batch, flags_.fit, devices)
    except AotError as e:
        sys.exit(f"FATAL: {e}")
    if flags_.json:
        print(json.dumps(out, sort_keys=True), flush=True)
        return
    print(format_summary(out), flush=True)
    if "fit" in out:
        print(f"  fit            largest per-chip batch {out['fit']['largest_per_chip_batch']} "
              f"(compiled: {out['fit']['tried']})", flush=True)


def _define_flags() -> None:
    from absl import flags
    from ml_collections import config_flags
    config_flags.DEFINE_config_file("config", None, "Training configuration file.",
                                    lock_config=True)
    flags.DEFINE_string("topology", None, "TPU slice, e.g. v5e:2x2, v5p:2x2x1, v5p:4x4x4.")
    flags.DEFINE_integer("per_chip_batch", None,
                         "Clips per chip per step (default: global_batch_size / chips).")
    flags.DEFINE_bool("fit", False, "Find the largest per-chip batch that fits in HBM.")
    flags.DEFINE_bool("json", False, "Print one JSON line instead of the report.")
    flags.DEFINE_string("gpu", None, "Compile for GPUs of this kind instead (h100); "
                        "--topology is then <partitions>x<hosts>x<GPUs per host>.")
    flags.mark_flags_as_required(["config", "topology"])


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")   # the host's own devices: CPU only
    set_compile_only_env()
    from absl import app
    _define_flags()
    app.run(main)
