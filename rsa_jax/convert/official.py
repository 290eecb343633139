"""Official RSA/TSN checkpoints <-> Flax `ResNetTSN` variables.

Key mapping, config inference from shapes, strict loading and the orbax output of
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
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rsa_jax.convert.rsa_layer import (
    _rsa_expected_torch_shapes,
    conv3d_weight_from_torch,
    conv3d_weight_to_torch,
    rsa_layer_params_from_torch,
    rsa_layer_params_to_torch,
)
from rsa_jax.convert.torch_io import CheckpointError, read_state_dict
from rsa_jax.models import STAGE_BLOCKS, build_model, default_model_config

_BN_LEAF = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
_RSA_LEAF = {"projection": "projection.weight", "H1": "H1.weight", "H2": "H2.weight",
             "G": "G.weight", "P1": "P1", "I": "I"}
# Older module names of the logged runs (docs/method.md#parameter-names): RelationInvolution's
# E_conv/E_feat/E_feat_2 are the released H1/H2/G (H2/G by registration order).
LEGACY_RSA_NAMES = {"E_conv": "H1", "E_feat": "H2", "E_feat_2": "G"}
_OPTIONAL_SUFFIX = ".num_batches_tracked"
# The classifier of a dropout-0 official model (TSN._prepare_tsn, dropout == 0).
_FC1_AS_NEW_FC = {"base_model.fc1.weight": "new_fc.weight", "base_model.fc1.bias": "new_fc.bias"}


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
                optional: set = frozenset()) -> None:
    missing = sorted(k for k in expected if k not in found and k not in optional)
    unexpected = sorted(k for k in found if k not in expected)
    bad = sorted(f"{k}: {tuple(found[k])} (expected {tuple(expected[k])})"
                 for k in expected if k in found and tuple(found[k]) != tuple(expected[k]))
    if missing or unexpected or bad:
        lines = [f"{what} does not match the model; nothing was loaded."]
        for title, items in (("missing", missing), ("unexpected", unexpected),
                             ("mis-shaped", bad)):
            if items:
                lines.append(f"  {len(items)} {title}: " + ", ".join(items))
        raise CheckpointError("\n".join(lines))


def normalize_official_keys(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Strips `module.`, renames legacy RSA modules and a dropout-0 model's classifier
    `base_model.fc1.*` to `new_fc.*`, drops `num_batches_tracked`.

    Raises:
      CheckpointError: two keys that name the same entry after renaming.
    """
    out = {}
    for key, v in state_dict.items():
        k = key[len("module."):] if key.startswith("module.") else key
        if k.endswith(_OPTIONAL_SUFFIX):
            continue
        k = _FC1_AS_NEW_FC.get(k, k)
        parts = k.split(".")
        parts = [LEGACY_RSA_NAMES.get(p, p) if i == len(parts) - 2 else p
                 for i, p in enumerate(parts)]
        k = ".".join(parts)
        if k in out:
            raise CheckpointError(f"key {key!r} collides with another entry after "
                                  f"renaming to {k!r}")
        out[k] = np.asarray(v)
    return out


def state_dict_to_variables(state_dict: Mapping[str, Any], model) -> dict:
    """Official state dict -> Flax variables of ``model``, strictly.

    Raises:
      CheckpointError: listing every missing, unexpected and mis-shaped key.
    """
    sd = normalize_official_keys(state_dict)
    expected = _expected_shapes(model)
    _check_keys({k: v.shape for k, v in sd.items()}, expected, "checkpoint state_dict")
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


# --- Config inference, loading and orbax output ----------------------------

def _solve_rsa_heads(sd: Mapping[str, np.ndarray], rsa_blocks: list[str],
                     planes: Mapping[str, int], base: dict) -> dict:
    """Finds num_heads (and explicit dims if needed) matching every RSA layer."""
    # Sizes come from the first RSA layer; the strict key check that follows then
    # reports any other layer that disagrees, key by key.
    def fits(cfg):
        for blk in rsa_blocks[:1]:
            prefix = f"{blk}.conv2."
            found = {k[len(prefix):]: tuple(v.shape) for k, v in sd.items()
                     if k.startswith(prefix)}
            d_in = found.get("projection.weight", (0, 0))[1]
            try:
                exp = _rsa_expected_torch_shapes(d_in, dict(cfg, features=planes[blk]))
            except ValueError:
                return False
            if exp != found:
                return False
        return True

    first = f"{rsa_blocks[0]}.conv2."
    d_hid = sd[first + "projection.weight"].shape[0]
    for nh in range(1, d_hid + 1):
        cfg = dict(base, num_heads=nh, key_dim=None, value_dim=None, latent_dim=None)
        if fits(cfg):
            return cfg
    # Explicit (non-default) sizes, read from the first layer's shapes.
    dd = sd[first + "H2.weight"].shape[0]
    dk = (sd[first + "H1.weight"].shape[0] // dd if first + "H1.weight" in sd else dd)
    dv = sd[first + "G.weight"].shape[0] if first + "G.weight" in sd else None
    for nh in range(1, d_hid + 1):
        dv_ = dv or d_hid - nh * dk - (0 if base["kernel_type"] == "V" else dk)
        cfg = dict(base, num_heads=nh, key_dim=dk, value_dim=dv_, latent_dim=dd)
        if dv_ > 0 and fits(cfg):
            return cfg
    raise CheckpointError(f"cannot infer RSA head sizes from {first}* shapes "
                          f"{ {k: v.shape for k, v in sd.items() if k.startswith(first)} }")


def infer_model_config(state_dict: Mapping[str, Any]) -> dict:
    """Model config (see `rsa_jax.models.build_model`) read off a state dict's shapes.

    Depth, width, class count, backbone, RSA positions, kernel size, kernel and
    context types and head sizes are inferred; dropout and stochastic depth
    (training-only) take the paper's values, except that a `base_model.fc1`
    classifier means dropout 0.

    Raises:
      CheckpointError: keys or shapes that no supported model has.
    """
    sd = normalize_official_keys(state_dict)
    if "base_model.conv1.weight" not in sd or "new_fc.weight" not in sd:
        raise CheckpointError(
            "not an official RSA/TSN state dict: expected keys 'module.base_model.conv1.weight' "
            "and 'module.new_fc.weight' (or 'module.base_model.fc1.weight' for dropout 0); "
            f"first keys found: {list(state_dict)[:8]}")
    counts = [0, 0, 0, 0]
    for k in sd:
        m = re.match(r"base_model\.layer([1-4])\.(\d+)\.", k)
        if m:
            s, b = int(m.group(1)) - 1, int(m.group(2))
            counts[s] = max(counts[s], b + 1)
    kind = "bottleneck" if "base_model.layer1.0.conv3.weight" in sd else "basic"
    depth = [d for d, (kd, c) in STAGE_BLOCKS.items() if kd == kind and list(c) == counts]
    if not depth:
        raise CheckpointError(f"blocks per stage {counts} ({kind} blocks) match no "
                              f"ResNet depth {sorted(STAGE_BLOCKS)}")
    cfg = default_model_config()
    cfg.update(depth=depth[0], width=int(sd["base_model.conv1.weight"].shape[0]),
               num_classes=int(sd["new_fc.weight"].shape[0]))
    if any(k.removeprefix("module.") in _FC1_AS_NEW_FC for k in state_dict):
        cfg["dropout"] = 0.0  # an fc1 classifier means the model was built with dropout 0
    rsa_blocks, positions = [], [[], [], [], []]
    for s in range(4):
        for b in range(counts[s]):
            if f"base_model.layer{s + 1}.{b}.conv2.projection.weight" in sd:
                rsa_blocks.append(f"base_model.layer{s + 1}.{b}")
                positions[s].append(b)
    planes = {blk: int(sd[blk + ".conv1.weight"].shape[0]) for blk in rsa_blocks
              if blk + ".conv1.weight" in sd}
    if rsa_blocks:
        first = rsa_blocks[0] + ".conv2."
        if first + "H2.weight" not in sd:
            raise CheckpointError(f"RSA layer {first[:-1]} has no H2.weight (or E_feat)")
        kt = ("VplusR" if first + "P1" in sd else "R" if first + "H1.weight" in sd else "V")
        ct = ("VplusR" if first + "I" in sd else "R" if first + "G.weight" in sd else "V")
        base = dict(kernel_size=[int(k) for k in sd[first + "H2.weight"].shape[2:]],
                    kernel_type=kt, context_type=ct, implementation="conv")
        cfg["rsa"] = _solve_rsa_heads(sd, rsa_blocks, planes, base)
        cfg["backbone"], cfg["rsa_positions"] = "rsa", positions
    else:
        mid = sd["base_model.layer1.0.conv2.weight"].shape
        cfg["backbone"] = "tsn3d" if mid[2] > 1 else "tsn2d"
    return cfg


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
