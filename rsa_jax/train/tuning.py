"""``conv_strategy='autotune'``: time every way of running each RSA layer shape of a
model on this run's devices and build the model with the fastest per shape.

Which way is fastest depends on the backend, the chip and the frame size
(docs/benchmarks.md); the candidates and the string that carries the choices into
the model config are `rsa_jax.layers.strategy`'s.  `resolve_config` measures forward
+ backward of every candidate for every distinct layer shape (a few iterations after
a warm-up), logs the table, caches it in ``<workdir>/autotune.json`` keyed by device
kind, dtype, per-device batch, the shared RSA settings and the shape (a restart
reuses it), and returns the config with ``model.rsa.conv_strategy`` set to the
resolved table.  Lives with training because it builds the model; the layers only
decode the choices.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from rsa_jax.layers import RSA, strategy
from rsa_jax.models import build_model

CACHE_FILE = "autotune.json"
Timer = Callable[[str, str, Callable[[], Any]], float]


def resolve_config(config: Any, workdir: str | None,
                   timer: Timer | None = None, platform: str | None = None) -> Any:
    """`config` unchanged unless ``model.rsa.conv_strategy == 'autotune'``; then a copy
    with the per-shape choices encoded in it (timed on this device, cached in
    ``<workdir>/autotune.json``; process 0's choices are used by every process).
    ``platform``: the run's (`parallel.mesh_platform`), which sets the candidates."""
    rsa = config.model.get("rsa") or {}
    if rsa.get("conv_strategy") != "autotune" or config.model.get("backbone", "rsa") != "rsa":
        return config
    model = build_model(config.model, platform=platform)
    batch = max(1, config.global_batch_size // max(1, jax.device_count()))
    path = os.path.join(workdir, CACHE_FILE) if workdir else None
    if path and jax.process_index() != 0:
        path = None                     # one writer; the others time without the file
    table = tune(model, (batch, config.data.num_frames, config.data.image_size,
                         config.data.image_size, 3), path, timer)
    choices = {k: e["choice"] for k, e in table.items()}
    if jax.process_count() > 1:         # one program on every host: process 0's choices
        from jax.experimental import multihost_utils
        names = strategy.candidates(model.platform)
        idx = multihost_utils.broadcast_one_to_all(
            np.array([names.index(choices[k]) for k in sorted(choices)], np.int32))
        choices = {k: names[int(i)] for k, i in zip(sorted(choices), idx, strict=True)}
    logging.info("%s", format_table(table))
    if jax.process_index() == 0:
        print(format_table(table), flush=True)
    out = config.copy_and_resolve_references()
    out.model.rsa.conv_strategy = strategy.encode(choices)
    return out


def rsa_layer_inputs(model: Any, input_shape: Sequence[int]) -> dict[str, dict]:
    """Distinct RSA layers of `model` for one input shape: key -> {shape, features,
    strides}, recorded by intercepting `RSA.__call__` under ``jax.eval_shape``."""
    seen: dict[str, dict] = {}

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, RSA) and context.method_name == "__call__":
            x = args[0]
            seen.setdefault(strategy.shape_key(context.module, x.shape), dict(
                shape=tuple(x.shape), features=context.module.features,
                strides=tuple(context.module.strides)))
        return next_fun(*args, **kwargs)

    x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
    with nn.intercept_methods(record):
        jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)
    return seen


def wall_timer(iters: int = 3, warmup: int = 1) -> Timer:
    """Median wall time of `iters` calls after `warmup` (the first also compiles)."""
    def timer(_name: str, _key: str, fn: Callable[[], Any]) -> float:
        for _ in range(warmup):
            jax.block_until_ready(fn())
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times.append(time.perf_counter() - t0)
        return float(np.median(times))
    return timer


def _fwd_bwd(rsa_fields: dict, layer: dict, name: str, dtype: Any) -> Callable[[], Any]:
    """A jitted forward + backward (gradients w.r.t. params and input) of one layer."""
    impl, variant = name.split("/")
    fields = {k: v for k, v in rsa_fields.items() if v is not None}
    fields.update(implementation=impl, patch_op=variant if impl == "patches" else "auto",
                  conv_strategy=variant if impl == "conv" else "auto")
    fields["kernel_size"] = tuple(int(k) for k in fields["kernel_size"])
    mod = RSA(features=layer["features"], strides=layer["strides"], dtype=dtype, **fields)
    state: dict = {}

    @jax.jit
    def step(p, x):
        return jax.grad(lambda p, x: jnp.mean(mod.apply(p, x).astype(jnp.float32) ** 2),
                        argnums=(0, 1))(p, x)

    def run():
        if not state:  # lazily, so that a timer that does not run `fn` costs nothing
            state["x"] = jax.random.normal(jax.random.PRNGKey(0), layer["shape"], jnp.float32)
            state["p"] = jax.jit(mod.init)(jax.random.PRNGKey(1), state["x"])
        return step(state["p"], state["x"])
    return run


def tune(model: Any, input_shape: Sequence[int], cache_path: str | None = None,
         timer: Timer | None = None, platform: str | None = None) -> dict[str, dict]:
    """Times every candidate for every RSA layer shape; reuses `cache_path` entries.

    Args:
      model: a `ResNetTSN` (its ``rsa`` fields, ``dtype``).
      input_shape: (per-device batch, T, H, W, 3).
      cache_path: JSON cache, read and (rewritten) when given.
      timer: ``timer(candidate, shape_key, fn) -> seconds``; default `wall_timer`.
      platform: candidate set (`strategy.candidates`; default: the model's).

    Returns:
      shape key -> {'choice': fastest candidate, 'seconds': {candidate: s}, 'cached': bool}.
    """
    timer = timer or wall_timer()
    rsa_fields = dict(model.rsa)
    rsa_fields.pop("conv_strategy", None)
    rsa_fields.pop("implementation", None)
    prefix = "|".join([jax.devices()[0].device_kind, jnp.dtype(model.dtype).name,
                       f"b{input_shape[0]}", json.dumps(rsa_fields, sort_keys=True)])
    cache = _read(cache_path)
    out = {}
    for key, layer in sorted(rsa_layer_inputs(model, input_shape).items()):
        entry = cache.get(f"{prefix}|{key}")
        if entry is None:
            layer = dict(layer, shape=(int(input_shape[0]),) + layer["shape"][1:])
            secs = {name: timer(name, key, _fwd_bwd(rsa_fields, layer, name, model.dtype))
                    for name in strategy.candidates(platform or model.platform)}
            entry = {"choice": min(secs, key=secs.get), "seconds": secs}
            cache[f"{prefix}|{key}"] = entry
        out[key] = dict(entry, cached=f"{prefix}|{key}" in _read(cache_path))
    if cache_path:
        with open(cache_path, "w") as f:
            json.dump(cache, f, indent=1, sort_keys=True)
    return out


def _read(path: str | None) -> dict:
    if not path or not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def format_table(table: dict[str, dict]) -> str:
    """One line per shape: its choice and every candidate's fwd+bwd milliseconds."""
    lines = []
    for key, e in table.items():
        times = "  ".join(f"{n} {1e3 * s:.2f}" for n, s in sorted(e["seconds"].items(),
                                                                 key=lambda kv: kv[1]))
        lines.append(f"autotune {key}: {e['choice']}{' (cached)' if e['cached'] else ''}"
                     f"  [ms fwd+bwd: {times}]")
    return "\n".join(lines)
