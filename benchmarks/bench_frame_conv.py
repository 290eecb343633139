"""Times the ResNet's per-frame convolutions: XLA's convolution against im2col.

    python benchmarks/bench_frame_conv.py                 # the CPU demo's shapes
    python benchmarks/bench_frame_conv.py --frames 128 --shapes 2x128x128x1,3x64x64x1

Each shape is HxCinxCoutxStride for a 3×3 convolution (``--kernel`` to change) on
``--frames`` frames of H×H (the demo: 16 clips × 8 frames at 48², so stages 1-4 see
12², 6², 3², 2²). For each it prints one JSON line with the fwd+bwd seconds (gradients
of input and weight) of ``lax.conv_general_dilated`` and of `conv2d_im2col`, measured
in the same run, their ratio, and whether `use_im2col` picks im2col for that shape on
this backend. Medians of ``--repeats`` runs after one warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
from jax import lax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench_rsa_layer import median_time  # noqa: E402  (benchmarks/ is on the path)

from rsa_jax.layers.frame_ops import conv2d_im2col, use_im2col  # noqa: E402

DEMO_SHAPES = "12x16x16x1,12x16x32x2,6x32x32x1,6x32x64x2,3x64x64x1,3x64x128x2,2x128x128x1"


def bench(frames: int, h: int, c_in: int, c_out: int, stride: int, k: int,
          repeats: int) -> dict:
    x = jax.random.normal(jax.random.key(0), (frames, h, h, c_in))
    w = jax.random.normal(jax.random.key(1), (k, k, c_in, c_out)) * 0.1

    def native(x, w):
        return lax.conv_general_dilated(x, w, (stride, stride), [(k // 2, k // 2)] * 2,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def im2col(x, w):
        return conv2d_im2col(x, w, (stride, stride))

    out = {"bench": "frame_conv", "platform": jax.devices()[0].platform,
           "frames": frames, "h": h, "c_in": c_in, "c_out": c_out, "kernel": k,
           "stride": stride}
    for name, f in (("native", native), ("im2col", im2col)):
        grad = jax.jit(jax.grad(lambda x, w, f=f: jnp.sum(f(x, w) ** 2), argnums=(0, 1)))
        out[f"{name}_fwd_bwd_s"] = round(median_time(grad, (x, w), repeats)[0], 5)
    out["native_over_im2col"] = round(out["native_fwd_bwd_s"] / out["im2col_fwd_bwd_s"], 2)
    out["picks_im2col"] = use_im2col((h, h), (k, k), (stride, stride))
    out["load_avg_1min"] = round(os.getloadavg()[0], 2)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=128)
    p.add_argument("--shapes", default=DEMO_SHAPES)
    p.add_argument("--kernel", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args()
    for spec in args.shapes.split(","):
        h, c_in, c_out, stride = (int(v) for v in spec.split("x"))
        print(json.dumps(bench(args.frames, h, c_in, c_out, stride, args.kernel,
                               args.repeats)), flush=True)


if __name__ == "__main__":
    main()
