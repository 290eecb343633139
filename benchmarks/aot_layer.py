"""One RSA layer compiled for a TPU chip: FLOPs, HBM bytes, temporaries, roofline.

    python benchmarks/aot_layer.py --strategies native,flat [--shape 1,16,56,56,64] \\
        [--chip v5e] [--fwd_only] [--top 8]

Compiles forward + backward (gradients w.r.t. parameters and input, as in training)
of `rsa_jax.layers.RSA` at the paper's settings (8 heads, 5×7×7, VplusR/VplusR) for
one chip of `--chip` through libtpu's compile-only client (`rsa_jax.aot`), once per
``conv_strategy``, and prints one JSON line each: the compiler's FLOPs and bytes
accessed, temporaries, the roofline time max(FLOPs / peak, bytes / bandwidth)
(`rsa_jax.chips`), and the ``--top`` fusions of the optimised HLO by the bytes of
their results.  The default shape is layer1's input in RSA-R50 at 16×224².
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

TOPOLOGY = {"v4": "v4:1x1x1", "v5e": "v5e:1x1", "v5p": "v5p:1x1x1", "v6e": "v6e:1x1"}


def compile_layer(strategy: str, shape: tuple[int, ...], chip_name: str, fwd_only: bool,
                  dtype: str = "bfloat16", top: int = 8) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from rsa_jax import aot, chips
    from rsa_jax.layers import RSA
    from rsa_jax.train import compiled
    devices = aot.topology_devices(TOPOLOGY[chip_name])[:1]
    impl, _, variant = strategy.partition("/")
    layer = RSA(features=shape[-1], num_heads=8, kernel_size=(5, 7, 7),
                implementation=impl if variant else "conv",
                conv_strategy=(variant or strategy) if impl != "patches" else "auto",
                patch_op=variant if impl == "patches" else "auto",
                dtype=jnp.dtype(dtype), platform="tpu")
    x = jax.ShapeDtypeStruct(shape, jnp.dtype(dtype))
    params = jax.eval_shape(layer.init, jax.random.PRNGKey(0), x)
    rep = NamedSharding(Mesh(np.array(devices), ("data",)), P())
    if fwd_only:
        def fn(p, x):
            return layer.apply(p, x)
    else:
        def fn(p, x):
            return jax.grad(lambda p, x: layer.apply(p, x).astype(jnp.float32).sum(),
                            argnums=(0, 1))(p, x)
    t0 = time.perf_counter()
    c = jax.jit(fn, in_shardings=(rep, rep)).lower(params, x).compile()
    rep_ = compiled.report_of(c, 1, 1, time.perf_counter() - t0)
    chip = chips.by_name(chip_name)
    return {"bench": "aot_layer", "strategy": strategy, "chip": chip_name,
            "shape": list(shape), "dtype": dtype, "pass": "fwd" if fwd_only else "fwd+bwd",
            "flops": rep_.flops, "hbm_bytes": rep_.hbm_bytes, "intensity": rep_.intensity,
            "temp_bytes": rep_.temp_bytes,
            "roofline_ms": 1e3 * chip.roofline_seconds(rep_.flops, rep_.hbm_bytes, dtype),
            "compute_ms": 1e3 * rep_.flops / chip.peak_flops(dtype),
            "compile_s": round(rep_.compile_s, 1),
            "top_fusions": compiled.largest_fusions(c.as_text(), top)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--strategies", default="native")
    p.add_argument("--shape", default="1,16,56,56,64")
    p.add_argument("--chip", default="v5e", choices=sorted(TOPOLOGY))
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--fwd_only", action="store_true")
    p.add_argument("--top", type=int, default=8)
    a = p.parse_args()
    from rsa_jax import aot
    aot.set_compile_only_env()
    shape = tuple(int(s) for s in a.shape.split(","))
    for s in a.strategies.split(","):
        print(json.dumps(compile_layer(s, shape, a.chip, a.fwd_only, a.dtype, a.top)),
              flush=True)


if __name__ == "__main__":
    main()
