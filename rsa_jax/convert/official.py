"""Official RSA/TSN checkpoints <-> Flax `ResNetTSN` variables.

Key mapping, strict loading (one-line errors naming the cause) and the orbax output of
``python -m rsa_jax.convert official`` (docs/converting.md,
docs/method.md#checkpoint-format).

Flax tree  <->  official state dict (after stripping `module.`):
  params/conv1/kernel                  base_model.conv1.weight          (OIDHW -> DHWIO)
  params/bn1/{scale,bias}              base_model.bn1.{weight,bias}
  batch_stats/bn1/{mean,var}           base_model.bn1.running_{mean,var}
  params/layer2_1/conv2/<RSA param>    base_model.layer2.1.conv2.<RSA name> (rsa_layer.py)
  params/layer2_0/downsample_conv/...  base_model.layer2.0.downsample.0.weight
  params/layer2_0/downsample_bn/...    base_model.layer2.0.downsample.1.*
  params/new_fc/kernel (C, K)          new_fc.weight (K, C, 1);  new_fc/bias  new_fc.bias
`num_batches_tracked` counters are accepted and dropped.  A model trained with
dropout 0 has no `new_fc`: the official TSN then puts the same Conv1d classifier
in place of the dropout, as `base_model.fc1` (ops/models.py `_prepare_tsn`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rsa_jax.convert.infer import (
    _RSA_KEY,
    LEGACY_RSA_NAMES,
    infer_model_config,
    normalize_official_keys,
    rsa_layers,
)
from rsa_jax.convert.rsa_layer import (
    conv3d_weight_from_torch,
    conv3d_weight_to_torch,
    rsa_layer_params_from_torch,
    rsa_layer_params_to_torch,
)
from rsa_jax.convert.torch_io import CheckpointError, read_state_dict
from rsa_jax.models import build_model

_BN_LEAF = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
_RSA_LEAF = {"projection": "projection.weight", "H1": "H1.weight", "H2": "H2.weight",
             "G": "G.weight", "P1": "P1", "I": "I"}
__all__ = ["LEGACY_RSA_NAMES", "infer_model_config", "normalize_official_keys",
           "load_official_checkpoint", "official_to_orbax", "state_dict_to_variables",
           "variables_to_state_dict"]
_SHOW = 3  # keys listed per kind of problem; the count says how many more


def _flatten(tree: Mapping, prefix: tuple = ()) -> dict[tuple, Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def _unflatten(flat: Mapping[tuple, Any]) -> dict:
    out: dict = {}
    for path, v in flat.items():
        d = out
        for k in path[:-1]:
            d = d.setdefault(k, {})
        d[path[-1]] = v
    return out


def _module_to_torch(name: str) -> str:
    m = re.fullmatch(r"layer(\d+)_(\d+)", name)
    if m:
        return f"layer{m.group(1)}.{m.group(2)}"
    return {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}.get(name, name)


def _torch_key(collection: str, path: tuple) -> str:
    """Official state-dict key (without `module.`) of one Flax leaf."""
    if path[0] == "new_fc":
        return "new_fc." + ("weight" if path[-1] == "kernel" else "bias")
    mods = [_module_to_torch(p) for p in path[:-1]]
    leaf = path[-1]
    if collection == "batch_stats" or leaf in ("scale", "bias"):
        leaf = _BN_LEAF[leaf]
    elif leaf == "kernel":
        leaf = "weight"
    else:  # an RSA parameter
        leaf = _RSA_LEAF[leaf]
    return "base_model." + ".".join(mods + [leaf])


def _abstract_variables(model) -> dict:
    x = jnp.zeros((1, 1, 32, 32, 3), jnp.float32)
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))


def _rsa_layer_cfg(model, planes: int) -> dict:
    cfg = {k: v for k, v in dict(model.rsa).items() if k != "implementation"}
    cfg["features"] = planes
    return cfg


def _is_rsa_leaf(path: tuple) -> bool:
    return len(path) == 3 and path[1] == "conv2" and path[2] != "kernel"


def variables_to_state_dict(variables: Mapping, model) -> dict[str, np.ndarray]:
    """Flax variables of a `ResNetTSN` -> official state dict (no `module.` prefix)."""
    sd, rsa_groups = {}, {}
    for col in ("params", "batch_stats"):
        for path, v in _flatten(variables.get(col, {})).items():
            if col == "params" and _is_rsa_leaf(path):
                rsa_groups.setdefault(path[0], {})[path[2]] = v
                continue
            key, v = _torch_key(col, path), np.asarray(v)
            if path[0] == "new_fc" and path[-1] == "kernel":
                v = v.T[:, :, None]
            elif path[-1] == "kernel":
                v = conv3d_weight_to_torch(v)
            sd[key] = np.ascontiguousarray(v)
    for block, p in rsa_groups.items():
        for name, v in rsa_layer_params_to_torch(p).items():
            sd[f"base_model.{_module_to_torch(block)}.conv2.{name}"] = v
    return sd


def _expected_shapes(model) -> dict[str, tuple]:
    abstract = _abstract_variables(model)
    zeros = {col: {k: np.broadcast_to(np.zeros((), np.float32), v.shape) for k, v in
                   _flatten(abstract[col]).items()} for col in ("params", "batch_stats")}
    zeros = {col: _unflatten(v) for col, v in zeros.items()}
    return {k: v.shape for k, v in variables_to_state_dict(zeros, model).items()}


def _check_keys(found: Mapping[str, tuple], expected: Mapping[str, tuple], what: str,
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


def _official_explainer(state_dict: Mapping[str, Any], sd: Mapping[str, np.ndarray],
                        model) -> Callable[[str, str], str]:
    """Causes for the strict check of an official state dict: which RSA layers agree."""
    layers = rsa_layers(sd)
    legacy = {v: k for k, v in LEGACY_RSA_NAMES.items()}
    uses_legacy = any(k.split(".")[-2] in LEGACY_RSA_NAMES for k in state_dict if "." in k)
    rsa = dict(model.rsa) if model.backbone == "rsa" else {}
    types = f"kernel_type {rsa.get('kernel_type')}, context_type {rsa.get('context_type')}"

    def explain(kind: str, key: str) -> str:
        if key.startswith("new_fc.") and kind == "mis-shaped":
            return (f"; the file has {sd[key].shape[0]} classes, the model "
                    f"{model.num_classes}")
        m = _RSA_KEY.match(key)
        if not m or kind == "mis-shaped":
            return ""
        blk, name = m.groups()
        others = [f for b, f in layers.items() if b != blk]
        have = sum(name in f for f in others)
        old = legacy.get(name.split(".")[0])
        alias = f" (named {old}.weight in this file's older naming)" if uses_legacy and old \
            else ""
        if kind == "missing":
            return (f"{alias}; RSA layer {blk}.conv2 lacks it, {have} of the other "
                    f"{len(others)} RSA layers have it; {types}")
        return (f"; {len(others) - have} of the other {len(others)} RSA layers lack it, "
                f"so the model has none: {types}")
    return explain


def state_dict_to_variables(state_dict: Mapping[str, Any], model) -> dict:
    """Official state dict -> Flax variables of ``model``, strictly.

    Raises:
      CheckpointError: one line naming every missing, unexpected and mis-shaped key,
        with its cause where one is known (e.g. the other RSA layers' tensors).
    """
    sd = normalize_official_keys(state_dict)
    expected = _expected_shapes(model)
    prefix = "module." if any(str(k).startswith("module.") for k in state_dict) else ""
    _check_keys({k: v.shape for k, v in sd.items()}, expected, "checkpoint state_dict",
                explain=_official_explainer(state_dict, sd, model),
                show=lambda k: prefix + k)
    abstract = _abstract_variables(model)
    out = {}
    for col in ("params", "batch_stats"):
        flat = {}
        for path in _flatten(abstract[col]):
            if col == "params" and _is_rsa_leaf(path):
                continue
            v = sd[_torch_key(col, path)]
            if path[0] == "new_fc" and path[-1] == "kernel":
                v = v[:, :, 0].T
            elif path[-1] == "kernel":
                v = conv3d_weight_from_torch(v)
            flat[path] = np.ascontiguousarray(v, dtype=np.float32)
        out[col] = flat
    planes = {s["name"]: s["planes"] for s in model.block_specs()}
    for block in {p[0] for p in _flatten(abstract["params"]) if _is_rsa_leaf(p)}:
        prefix = f"base_model.{_module_to_torch(block)}.conv2."
        torch_p = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        for name, v in rsa_layer_params_from_torch(
                torch_p, _rsa_layer_cfg(model, planes[block])).items():
            out["params"][(block, "conv2", name)] = np.asarray(v, np.float32)
    return {col: _unflatten(flat) for col, flat in out.items()}


# --- Loading and orbax output (config inference: infer.py) ------------------

def load_official_checkpoint(path: str, num_segments: int | None = None,
                             trust_pickle: bool = False, **overrides):
    """Official RSA `.pth.tar` -> ``(model, variables)``.

    ``model.apply(variables, x, train=False)`` maps ``(N, T, H, W, 3)`` normalised
    frames to ``(N, num_classes)`` logits.  The model is frame-count agnostic;
    ``num_segments`` is accepted for symmetry with the official TSN and recorded.

    Args:
      path: `.pth.tar` / `.pth` (needs torch) or `.npz` state dict.
      overrides: model config fields to override after inference (e.g. dtype).

    Raises:
      CheckpointError: unreadable file, or a strict key/shape mismatch.
    """
    sd, _ = read_state_dict(path, trust_pickle=trust_pickle)
    cfg = infer_model_config(sd)
    cfg.update(overrides)
    model = build_model(cfg)
    variables = state_dict_to_variables(sd, model)
    return model, jax.tree_util.tree_map(jnp.asarray, variables)


def _save_orbax(out_dir: str, variables: Mapping, model_cfg: Mapping, info: Mapping,
                overwrite: bool) -> str:
    import orbax.checkpoint as ocp  # only the writers need it
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out_dir) and not overwrite:
        raise FileExistsError(f"{out_dir} exists; pass overwrite=True (--overwrite)")
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(out_dir, dict(variables), force=overwrite)
    ckptr.wait_until_finished()
    ckptr.close()
    # Beside the arrays, inside the checkpoint directory; orbax ignores other files.
    with open(os.path.join(out_dir, "model_config.json"), "w") as f:
        json.dump(model_cfg, f, indent=2)
    with open(os.path.join(out_dir, "conversion.json"), "w") as f:
        json.dump(info, f, indent=2, default=str)
    return out_dir


def official_to_orbax(pth_path: str, out_dir: str, num_segments: int | None = None,
                      overwrite: bool = False, trust_pickle: bool = False) -> dict:
    """Official `.pth.tar` -> orbax checkpoint directory; returns the model config.

    ``out_dir`` holds ``{'params', 'batch_stats'}`` (restore with
    ``ocp.StandardCheckpointer().restore(out_dir)``), ``model_config.json`` (the
    inferred config for `build_model`) and ``conversion.json`` (source file,
    epoch / arch / best_prec1 of the checkpoint, num_segments).
    """
    sd, meta = read_state_dict(pth_path, trust_pickle=trust_pickle)
    cfg = infer_model_config(sd)
    variables = state_dict_to_variables(sd, build_model(cfg))
    info = dict(source=os.path.abspath(pth_path), kind="official",
                num_segments=num_segments,
                **{k: v for k, v in meta.items() if isinstance(v, (int, float, str))})
    _save_orbax(out_dir, variables, cfg, info, overwrite)
    return cfg
