"""Times the RSA layer at the paper's layer-1 shape; prints one JSON line.

Forward and forward+backward (input and parameter gradients) medians for both
implementations, plus peak memory: XLA's compiled memory analysis (temp +
arguments + outputs) on every backend, and the device allocator's peak where
the backend reports one (GPU/TPU).

    python benchmarks/bench_rsa_layer.py [--shape 1,8,56,56,64] [--heads 8] [--repeats 10]

On CPU it also times the H1 convolution and one per-position product in the form
the layer uses against the plain alternative (see `cpu_forms`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from rsa_jax.layers import RSA, conv_forms  # noqa: E402  (repo root on the path)


def median_time(fn, args, repeats: int) -> tuple[float, float]:
    """Median wall seconds and median process CPU seconds (all threads) per call.

    On a shared machine the CPU seconds are the load-robust figure: divided by
    the core count they bound what an idle machine's wall clock would show.
    """
    jax.block_until_ready(fn(*args))  # compile + warm up
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn(*args))
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return float(np.median(wall)), float(np.median(cpu))


def _compiled_bytes(fn, args) -> int:
    mem = fn.lower(*args).compile().memory_analysis()
    if mem is None:
        return -1
    return int(mem.temp_size_in_bytes + mem.argument_size_in_bytes
               + mem.output_size_in_bytes - mem.alias_size_in_bytes)


def cpu_forms(shape, heads, kernel_size, repeats) -> dict:
    """fwd+bwd seconds of the CPU forms against their plain alternatives, same run:
    the H1 grouped convolution as 2-D convolutions ('taps') or in the banded form
    `select_forms` picks, and one per-position product as XLA's batched dot (`pmm`)
    or as `cpu_matmul` (multiply + sum for the tiny shapes where the dot is slow)."""
    b, t, h, w, c = shape
    dk = c // heads
    key = jax.random.key(2)
    k = jax.random.normal(key, (b, t, h, w, dk))
    h1 = jax.random.normal(key, tuple(kernel_size) + (1, dk * dk))
    q = jax.random.normal(key, (b, t, h, w, heads, dk))
    r = jax.random.normal(key, (b, t, h, w, dk, dk))
    form = conv_forms.select_forms("auto", (h, w), kernel_size, dk, platform="cpu").shared_form
    cands = {
        "grouped_taps": (lambda k, h1: conv_forms.grouped_conv_taps(k, h1, dk, None), k, h1),
        f"grouped_{form}": (lambda k, h1: conv_forms.grouped_conv_taps(k, h1, dk, None, form),
                            k, h1),
        "product_batched_dot": (conv_forms.pmm, q, r),
        "product_cpu_matmul": (conv_forms.cpu_matmul, q, r),
    }
    out = {}
    for name, (fn, *args) in cands.items():
        g = jax.jit(jax.grad(lambda *a, fn=fn: jnp.sum(fn(*a) ** 2), argnums=(0, 1)))
        out[f"{name}_fwd_bwd_s"] = median_time(g, tuple(args), repeats)[0]
    return out


def bench(shape, kernel_size, repeats, dtype, heads=8) -> dict:
    b, t, h, w, c = shape
    x = jax.random.normal(jax.random.key(0), shape, dtype)
    out = {}
    for impl in ("conv", "patches"):
        model = RSA(features=c, num_heads=heads, kernel_size=kernel_size, implementation=impl,
                    dtype=dtype)
        params = model.init(jax.random.key(1), x)["params"]
        def forward(p, x, model=model):
            return model.apply({"params": p}, x)

        def loss(p, x, model=model):
            y = model.apply({"params": p}, x)
            return jnp.sum(y.astype(jnp.float32) ** 2)

        fwd_bwd = jax.jit(jax.grad(loss, argnums=(0, 1)))
        fwd_s, fwd_cpu = median_time(jax.jit(forward), (params, x), repeats)
        fb_s, fb_cpu = median_time(fwd_bwd, (params, x), repeats)
        out[impl] = {
            "fwd_s": fwd_s, "fwd_bwd_s": fb_s, "fwd_cpu_s": fwd_cpu, "fwd_bwd_cpu_s": fb_cpu,
            "fwd_bwd_compiled_bytes": _compiled_bytes(fwd_bwd, (params, x)),
        }
        stats = jax.devices()[0].memory_stats() or {}
        if "peak_bytes_in_use" in stats:
            out[impl]["device_peak_bytes"] = int(stats["peak_bytes_in_use"])
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="1,8,56,56,64")
    ap.add_argument("--kernel", default="5,7,7")
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = ap.parse_args()
    shape = tuple(int(s) for s in args.shape.split(","))
    ks = tuple(int(s) for s in args.kernel.split(","))
    res = bench(shape, ks, args.repeats, jnp.dtype(args.dtype), args.heads)
    official = {"fwd_s": 0.238, "fwd_bwd_s": 0.770}  # official PyTorch layer, 2 CPU threads
    best = min(res, key=lambda k: res[k]["fwd_bwd_s"])
    line = {
        "bench": "rsa_layer", "shape": shape, "kernel_size": ks, "dtype": args.dtype,
        "num_heads": args.heads,
        "device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
        "cpu": platform.processor() or platform.machine(), "jax": jax.__version__,
        **{f"{impl}_{k}": v for impl, r in res.items() for k, v in r.items()},
        "fastest": best, "cpu_count": os.cpu_count(), "load_avg_1min": os.getloadavg()[0],
    }
    if jax.default_backend() == "cpu":
        line.update(cpu_forms(shape, args.heads, ks, args.repeats))
        line["official_cpu_fwd_bwd_s"] = official["fwd_bwd_s"]
        line["ratio_fastest_vs_official_fwd_bwd"] = res[best]["fwd_bwd_s"] / official["fwd_bwd_s"]
    print(json.dumps(line))


if __name__ == "__main__":
    main()
