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
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rsa_jax.convert.infer import (
    LEGACY_RSA_NAMES,
    RSA_KEY,
    infer_model_config,
    normalize_official_keys,
    rsa_layers,
)
from rsa_jax.convert.keys import (
    abstract_variables,
    check_keys,
    expected_shapes,
    flatten,
    is_rsa_leaf,
    module_to_torch,
    torch_key,
    unflatten,
)
from rsa_jax.convert.rsa_layer import conv3d_weight_from_torch, rsa_layer_params_from_torch
from rsa_jax.convert.torch_io import read_state_dict
from rsa_jax.models import build_model

__all__ = ["LEGACY_RSA_NAMES", "infer_model_config", "normalize_official_keys",
           "load_official_checkpoint", "official_to_orbax", "save_orbax",
           "state_dict_to_variables"]


def _rsa_layer_cfg(model, planes: int) -> dict:
    cfg = {k: v for k, v in dict(model.rsa).items() if k != "implementation"}
    cfg["features"] = planes
    return cfg


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
        m = RSA_KEY.match(key)
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
    expected = expected_shapes(model)
    prefix = "module." if any(str(k).startswith("module.") for k in state_dict) else ""
    check_keys({k: v.shape for k, v in sd.items()}, expected, "checkpoint state_dict",
                explain=_official_explainer(state_dict, sd, model),
                show=lambda k: prefix + k)
    abstract = abstract_variables(model)
    out = {}
    for col in ("params", "batch_stats"):
        flat = {}
        for path in flatten(abstract[col]):
            if col == "params" and is_rsa_leaf(path):
                continue
            v = sd[torch_key(col, path)]
            if path[0] == "new_fc" and path[-1] == "kernel":
                v = v[:, :, 0].T
            elif path[-1] == "kernel":
                v = conv3d_weight_from_torch(v)
            flat[path] = np.ascontiguousarray(v, dtype=np.float32)
        out[col] = flat
    planes = {s["name"]: s["planes"] for s in model.block_specs()}
    for block in {p[0] for p in flatten(abstract["params"]) if is_rsa_leaf(p)}:
        prefix = f"base_model.{module_to_torch(block)}.conv2."
        torch_p = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        for name, v in rsa_layer_params_from_torch(
                torch_p, _rsa_layer_cfg(model, planes[block])).items():
            out["params"][(block, "conv2", name)] = np.asarray(v, np.float32)
    return {col: unflatten(flat) for col, flat in out.items()}


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


def save_orbax(out_dir: str, variables: Mapping, model_cfg: Mapping, info: Mapping,
                overwrite: bool) -> str:
    """Writes ``variables`` as an orbax checkpoint in ``out_dir``, with
    ``model_config.json`` and ``conversion.json`` (``info``) beside the arrays;
    returns the absolute ``out_dir``.

    Raises:
      FileExistsError: ``out_dir`` exists and ``overwrite`` is False.
    """
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
    save_orbax(out_dir, variables, cfg, info, overwrite)
    return cfg
