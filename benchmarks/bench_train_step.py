"""Times one full train step (forward, loss, backward, optax update) of RSA-R50.

    python benchmarks/bench_train_step.py                       # 1×8×224² float32 (CPU figure)
    python benchmarks/bench_train_step.py --batch 16 --frames 16 --dtype bfloat16   # GPU figure
    python benchmarks/bench_train_step.py --input_dtype uint8   # raw pixels, normalised on device

Every timed step starts from the host batch (numpy), so the step time includes the
host→device copy of ``input_bytes`` (4× fewer with ``--input_dtype uint8``, the
data pipeline's ``uint8_output``; the step then normalises on the device).
Prints one JSON line: compile time, median step time, time per clip, clips/s and
peak memory (XLA's buffer assignment for the step: arguments + temporaries, and
the process's max RSS on CPU / the device's peak bytes on GPU). Official
reference (docs/training.md#compute): 4.12 s fwd+bwd per 1×8×224² clip, 1.77 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import ssv2  # noqa: E402
from rsa_jax import parallel  # noqa: E402
from rsa_jax.data import transforms  # noqa: E402
from rsa_jax.train import train  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--implementation", default="conv")
    p.add_argument("--steps", type=int, default=7)
    p.add_argument("--input_dtype", default="float32", choices=("float32", "uint8"),
                   help="uint8: raw pixels (data.uint8_output), normalised in the step")
    args = p.parse_args()

    c = ssv2.get_config(str(args.frames))
    c.data.image_size = args.size
    c.global_batch_size = args.batch
    c.model.dtype = args.dtype
    c.model.rsa["implementation"] = args.implementation
    mesh = parallel.create_mesh({"data": 1}, jax.devices()[:1])
    state, _, train_fn, _ = train.setup(c, mesh, steps_per_epoch=100)
    rng = np.random.RandomState(0)
    shape = (args.batch, args.frames, args.size, args.size, 3)
    video = rng.randint(0, 256, shape).astype(np.uint8)
    if args.input_dtype == "float32":
        video = transforms.normalize(video)
    host_batch = {"video": video, "label": rng.randint(0, 174, args.batch).astype(np.int32)}
    batch = parallel.shard_batch(host_batch, mesh)

    t0 = time.perf_counter()
    compiled = train_fn.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    xla_bytes = (mem.argument_size_in_bytes + mem.output_size_in_bytes
                 + mem.temp_size_in_bytes - mem.alias_size_in_bytes) if mem else None
    state, m = compiled(state, batch)          # warm-up
    jax.block_until_ready(m)
    times, cpu, put = [], [], []
    for _ in range(args.steps):
        t, c = time.perf_counter(), time.process_time()
        batch = jax.block_until_ready(parallel.shard_batch(host_batch, mesh))
        put.append(time.perf_counter() - t)
        state, m = compiled(state, batch)
        jax.block_until_ready((state.params, m))
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    step_s = statistics.median(times)
    dev = jax.devices()[0]
    stats = dev.memory_stats() or {}
    out = {"model": "RSA-R50", "device": dev.device_kind, "platform": dev.platform,
           "batch": args.batch, "frames": args.frames, "size": args.size,
           "dtype": args.dtype, "implementation": args.implementation,
           "input_dtype": args.input_dtype, "input_bytes": int(video.nbytes),
           "host_to_device_s": round(statistics.median(put), 5),
           "compile_s": round(compile_s, 2), "step_s": round(step_s, 4),
           "step_s_per_clip": round(step_s / args.batch, 4),
           "step_s_min": round(min(times), 4), "step_s_max": round(max(times), 4),
           "step_cpu_s": round(statistics.median(cpu), 3),
           "load_avg_1min": round(os.getloadavg()[0], 2),
           "clips_per_s": round(args.batch / step_s, 2),
           "xla_peak_gib": round(xla_bytes / 2**30, 3) if xla_bytes else None,
           "device_peak_gib": round(stats["peak_bytes_in_use"] / 2**30, 3)
           if "peak_bytes_in_use" in stats else None,
           "max_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
           "loss": float(m.compute()["loss"]),
           "official_cpu_ref": {"fwd_bwd_s_per_clip": 4.12, "peak_gib": 1.77}}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
