"""PyTorch -> Flax conversion of RSA parameters and checkpoints.

Layouts: PyTorch Conv3d weights are (O, I/groups, kT, kH, kW); ours are
channels-last (kT, kH, kW, I/groups, O).  `P1` and `I` drop their leading 1
and keep their index order ([j, d] and [c, e]): the official code broadcasts
them as is, so transposing `I` would silently change the model.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Any, Mapping

import numpy as np

from rsa_jax.layers.rsa import resolve_dims


def conv3d_weight_from_torch(w: np.ndarray) -> np.ndarray:
    """(O, I, kT, kH, kW) -> (kT, kH, kW, I, O)."""
    return np.ascontiguousarray(np.transpose(np.asarray(w), (2, 3, 4, 1, 0)))


def conv3d_weight_to_torch(w: np.ndarray) -> np.ndarray:
    """(kT, kH, kW, I, O) -> (O, I, kT, kH, kW)."""
    return np.ascontiguousarray(np.transpose(np.asarray(w), (4, 3, 0, 1, 2)))


def _rsa_expected_torch_shapes(d_in: int, layer_cfg: Mapping) -> dict[str, tuple]:
    d = resolve_dims(layer_cfg["features"], layer_cfg.get("num_heads", 8),
                     layer_cfg.get("key_dim"), layer_cfg.get("value_dim"),
                     layer_cfg.get("latent_dim"), layer_cfg.get("kernel_size", (5, 7, 7)),
                     layer_cfg.get("kernel_type", "VplusR"),
                     layer_cfg.get("context_type", "VplusR"))
    ks = tuple(int(k) for k in layer_cfg.get("kernel_size", (5, 7, 7)))
    kt, ct = layer_cfg.get("kernel_type", "VplusR"), layer_cfg.get("context_type", "VplusR")
    shapes = {"projection.weight": (d.d_hid, d_in, 1, 1, 1), "H2.weight": (d.dd, 1) + ks}
    if kt == "VplusR":
        shapes["P1"] = (1, d.dk, d.dd)
    if kt != "V":
        shapes["H1.weight"] = (d.dk * d.dd, 1) + ks
    if ct != "V":
        shapes["G.weight"] = (d.dv, 1) + ks
    if ct == "VplusR":
        shapes["I"] = (1, d.dk, d.dk)
    return shapes


def rsa_layer_params_from_torch(torch_params: Mapping[str, np.ndarray],
                                layer_cfg: Mapping) -> dict[str, np.ndarray]:
    """Official RSA parameters (PyTorch names and layouts) -> Flax `RSA` params.

    Args:
      torch_params: {'projection.weight', 'H1.weight', 'H2.weight', 'G.weight',
        'P1', 'I'} as present for the layer's types; numpy arrays (or tensors).
      layer_cfg: the `RSA` fields: features, num_heads, key_dim, value_dim,
        latent_dim, kernel_size, kernel_type, context_type (missing = defaults).
        The input width is read from `projection.weight`.

    Raises:
      KeyError / ValueError: listing missing, unexpected or mis-shaped entries.
    """
    arrays = {k: np.asarray(v) for k, v in torch_params.items()}
    if "projection.weight" not in arrays:
        raise KeyError(f"RSA parameters need 'projection.weight'; got {sorted(arrays)}")
    d_in = arrays["projection.weight"].shape[1]
    expected = _rsa_expected_torch_shapes(d_in, layer_cfg)
    missing = sorted(set(expected) - set(arrays))
    unexpected = sorted(set(arrays) - set(expected))
    bad = sorted(f"{k}: got {arrays[k].shape}, expected {expected[k]}"
                 for k in set(expected) & set(arrays) if arrays[k].shape != expected[k])
    if missing or unexpected or bad:
        raise ValueError(f"RSA parameters do not match the layer config {dict(layer_cfg)}: "
                         f"missing={missing} unexpected={unexpected} mis-shaped={bad}")
    out = {"projection": arrays["projection.weight"][:, :, 0, 0, 0].T.copy(),
           "H2": conv3d_weight_from_torch(arrays["H2.weight"])}
    if "H1.weight" in arrays:
        out["H1"] = conv3d_weight_from_torch(arrays["H1.weight"])
    if "G.weight" in arrays:
        out["G"] = conv3d_weight_from_torch(arrays["G.weight"])
    if "P1" in arrays:
        out["P1"] = arrays["P1"][0].copy()
    if "I" in arrays:
        out["I"] = arrays["I"][0].copy()
    return out


def rsa_layer_params_to_torch(params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Inverse of `rsa_layer_params_from_torch` (Flax params -> official names)."""
    p = {k: np.asarray(v) for k, v in params.items()}
    out = {"projection.weight": p["projection"].T[:, :, None, None, None].copy(),
           "H2.weight": conv3d_weight_to_torch(p["H2"])}
    if "H1" in p:
        out["H1.weight"] = conv3d_weight_to_torch(p["H1"])
    if "G" in p:
        out["G.weight"] = conv3d_weight_to_torch(p["G"])
    if "P1" in p:
        out["P1"] = p["P1"][None].copy()
    if "I" in p:
        out["I"] = p["I"][None].copy()
    return out


# ---------------------------------------------------------------------------
# Whole networks: official RSA checkpoints and torchvision ImageNet ResNets.
# ---------------------------------------------------------------------------
#
# Flax tree  <->  official state dict (after stripping `module.`):
#   params/conv1/kernel                  base_model.conv1.weight          (OIDHW -> DHWIO)
#   params/bn1/{scale,bias}              base_model.bn1.{weight,bias}
#   batch_stats/bn1/{mean,var}           base_model.bn1.running_{mean,var}
#   params/layer2_1/conv2/<RSA param>    base_model.layer2.1.conv2.<RSA name> (see above)
#   params/layer2_0/downsample_conv/...  base_model.layer2.0.downsample.0.weight
#   params/layer2_0/downsample_bn/...    base_model.layer2.0.downsample.1.*
#   params/new_fc/kernel (C, K)          new_fc.weight (K, C, 1);  new_fc/bias  new_fc.bias
# `num_batches_tracked` counters are accepted and dropped.

_BN_LEAF = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
_RSA_LEAF = {"projection": "projection.weight", "H1": "H1.weight", "H2": "H2.weight",
             "G": "G.weight", "P1": "P1", "I": "I"}
# Older module names of the logged runs (rsa-method.md §2.7): RelationInvolution's
# E_conv/E_feat/E_feat_2 are the released H1/H2/G (H2/G by registration order).
LEGACY_RSA_NAMES = {"E_conv": "H1", "E_feat": "H2", "E_feat_2": "G"}
_OPTIONAL_SUFFIX = ".num_batches_tracked"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not match the model (strict)."""


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
    import jax
    import jax.numpy as jnp
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
    """Strips `module.`, renames legacy RSA modules, drops `num_batches_tracked`."""
    out = {}
    for key, v in state_dict.items():
        k = key[len("module."):] if key.startswith("module.") else key
        if k.endswith(_OPTIONAL_SUFFIX):
            continue
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


# --- Reading files ---------------------------------------------------------

def read_state_dict(path: str, trust_pickle: bool = False) -> tuple[dict, dict]:
    """Reads a `.pth` / `.pth.tar` (torch.save) or `.npz` file.

    Returns:
      (state_dict of numpy arrays, metadata: the checkpoint's other top-level
      entries such as epoch / arch / best_prec1).

    Raises:
      FileNotFoundError; CheckpointError for truncated or non-checkpoint files;
      ImportError when a torch file is given and PyTorch is not installed.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}, {}
        except Exception as e:  # zipfile.BadZipFile, ValueError, EOFError ...
            raise CheckpointError(f"{path}: not a readable .npz state dict "
                                  f"(truncated or corrupt?): {e}") from e
    try:
        import torch  # optional dependency, only for reading PyTorch files
    except ImportError as e:
        raise ImportError(f"reading {path} needs PyTorch (an optional dependency of the "
                          "converter): pip install torch, or save the state dict as .npz"
                          ) from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except Exception as e:
        hint = ("" if trust_pickle or "weights_only" not in str(e) else
                " If the file is from a trusted source and stores non-tensor Python "
                "objects, retry with trust_pickle=True (--trust_pickle).")
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated, "
                              f"corrupt or not written by torch.save): "
                              f"{type(e).__name__}: {str(e)[:300]}{hint}") from e
    if isinstance(obj, Mapping) and "state_dict" in obj:
        sd, meta = obj["state_dict"], {k: v for k, v in obj.items() if k != "state_dict"}
    elif isinstance(obj, Mapping):
        sd, meta = obj, {}
    else:
        raise CheckpointError(f"{path}: expected a dict (a state_dict, or a checkpoint "
                              f"with a 'state_dict' entry), got {type(obj).__name__}")
    if not isinstance(sd, Mapping) or not sd:
        raise CheckpointError(f"{path}: 'state_dict' is empty or not a dict")
    bad = sorted(k for k, v in sd.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise CheckpointError(f"{path}: state_dict entries that are not tensors: {bad[:20]}")
    arrays = {str(k): v.detach().cpu().numpy() for k, v in sd.items()}
    meta = {k: (v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v)
            for k, v in meta.items()}
    return arrays, meta


# --- Official RSA checkpoints ----------------------------------------------

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
    (training-only) take the paper's values.
    """
    from rsa_jax.models import STAGE_BLOCKS, default_model_config
    sd = normalize_official_keys(state_dict)
    if "base_model.conv1.weight" not in sd or "new_fc.weight" not in sd:
        raise CheckpointError(
            "not an official RSA/TSN state dict: expected keys 'module.base_model.conv1.weight' "
            f"and 'module.new_fc.weight'; first keys found: {list(state_dict)[:8]}")
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
    import jax.numpy as jnp
    from rsa_jax.models import build_model
    sd, _ = read_state_dict(path, trust_pickle=trust_pickle)
    cfg = infer_model_config(sd)
    cfg.update(overrides)
    model = build_model(cfg)
    variables = state_dict_to_variables(sd, model)
    import jax
    return model, jax.tree_util.tree_map(jnp.asarray, variables)


def _save_orbax(out_dir: str, variables: Mapping, model_cfg: Mapping, info: Mapping,
                overwrite: bool) -> str:
    import orbax.checkpoint as ocp
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
    from rsa_jax.models import build_model
    cfg = infer_model_config(sd)
    variables = state_dict_to_variables(sd, build_model(cfg))
    info = dict(source=os.path.abspath(pth_path), kind="official",
                num_segments=num_segments,
                **{k: v for k, v in meta.items() if isinstance(v, (int, float, str))})
    _save_orbax(out_dir, variables, cfg, info, overwrite)
    return cfg


# --- torchvision ImageNet ResNets --------------------------------------------

def torchvision_to_backbone(state_dict_or_path: Any, model_cfg: Any,
                            trust_pickle: bool = False) -> dict:
    """torchvision ImageNet ResNet state dict -> inflated backbone variables.

    As the official code (rsa-method.md §3.4): 2-D kernels get a unit temporal
    axis ((O,I,kh,kw) -> (O,I,1,kh,kw)); for 'tsn3d' middle convs with kT > 1
    the kernel is repeated over time and divided by kT (I3D inflation, not in
    the official code).  ``fc.*`` is skipped, and so is **every** entry of the
    blocks that carry RSA (their conv1/bn1/bn2/conv3/bn3 keep the fresh MSRA
    init with bn3 γ = 0).  Returns a partial ``{'params', 'batch_stats'}`` tree;
    combine with `merge_pretrained(fresh_variables, this)`.

    Raises:
      CheckpointError: listing missing, unexpected or mis-shaped keys.
    """
    from rsa_jax.models import build_model
    model = build_model(model_cfg)
    if isinstance(state_dict_or_path, (str, os.PathLike)):
        sd, _ = read_state_dict(state_dict_or_path, trust_pickle=trust_pickle)
    else:
        sd = {k: np.asarray(v) for k, v in state_dict_or_path.items()}
    sd = {k: v for k, v in sd.items() if not k.endswith(_OPTIONAL_SUFFIX)}
    # What torchvision's file holds for this depth: the plain model's keys, 2-D.
    plain = build_model(dict(_cfg_dict(model_cfg), backbone="tsn2d"))
    expected = {}
    for key, shape in _expected_shapes(plain).items():
        if key.startswith("base_model."):
            expected[key[len("base_model."):]] = shape[:2] + shape[3:] if len(shape) == 5 \
                else shape
    fc = {k: v.shape for k, v in sd.items() if k in ("fc.weight", "fc.bias")}
    _check_keys({k: v.shape for k, v in sd.items() if k not in fc}, expected,
                "torchvision state dict")
    rsa_blocks = {s["name"] for s in model.block_specs() if s["rsa"]}
    abstract = _abstract_variables(model)
    out = {}
    for col in ("params", "batch_stats"):
        flat = {}
        for path, leaf in _flatten(abstract[col]).items():
            if path[0] == "new_fc" or path[0] in rsa_blocks:
                continue
            v = sd[_torch_key(col, path)[len("base_model."):]]
            if path[-1] == "kernel":
                kt = leaf.shape[0]
                v = np.repeat(v[:, :, None], kt, axis=2) / kt
                v = conv3d_weight_from_torch(v)
            flat[path] = np.ascontiguousarray(v, dtype=np.float32)
        out[col] = _unflatten(flat)
    return out


def backbone_to_torchvision(variables: Mapping, model_cfg: Any) -> dict[str, np.ndarray]:
    """Inverse of `torchvision_to_backbone` for the non-RSA blocks (kT = 1 kernels)."""
    from rsa_jax.models import build_model
    model = build_model(model_cfg)
    rsa_blocks = {_module_to_torch(s["name"]) for s in model.block_specs() if s["rsa"]}
    sd = variables_to_state_dict({c: variables[c] for c in ("params", "batch_stats")}, model)
    out = {}
    for k, v in sd.items():
        if not k.startswith("base_model.") or ".".join(k.split(".")[1:3]) in rsa_blocks:
            continue
        out[k[len("base_model."):]] = v.sum(axis=2) if v.ndim == 5 else v
    return out


def merge_pretrained(fresh_variables: Mapping, pretrained_variables: Mapping) -> dict:
    """``fresh`` with every leaf present in ``pretrained`` overwritten.

    Raises:
      CheckpointError: a pretrained leaf that ``fresh`` lacks, or a shape mismatch.
    """
    import jax.numpy as jnp
    fresh = _flatten(fresh_variables)
    pre = _flatten(pretrained_variables)
    unknown = sorted("/".join(p) for p in pre if p not in fresh)
    bad = sorted(f"{'/'.join(p)}: {np.shape(v)} vs fresh {np.shape(fresh[p])}"
                 for p, v in pre.items() if p in fresh and np.shape(v) != np.shape(fresh[p]))
    if unknown or bad:
        raise CheckpointError(f"pretrained variables do not fit the model: "
                              f"unknown={unknown} mis-shaped={bad}")
    merged = dict(fresh)
    for p, v in pre.items():
        merged[p] = jnp.asarray(v, dtype=getattr(fresh[p], "dtype", None))
    return _unflatten(merged)


def _cfg_dict(model_cfg: Any) -> dict:
    from rsa_jax.models import _to_plain
    return dict(_to_plain(model_cfg))


# --- CLI -------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rsa_jax.convert",
        description="Convert PyTorch checkpoints to orbax checkpoints for rsa_jax.")
    sub = parser.add_subparsers(dest="kind", required=True)
    p = sub.add_parser("official", help="official RSA .pth.tar -> orbax (params, batch_stats)")
    p.add_argument("input")
    p.add_argument("out_dir")
    p.add_argument("--num_segments", type=int, default=None)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--trust_pickle", action="store_true",
                   help="allow arbitrary pickled objects (torch.load weights_only=False)")
    p = sub.add_parser("torchvision",
                       help="torchvision ImageNet ResNet .pth -> inflated backbone (orbax)")
    p.add_argument("input")
    p.add_argument("out_dir")
    p.add_argument("--model_config", default=None,
                   help="JSON model config (default: the paper's RSA-R50)")
    p.add_argument("--depth", type=int, default=None)
    p.add_argument("--backbone", default=None, choices=("rsa", "tsn2d", "tsn3d"))
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--trust_pickle", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.kind == "official":
            cfg = official_to_orbax(args.input, args.out_dir, num_segments=args.num_segments,
                                    overwrite=args.overwrite, trust_pickle=args.trust_pickle)
        else:
            from rsa_jax.models import default_model_config
            cfg = default_model_config()
            if args.model_config:
                cfg.update(json.loads(args.model_config))
            for k in ("depth", "backbone"):
                if getattr(args, k) is not None:
                    cfg[k] = getattr(args, k)
            variables = torchvision_to_backbone(args.input, cfg,
                                                trust_pickle=args.trust_pickle)
            _save_orbax(args.out_dir, variables, cfg,
                        dict(source=os.path.abspath(args.input), kind="torchvision"),
                        args.overwrite)
    except (CheckpointError, FileNotFoundError, FileExistsError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"out_dir": os.path.abspath(args.out_dir), "model_config": cfg}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
