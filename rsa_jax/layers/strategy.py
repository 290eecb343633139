"""The per-layer strategy codec of ``conv_strategy='autotune'``.

`rsa_jax.train.tuning` times every way of running each RSA layer shape of a model
(the candidates below) and writes the fastest per shape into the model config as one
string, ``'autotune:<shape>=<candidate>;...'`` (hashable and JSON-safe); `layer_choice`
is what each `RSA` layer does with that string.  Candidates are named
``'<implementation>/<variant>'``:

* ``conv/native``, ``conv/taps2d``, ``conv/auto``, ``conv/flat`` — the factorised
  layer with the `conv_forms.select_forms` strategy (``conv/auto`` only on CPU, where
  it differs from the others: banded matmuls on small frames; ``conv/flat`` only on
  accelerators, whose tiled layouts it is for);
* ``patches/stack``, ``patches/lax`` — explicit windows by pad + slice + stack or
  by ``lax.conv_general_dilated_patches`` (not on CPU: its gradient there is
  pathologically slow).

All candidates compute the same numbers (to float32 rounding, tests/test_rsa_layer.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rsa_jax.layers.conv_forms import resolve_platform

PREFIX = "autotune:"


def candidates(platform: str | None = None) -> list[str]:
    """The real strategies valid for `platform` (`conv_forms.resolve_platform`)."""
    if resolve_platform(platform) == "cpu":
        return ["conv/auto", "conv/taps2d", "conv/native", "patches/stack"]
    return ["conv/native", "conv/flat", "conv/taps2d", "patches/lax", "patches/stack"]


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
