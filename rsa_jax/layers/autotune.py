"""``conv_strategy='autotune'``: time every way of running each RSA layer shape of a
model on the current device and build the model with the fastest per shape.

All candidates compute the same numbers (to float32 rounding, tests/test_rsa_layer.py);
they differ only in the XLA operations they emit, and which is fastest depends on
the backend, the chip and the frame size (docs/benchmarks.md).  Candidates are named
``'<implementation>/<variant>'``:

* ``conv/native``, ``conv/taps2d``, ``conv/auto`` — the factorised layer with the
  `conv_forms.select_forms` strategy (``conv/auto`` only on CPU, where it differs
  from both others: banded matmuls on small frames);
* ``patches/stack``, ``patches/lax`` — explicit windows by pad + slice + stack or
  by ``lax.conv_general_dilated_patches`` (not on CPU: its gradient there is
  pathologically slow).

`resolve_config` measures forward + backward of every candidate for every distinct
layer shape (a few iterations after a warm-up), logs the table, caches it in
``<workdir>/autotune.json`` keyed by device kind, dtype, per-device batch, the shared
RSA settings and the shape (a restart reuses it), and returns the config with
``model.rsa.conv_strategy`` set to the resolved table, encoded as one string
(``'autotune:<shape>=<candidate>;...'``, hashable and JSON-safe).  `layer_choice` is
what each `RSA` layer does with that string.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PREFIX = "autotune:"
CACHE_FILE = "autotune.json"
Timer = Callable[[str, str, Callable[[], Any]], float]


def candidates(backend: str | None = None) -> list[str]:
    """The real strategies valid for `backend` (default: the current one)."""
    if (backend or jax.default_backend()) == "cpu":
        return ["conv/auto", "conv/taps2d", "conv/native", "patches/stack"]
    return ["conv/native", "conv/taps2d", "patches/lax", "patches/stack"]


def shape_key(layer: Any, x_shape: Sequence[int]) -> str:
    """Per-layer key, batch excluded: ``'T×H×W×C_in->features/s<stride>'``."""
    t, h, w, c = (int(d) for d in x_shape[1:])  # the batch may be symbolic (jax.export)
    return f"{t}x{h}x{w}x{c}->{int(layer.features)}/s{max(int(s) for s in layer.strides)}"


def encode(choices: dict[str, str]) -> str:
    """The resolved table as a ``conv_strategy`` string."""
    return PREFIX + ";".join(f"{k}={v}" for k, v in sorted(choices.items()))


def decode(conv_strategy: str) -> dict[str, str]:
    """Inverse of `encode`."""
    body = conv_strategy[len(PREFIX):]
    return dict(item.split("=", 1) for item in body.split(";") if item)


def layer_choice(implementation: str, conv_strategy: str, patch_op: str,
                 key: str) -> tuple[str, str, str]:
    """(implementation, conv_strategy, patch_op) for one layer.

    A plain strategy passes through.  'autotune' left unresolved, or a resolved
    table without this layer's shape (e.g. another input size at evaluation), runs
    'auto': the same numbers, only possibly slower.
    """
    if not conv_strategy.startswith("autotune"):
        return implementation, conv_strategy, patch_op
    name = decode(conv_strategy).get(key) if conv_strategy.startswith(PREFIX) else None
    if name is None:
        return implementation, "auto", patch_op
    impl, variant = name.split("/")
    return (impl, variant, "auto") if impl == "conv" else (impl, "auto", variant)


def rsa_layer_inputs(model: Any, input_shape: Sequence[int]) -> dict[str, dict]:
    """Distinct RSA layers of `model` for one input shape: key -> {shape, features,
    strides}, recorded by intercepting `RSA.__call__` under ``jax.eval_shape``."""
    from rsa_jax.layers.rsa import RSA  # local: rsa imports this module
    seen: dict[str, dict] = {}

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, RSA) and context.method_name == "__call__":
            x = args[0]
            seen.setdefault(shape_key(context.module, x.shape), dict(
                shape=tuple(x.shape), features=context.module.features,
                strides=tuple(context.module.strides)))
        return next_fun(*args, **kwargs)

    x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)
    with __import__("flax.linen", fromlist=["intercept_methods"]).intercept_methods(record):
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
    from rsa_jax.layers.rsa import RSA
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
         timer: Timer | None = None, backend: str | None = None) -> dict[str, dict]:
    """Times every candidate for every RSA layer shape; reuses `cache_path` entries.

    Args:
      model: a `ResNetTSN` (its ``rsa`` fields, ``dtype``).
      input_shape: (per-device batch, T, H, W, 3).
      cache_path: JSON cache, read and (rewritten) when given.
      timer: ``timer(candidate, shape_key, fn) -> seconds``; default `wall_timer`.
      backend: candidate set (default: the current backend).

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
                    for name in candidates(backend)}
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
