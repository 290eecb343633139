"""Flax variable paths <-> official state-dict keys, and the strict key check.

Shared by the official converter (`official.py`) and the torchvision one
(`torchvision.py`); the mapping itself is drawn in `official.py`'s docstring
(docs/method.md#checkpoint-format).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rsa_jax.convert.rsa_layer import conv3d_weight_to_torch, rsa_layer_params_to_torch
from rsa_jax.convert.torch_io import CheckpointError

_BN_LEAF = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
_RSA_LEAF = {"projection": "projection.weight", "H1": "H1.weight", "H2": "H2.weight",
             "G": "G.weight", "P1": "P1", "I": "I"}
_SHOW = 3  # keys listed per kind of problem; the count says how many more


def flatten(tree: Mapping, prefix: tuple = ()) -> dict[tuple, Any]:
    """A nested mapping as ``{path tuple: leaf}``."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def unflatten(flat: Mapping[tuple, Any]) -> dict:
    """The inverse of `flatten`."""
    out: dict = {}
    for path, v in flat.items():
        d = out
        for k in path[:-1]:
            d = d.setdefault(k, {})
        d[path[-1]] = v
    return out


def module_to_torch(name: str) -> str:
    """A Flax module name as the official one (``layer2_1`` -> ``layer2.1``)."""
    m = re.fullmatch(r"layer(\d+)_(\d+)", name)
    if m:
        return f"layer{m.group(1)}.{m.group(2)}"
    return {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}.get(name, name)


def torch_key(collection: str, path: tuple) -> str:
    """Official state-dict key (without `module.`) of one Flax leaf."""
    if path[0] == "new_fc":
        return "new_fc." + ("weight" if path[-1] == "kernel" else "bias")
    mods = [module_to_torch(p) for p in path[:-1]]
    leaf = path[-1]
    if collection == "batch_stats" or leaf in ("scale", "bias"):
        leaf = _BN_LEAF[leaf]
    elif leaf == "kernel":
        leaf = "weight"
    else:  # an RSA parameter
        leaf = _RSA_LEAF[leaf]
    return "base_model." + ".".join(mods + [leaf])


def abstract_variables(model) -> dict:
    """Shapes and dtypes of ``model``'s variables, without computing them."""
    x = jnp.zeros((1, 1, 32, 32, 3), jnp.float32)
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))


def is_rsa_leaf(path: tuple) -> bool:
    """A parameter of an RSA layer (``(block, 'conv2', name)``, not a plain kernel)."""
    return len(path) == 3 and path[1] == "conv2" and path[2] != "kernel"


def variables_to_state_dict(variables: Mapping, model) -> dict[str, np.ndarray]:
    """Flax variables of a `ResNetTSN` -> official state dict (no `module.` prefix)."""
    sd, rsa_groups = {}, {}
    for col in ("params", "batch_stats"):
        for path, v in flatten(variables.get(col, {})).items():
            if col == "params" and is_rsa_leaf(path):
                rsa_groups.setdefault(path[0], {})[path[2]] = v
                continue
            key, v = torch_key(col, path), np.asarray(v)
            if path[0] == "new_fc" and path[-1] == "kernel":
                v = v.T[:, :, None]
            elif path[-1] == "kernel":
                v = conv3d_weight_to_torch(v)
            sd[key] = np.ascontiguousarray(v)
    for block, p in rsa_groups.items():
        for name, v in rsa_layer_params_to_torch(p).items():
            sd[f"base_model.{module_to_torch(block)}.conv2.{name}"] = v
    return sd


def expected_shapes(model)-> dict[str, tuple]:
    """Official state-dict key -> shape, for every tensor ``model`` has."""
    abstract = abstract_variables(model)
    zeros = {col: {k: np.broadcast_to(np.zeros((), np.float32), v.shape) for k, v in
                   flatten(abstract[col]).items()} for col in ("params", "batch_stats")}
    zeros = {col: unflatten(v) for col, v in zeros.items()}
    return {k: v.shape for k, v in variables_to_state_dict(zeros, model).items()}


def check_keys(found: Mapping[str, tuple], expected: Mapping[str, tuple], what: str,
                optional: set = frozenset(),
                explain: Callable[[str, str], str] | None = None,
                show: Callable[[str], str] = str) -> None:
    """Raises one `CheckpointError` line naming every problem, the first one first.

    ``explain(kind, key)`` adds a cause to a key ('' for none); ``show`` spells a
    key as the user's file does (e.g. with its `module.` prefix).
    """
    missing = sorted(k for k in expected if k not in found and k not in optional)
    unexpected = sorted(k for k in found if k not in expected)
    bad = sorted(k for k in expected if k in found and tuple(found[k]) != tuple(expected[k]))
    if not (missing or unexpected or bad):
        return
    note = explain or (lambda kind, key: "")
    # Causes go inside the key's parentheses, so that ', ' only separates keys.
    fmt = {"missing": lambda k, n: f"{show(k)} (expected {tuple(expected[k])}{n})",
           "unexpected": lambda k, n: f"{show(k)} (shape {tuple(found[k])}{n})",
           "mis-shaped": lambda k, n: f"{show(k)}: {tuple(found[k])} "
                                      f"(expected {tuple(expected[k])}{n})"}
    parts = []
    for kind, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", bad)):
        if keys:
            listed = ", ".join(fmt[kind](k, note(kind, k)) for k in keys[:_SHOW])
            more = f" and {len(keys) - _SHOW} more" if len(keys) > _SHOW else ""
            parts.append(f"{len(keys)} {kind}: {listed}{more}")
    raise CheckpointError(f"{what} does not match the model; nothing was loaded: "
                          + "; ".join(parts))
