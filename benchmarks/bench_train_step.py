"""Times one full train step (forward, loss, backward, optax update) of RSA-R50.

    python benchmarks/bench_train_step.py                       # 1×8×224² float32 (CPU figure)
    python benchmarks/bench_train_step.py --batch 16 --frames 16 --dtype bfloat16   # GPU figure
    python benchmarks/bench_train_step.py --input_dtype uint8   # raw pixels, normalised on device
    python benchmarks/bench_train_step.py --remat block --compile_only --batch 8 --frames 16
    python benchmarks/bench_train_step.py --remat none,rsa,block --frames 4 --size 112 --batch 2
    python benchmarks/bench_train_step.py --config synthetic --batch 16 --frames 8 --size 48 \
        --im2col_max_positions 36,0               # the CPU demo's net, with / without im2col

``--compile_only`` builds the state abstractly (no initialisation, no step run)
and prints XLA's compiled memory analysis of the step (``temp_bytes``,
``argument_bytes``, ``output_bytes``, ``alias_bytes``) and the compile seconds;
``--remat`` sets ``model.remat`` (none | rsa | block, docs/benchmarks.md); a comma list
runs each setting in turn in this process (one JSON line each), so their ratios come
from one run. ``--backbone tsn2d`` measures the plain 2-D ResNet instead.

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
import re
import resource
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import ssv2, synthetic  # noqa: E402
from rsa_jax import parallel  # noqa: E402
from rsa_jax.data import transforms  # noqa: E402
from rsa_jax.layers import frame_ops  # noqa: E402
from rsa_jax.models import build_model  # noqa: E402
from rsa_jax.train import optim, train  # noqa: E402
from rsa_jax.train import step as step_lib

# XLA:CPU spends most of a compile in LLVM code generation; buffer assignment (the
# memory analysis) is decided before it, so a memory-only compile can skip it.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def compile_step(c, mesh, batch: int, compiler_options: dict | None = None,
                 input_dtype: str = "float32"):
    """Compiles the train step against abstract state and batch (nothing initialised).

    Returns:
      (compiled step, compile seconds); the seconds include tracing and lowering.
    """
    t0 = time.perf_counter()
    model = build_model(c.model)
    tx = optim.create_optimizer(c, 100)
    shape = (1, c.data.num_frames, c.data.image_size, c.data.image_size, 3)
    abstract = jax.eval_shape(
        lambda r: step_lib.init_state(model, tx, r, input_shape=shape), jax.random.PRNGKey(0))
    shardings = parallel.tree_shardings(mesh, abstract, [], 0)
    train_fn, _ = step_lib.compile_steps(
        mesh, shardings, learning_rate_fn=optim.lr_schedule(c, 100),
        label_smoothing=c.label_smoothing, grad_accum_steps=c.grad_accum_steps)
    data_sh = parallel.data_sharding(mesh)

    def sds(shape, dtype):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=data_sh)

    batch_spec = {"video": sds((batch,) + shape[1:], np.dtype(input_dtype)),
                  "label": sds((batch,), np.int32)}
    compiled = train_fn.lower(abstract, batch_spec).compile(compiler_options=compiler_options)
    return compiled, time.perf_counter() - t0


def compile_only_line(c, mesh, args) -> dict:
    """The --compile_only JSON record: compiled memory analysis + compile seconds."""
    compiled, compile_s = compile_step(c, mesh, args.batch,
                                       FAST_COMPILE if args.fast_compile else None,
                                       args.input_dtype)
    mem = compiled.memory_analysis()
    dev = jax.devices()[0]
    hlo = compiled.as_text() or ""
    return {"bench": "train_step_compile", "model": _model_name(c), "device": dev.device_kind,
            "platform": dev.platform, "batch": args.batch, "frames": args.frames,
            "size": args.size, "dtype": args.dtype, "remat": args.remat,
            "implementation": args.implementation, "compile_s": round(compile_s, 2),
            "temp_bytes": int(mem.temp_size_in_bytes),
            "argument_bytes": int(mem.argument_size_in_bytes),
            "output_bytes": int(mem.output_size_in_bytes),
            "alias_bytes": int(mem.alias_size_in_bytes),
            # convolution instructions left after XLA's optimisation: remat adds the
            # recomputed forward ones unless the compiler merged them away again
            "hlo_convolutions": len(re.findall(r"\bconvolution\(", hlo)),
            "fast_compile": bool(args.fast_compile),
            "load_avg_1min": round(os.getloadavg()[0], 2)}


def _model_name(c) -> str:
    name = f"{'RSA' if c.model.backbone == 'rsa' else c.model.backbone.upper()}-R{c.model.depth}"
    return name if c.model.width == 64 else f"{name}-w{c.model.width}"


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
    p.add_argument("--remat", default="none",
                   help="none | rsa | block, or a comma list of them (one line each)")
    p.add_argument("--backbone", default="rsa", choices=["rsa", "tsn2d", "tsn3d"])
    p.add_argument("--config", default="ssv2", choices=["ssv2", "synthetic"],
                   help="synthetic: the CPU demo's net (configs/synthetic.py)")
    p.add_argument("--width", type=int, default=None, help="override model.width")
    p.add_argument("--heads", type=int, default=None, help="override model.rsa.num_heads")
    p.add_argument("--im2col_max_positions", default=None,
                   help="CPU im2col threshold (frame_ops.IM2COL_MAX_POSITIONS; 0 = never), "
                        "or a comma list of them (one line each)")
    p.add_argument("--compile_only", action="store_true",
                   help="print compiled memory + compile seconds; run no step")
    p.add_argument("--fast_compile", action="store_true",
                   help="with --compile_only on CPU: skip LLVM optimisation (same buffers)")
    args = p.parse_args()
    settings = args.remat.split(",")
    if not set(settings) <= {"none", "rsa", "block"}:
        p.error(f"--remat: none, rsa or block (comma-separated), got {args.remat!r}")
    thresholds = (args.im2col_max_positions.split(",") if args.im2col_max_positions
                  else [str(frame_ops.IM2COL_MAX_POSITIONS)])
    for remat in settings:
        for threshold in thresholds:
            args.remat = remat
            frame_ops.IM2COL_MAX_POSITIONS = int(threshold)   # read when the step is traced
            run(args)


def run(args) -> None:
    if args.config == "synthetic":
        c = synthetic.get_config(args.backbone)
        c.data.num_frames = args.frames
    else:
        c = ssv2.get_config(str(args.frames))
    if args.width:
        c.model.width = args.width
    if args.heads:
        c.model.rsa["num_heads"] = args.heads
    c.data.image_size = args.size
    c.global_batch_size = args.batch
    c.model.dtype = args.dtype
    c.model.rsa["implementation"] = args.implementation
    c.model.remat = args.remat
    c.model.backbone = args.backbone
    c.model.bn_group_clips = 0   # one device's clips: the statistics of one official GPU
    mesh = parallel.create_mesh({"data": 1}, jax.devices()[:1])
    if args.compile_only:
        print(json.dumps(compile_only_line(c, mesh, args)), flush=True)
        return
    state, _, train_fn, _ = train.setup(c, mesh, steps_per_epoch=100)
    rng = np.random.RandomState(0)
    shape = (args.batch, args.frames, args.size, args.size, 3)
    video = rng.randint(0, 256, shape).astype(np.uint8)
    if args.input_dtype == "float32":
        video = transforms.normalize(video)
    host_batch = {"video": video,
                  "label": rng.randint(0, c.model.num_classes, args.batch).astype(np.int32)}
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
        t, t_cpu = time.perf_counter(), time.process_time()
        batch = jax.block_until_ready(parallel.shard_batch(host_batch, mesh))
        put.append(time.perf_counter() - t)
        state, m = compiled(state, batch)
        jax.block_until_ready((state.params, m))
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - t_cpu)
    step_s = statistics.median(times)
    dev = jax.devices()[0]
    stats = dev.memory_stats() or {}
    out = {"model": _model_name(c), "device": dev.device_kind, "platform": dev.platform,
           "batch": args.batch, "frames": args.frames, "size": args.size,
           "dtype": args.dtype, "implementation": args.implementation,
           "input_dtype": args.input_dtype, "input_bytes": int(video.nbytes),
           "host_to_device_s": round(statistics.median(put), 5),
           "remat": args.remat, "num_heads": c.model.rsa["num_heads"],
           "im2col_max_positions": frame_ops.IM2COL_MAX_POSITIONS,
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
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
