"""One-shot benchmark of an accelerator host (docs/benchmarks.md), one command:

    python benchmarks/device_suite.py            # ≤ ~8 min on one H100/H200
    python benchmarks/device_suite.py --smoke    # tiny shapes, any CPU (in the test suite)

Parts, each record printed as one JSON line and appended to
``benchmarks/results/<device>.jsonl`` as soon as it exists (a killed run keeps
what it measured), with ``benchmarks/results/<device>.json`` rewritten after each:

1. ``layer``: the RSA layer (paper layer-1 shape) for every implementation /
   conv_strategy / patch_op, float32 and bfloat16 (timers from bench_rsa_layer.py);
2. ``autotune``: the table ``conv_strategy='autotune'`` builds for the train
   part's model (every RSA layer shape, every candidate, fwd+bwd ms), per dtype;
3. ``train``: RSA-R50 train step, 16 frames × 224² bfloat16, per-device batch
   1, 2, 4, ... until the device runs out of memory (or the time budget):
   clips/s, model TFLOP/s, MFU, compile seconds, compiled and peak memory;
4. ``remat``: the three ``model.remat`` settings at the largest batch that ran;
5. ``pipeline``: the training transform's clips/s on this host's cores
   (bench_pipeline.py's datasets and timer).

A Markdown table of the results is printed last, for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

# Smoke runs only check that every part works: skip LLVM optimisation, which is
# most of XLA:CPU's compile time.  Must be set before JAX starts its backends.
if "--smoke" in sys.argv:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_"
                               "level=0 --xla_llvm_disable_expensive_passes=true").strip()

import bench_rsa_layer  # noqa: E402  (benchmarks/ is on the path)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from configs import ssv2, synthetic  # noqa: E402
from rsa_jax import parallel  # noqa: E402
from rsa_jax.layers import RSA  # noqa: E402
from rsa_jax.models import build_model  # noqa: E402
from rsa_jax.train import mfu as mfu_lib  # noqa: E402
from rsa_jax.train import optim, train
from rsa_jax.train import step as step_lib

# Layer variants: (implementation, conv_strategy, patch_op); see rsa_jax/layers/rsa.py.
VARIANTS = (("conv", "auto", "auto"), ("conv", "native", "auto"), ("conv", "taps2d", "auto"),
            ("patches", "auto", "lax"), ("patches", "auto", "stack"))
REMATS = ("none", "rsa", "block")


class Recorder:
    """Prints and appends each record as it comes; rewrites the summary JSON each time."""

    def __init__(self, out_dir: str, device: str):
        os.makedirs(out_dir, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", device).strip("_") or "device"
        self.json_path = os.path.join(out_dir, f"{name}.json")
        self.lines_path = os.path.join(out_dir, f"{name}.jsonl")
        self.records: list[dict] = []
        open(self.lines_path, "w").close()

    def add(self, record: dict) -> None:
        self.records.append(record)
        line = json.dumps(record)
        print(line, flush=True)
        with open(self.lines_path, "a") as f:
            f.write(line + "\n")
        with open(self.json_path, "w") as f:
            json.dump({"records": self.records}, f, indent=1)


def layer_part(rec: Recorder, shape, kernel, repeats: int) -> None:
    """Forward and forward+backward time of every layer variant, f32 and bf16."""
    for dtype in ("float32", "bfloat16"):
        x = jax.random.normal(jax.random.key(0), shape, dtype)
        for impl, strategy, patch_op in VARIANTS:
            model = RSA(features=shape[-1], num_heads=min(8, shape[-1] // 4 or 1),
                        kernel_size=kernel, implementation=impl, conv_strategy=strategy,
                        patch_op=patch_op, dtype=jnp.dtype(dtype))
            params = model.init(jax.random.key(1), x)["params"]
            fwd = jax.jit(lambda p, x, m=model: m.apply({"params": p}, x))
            grad = jax.jit(jax.grad(lambda p, x, m=model: jnp.sum(
                m.apply({"params": p}, x).astype(jnp.float32) ** 2), argnums=(0, 1)))
            grad = grad.lower(params, x).compile()  # one compile for time and memory
            mem = grad.memory_analysis()
            fwd_s, _ = bench_rsa_layer.median_time(fwd, (params, x), repeats)
            fb_s, _ = bench_rsa_layer.median_time(grad, (params, x), repeats)
            rec.add({"part": "layer", "dtype": dtype, "implementation": impl,
                     "conv_strategy": strategy, "patch_op": patch_op,
                     "variant": f"{impl}/{strategy if impl == 'conv' else patch_op}",
                     "shape": list(shape), "fwd_ms": 1e3 * fwd_s,
                     "fwd_bwd_ms": 1e3 * fb_s, "fwd_bwd_compiled_mib": (
                         mem.temp_size_in_bytes + mem.argument_size_in_bytes
                         + mem.output_size_in_bytes - mem.alias_size_in_bytes) / 2**20})


def autotune_part(rec: Recorder, smoke: bool, frames: int, size: int) -> None:
    """`rsa_jax.train.tuning`'s table for the train part's model at batch 1."""
    from rsa_jax.layers import strategy
    from rsa_jax.train import tuning
    model = build_model(train_config(smoke, frames, size).model)
    # The smoke run checks the part works; the table itself only means something on a device.
    for dtype in ("float32",) if smoke else ("float32", "bfloat16"):
        table = tuning.tune(model.clone(dtype=jnp.dtype(dtype)), (1, frames, size, size, 3))
        print(tuning.format_table(table), flush=True)
        rec.add({"part": "autotune", "dtype": dtype, "candidates": strategy.candidates(),
                 "table": {k: {"choice": e["choice"],
                               "fwd_bwd_ms": {n: 1e3 * t for n, t in e["seconds"].items()}}
                           for k, e in table.items()}})


def _is_oom(err: Exception) -> bool:
    return "RESOURCE_EXHAUSTED" in str(err) or "out of memory" in str(err).lower()


def train_config(smoke: bool, frames: int, size: int):
    c = ssv2.get_config(str(frames))
    c.data.image_size = size
    c.model.dtype = "bfloat16"
    c.model.bn_group_clips = 0   # the sweep starts at 1 clip per device: statistics per device
    if smoke:  # configs/synthetic.py:tiny's net, compiles in seconds; plus an RSA layer in
        # stage 1, whose small heads take the CPU forms that once crashed XLA at batch 1
        tiny = synthetic.get_config("tiny").model
        c.model.depth, c.model.width = tiny.depth, tiny.width
        c.model.rsa_positions = [[1], [], [], list(tiny.rsa_positions[3])]
        c.model.rsa["num_heads"] = tiny.rsa.num_heads
        c.model.rsa["kernel_size"] = list(tiny.rsa.kernel_size)
    return c


def time_step(c, state, train_fn, batch: int, steps: int, meter, mesh) -> tuple[dict, object]:
    """Compiles and times one batch size; returns (record, updated state).

    ``meter`` holds one clip's FLOPs (the step's are ``batch`` times that).
    """
    rng = np.random.RandomState(0)
    shape = (batch, c.data.num_frames, c.data.image_size, c.data.image_size, 3)
    data = parallel.shard_batch({"video": rng.randn(*shape).astype(np.float32),
                                 "label": rng.randint(0, 174, batch).astype(np.int32)}, mesh)
    t0 = time.perf_counter()
    compiled = train_fn.lower(state, data).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    state, m = compiled(state, data)
    jax.block_until_ready(m)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        state, m = compiled(state, data)
        jax.block_until_ready((state.params, m))
        times.append(time.perf_counter() - t)
    step_s = statistics.median(times)
    stats = jax.devices()[0].memory_stats() or {}
    meter = dataclasses.replace(meter, flops_per_step=meter.flops_per_step * batch)
    def sig(v):
        return float(f"{v:.4g}")  # 4 significant digits: smoke sizes are tiny
    return {"batch": batch, "compile_s": round(compile_s, 2), "step_s": sig(step_s),
            "clips_per_s": sig(batch / step_s),
            **{k: sig(v) for k, v in meter.scalars(step_s).items()},
            "temp_gib": sig(mem.temp_size_in_bytes / 2**30),
            "argument_gib": sig(mem.argument_size_in_bytes / 2**30),
            "peak_gib": sig(stats["peak_bytes_in_use"] / 2**30)
            if "peak_bytes_in_use" in stats else None}, state


def train_part(rec: Recorder, smoke: bool, frames: int, size: int, max_batch: int,
               steps: int, deadline: float) -> None:
    """Batch sweep until out of memory / max_batch / deadline, then remat at the largest."""
    c = train_config(smoke, frames, size)
    mesh = parallel.create_mesh({"data": 1}, jax.devices()[:1])
    state, _, train_fn, _ = train.setup(c, mesh, steps_per_epoch=100)
    meter = mfu_lib.MfuMeter.create(c.model, frames, size, clips_per_step=1,
                                    devices=jax.devices()[:1])
    common = {"frames": frames, "size": size, "dtype": "bfloat16", "depth": c.model.depth,
              "device": meter.device_kind}
    largest, batch = None, 1
    while batch <= max_batch and time.time() < deadline:
        try:
            r, state = time_step(c, state, train_fn, batch, steps, meter, mesh)
        except Exception as err:  # noqa: BLE001 - only out-of-memory ends the sweep
            if not _is_oom(err):
                raise
            rec.add({"part": "train", **common, "batch": batch, "oom": True})
            break
        rec.add({"part": "train", **common, "remat": "none", **r})
        largest, batch = batch, batch * 2
    if largest is None:
        return
    for remat in REMATS[1:]:
        if time.time() > deadline:
            break
        # Same variables, another apply function: no re-initialisation needed.  The
        # apply function is static pytree data, so the shardings tree is rebuilt.
        state = state.replace(apply_fn=build_model(dict(c.model.to_dict(), remat=remat)).apply)
        remat_fn, _ = step_lib.compile_steps(
            mesh, jax.tree.map(lambda x: x.sharding, state),
            learning_rate_fn=optim.lr_schedule(c, 100), label_smoothing=c.label_smoothing,
            grad_accum_steps=c.grad_accum_steps)
        try:
            r, state = time_step(c, state, remat_fn, largest, steps, meter, mesh)
        except Exception as err:  # noqa: BLE001
            if not _is_oom(err):
                raise
            r = {"batch": largest, "oom": True}
        rec.add({"part": "remat", **common, "remat": remat, **r})


def pipeline_part(rec: Recorder, videos: int, frames: int, seconds: float) -> None:
    """Training-transform clips/s of one core, and of all of this host's cores."""
    import bench_pipeline as bp
    with tempfile.TemporaryDirectory() as root:
        bp.write_raw(root, videos)
        jpeg, _ = bp.train_transform("video_list", None, root, "list", frames)
        jpeg_u8, _ = bp.train_transform("video_list", None, root, "list", frames, uint8=True)
        rng = np.random.default_rng(0)
        _, cpu = bp.rates({"jpeg": lambda i: jpeg.random_map(i, rng),
                            "jpeg_uint8": lambda i: jpeg_u8.random_map(i, rng)},
                           videos, frames, seconds)
    cores = len(os.sched_getaffinity(0))
    for name, fps in cpu.items():
        rec.add({"part": "pipeline", "loader": name, "frames": frames, "cores": cores,
                 "clips_per_s_per_core": round(fps / frames, 2),
                 "clips_per_s_host": round(cores * fps / frames, 1)})


def markdown(records: list[dict]) -> str:
    """The RESULTS.md tables: train/remat rows, then layer rows, then pipeline rows."""
    out = ["| part | setting | batch | clips/s | TFLOP/s | MFU | compile s | temp GiB | "
           "peak GiB |", "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        if r["part"] in ("train", "remat"):
            mfu = f"{100 * r['mfu']:.1f} %" if r.get("mfu") is not None else "-"
            out.append(f"| {r['part']} | remat={r.get('remat', '-')} | {r['batch']} | "
                       + ("OOM | | | | | |" if r.get("oom") else
                          f"{r['clips_per_s']} | {r['model_tflops_per_s']:.3g} | {mfu} | "
                          f"{r['compile_s']} | {r['temp_gib']} | {r['peak_gib']} |"))
    out += ["", "| layer | dtype | fwd ms | fwd+bwd ms | compiled MiB |", "|---|---|---|---|---|"]
    out += [f"| {r['variant']} | {r['dtype']} | {r['fwd_ms']:.2f} | "
            f"{r['fwd_bwd_ms']:.2f} | {r['fwd_bwd_compiled_mib']:.1f} |"
            for r in records if r["part"] == "layer"]
    out += ["", "| loader | clips/s per core | clips/s on host |", "|---|---|---|"]
    out += [f"| {r['loader']} | {r['clips_per_s_per_core']} | {r['clips_per_s_host']} "
            f"({r['cores']} cores) |" for r in records if r["part"] == "pipeline"]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, for CPU and the tests")
    ap.add_argument("--out_dir", default=os.path.join(HERE, "results"))
    ap.add_argument("--budget_s", type=float, default=420.0,
                    help="no new train/remat compile starts after this many seconds "
                         "(not with --smoke)")
    ap.add_argument("--max_batch", type=int, default=256)
    args = ap.parse_args()
    t0 = time.time()
    dev = jax.devices()[0]
    rec = Recorder(args.out_dir, ("smoke_" if args.smoke else "") + dev.device_kind)
    rec.add({"part": "host", "device": dev.device_kind, "platform": dev.platform,
             "devices": jax.device_count(), "jax": jax.__version__, "smoke": args.smoke,
             "cores": len(os.sched_getaffinity(0)), "load_avg_1min": os.getloadavg()[0]})
    if args.smoke:
        layer_shape, kernel, repeats = (1, 2, 8, 8, 8), (3, 3, 3), 1
        frames, size, max_batch, steps = 2, 16, min(args.max_batch, 2), 1
        pipe = dict(videos=2, frames=2, seconds=0.5)
    else:
        layer_shape, kernel, repeats = (1, 8, 56, 56, 64), (5, 7, 7), 10
        frames, size, max_batch, steps = 16, 224, args.max_batch, 5
        pipe = dict(videos=16, frames=16, seconds=5.0)
    layer_part(rec, layer_shape, kernel, repeats)
    autotune_part(rec, args.smoke, frames, size)
    # The smoke run must reach every part however loaded the machine: no budget.
    deadline = float("inf") if args.smoke else t0 + args.budget_s
    train_part(rec, args.smoke, frames, size, max_batch, steps, deadline)
    pipeline_part(rec, **pipe)
    rec.add({"part": "done", "wall_s": round(time.time() - t0, 1)})
    print(markdown(rec.records))


if __name__ == "__main__":
    main()
