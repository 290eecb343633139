"""Models: TSN-ResNet with RSA blocks and its plain 2D/3D-conv baselines."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jax_core

from rsa_jax.models.resnet_tsn import (
    BACKBONES,
    STAGE_BLOCKS,
    ResNetTSN,
    survival_probs,
)

__all__ = ["ResNetTSN", "build_model", "model_stats", "default_model_config", "jaxpr_macs",
           "survival_probs", "STAGE_BLOCKS", "BACKBONES"]

_RSA_FIELDS = ("num_heads", "kernel_size", "kernel_type", "context_type", "implementation",
               "key_dim", "value_dim", "latent_dim", "conv_strategy")
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def default_model_config() -> dict:
    """The paper's RSANet-R50 (docs/method.md#network), as a plain dict."""
    return dict(depth=50, width=64, num_classes=174, backbone="rsa",
                rsa_positions=[[2], [1, 3], [1, 3, 5], [1]],
                rsa=dict(num_heads=8, kernel_size=[5, 7, 7], kernel_type="VplusR",
                         context_type="VplusR", implementation="conv", key_dim=None,
                         value_dim=None, latent_dim=None),
                dropout=0.3, stochastic_depth=0.2, dtype="float32",
                bn_momentum=0.9, bn_eps=1e-5, bn_group_clips=0, remat="none")


def _get(cfg: Any, key: str, default: Any) -> Any:
    try:
        value = cfg[key]
    except (KeyError, AttributeError):
        return default
    return default if value is None and default is not None else value


def to_plain(x: Any) -> Any:
    """A config (ConfigDict or nested mappings and sequences) as plain dicts and lists."""
    if hasattr(x, "to_dict"):
        x = x.to_dict()
    if isinstance(x, Mapping):
        return {k: to_plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_plain(v) for v in x]
    return x


def build_model(model_cfg: Any, platform: str | None = None) -> ResNetTSN:
    """`ResNetTSN` from an ml_collections.ConfigDict or a plain mapping.

    Missing fields take the paper's values (`default_model_config`).  ``dtype`` is
    'float32' | 'bfloat16' (compute); parameters are always float32.  The platform
    the program is built for, which picks every layer's backend forms, is the
    config's ``platform`` when set, else `platform` (the caller's mesh's,
    `rsa_jax.parallel.mesh_platform`), else the default devices'.
    """
    d = default_model_config()
    cfg = to_plain(model_cfg)
    unknown = set(cfg) - set(d) - {"precision", "platform"}
    if unknown:  # tolerated (a config may carry extra bookkeeping), but visible
        warnings.warn(f"build_model ignores unknown model config fields {sorted(unknown)}; "
                      f"known: {sorted(d)}", stacklevel=2)
    rsa_cfg = dict(d["rsa"])
    rsa_cfg.update(_get(cfg, "rsa", {}) or {})
    bad = set(rsa_cfg) - set(_RSA_FIELDS)
    if bad:
        raise ValueError(f"unknown rsa config fields {sorted(bad)}; known: {_RSA_FIELDS}")
    rsa_cfg["kernel_size"] = tuple(int(k) for k in rsa_cfg["kernel_size"])
    dtype = _get(cfg, "dtype", "float32")
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        dtype = _DTYPES[dtype]
    return ResNetTSN(
        depth=int(_get(cfg, "depth", d["depth"])),
        width=int(_get(cfg, "width", d["width"])),
        num_classes=int(_get(cfg, "num_classes", d["num_classes"])),
        backbone=str(_get(cfg, "backbone", d["backbone"])),
        rsa_positions=tuple(tuple(int(i) for i in p)
                            for p in _get(cfg, "rsa_positions", d["rsa_positions"])),
        rsa=tuple((k, rsa_cfg[k]) for k in _RSA_FIELDS if k in rsa_cfg),
        dropout=float(_get(cfg, "dropout", d["dropout"])),
        stochastic_depth=float(_get(cfg, "stochastic_depth", d["stochastic_depth"])),
        bn_momentum=float(_get(cfg, "bn_momentum", d["bn_momentum"])),
        bn_eps=float(_get(cfg, "bn_eps", d["bn_eps"])),
        bn_group_clips=int(_get(cfg, "bn_group_clips", d["bn_group_clips"])),
        dtype=dtype, precision=_get(cfg, "precision", None),
        remat=str(_get(cfg, "remat", d["remat"])),
        platform=_get(cfg, "platform", None) or platform)


def count_params(tree: Any) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(tree)))


def jaxpr_macs(jaxpr) -> int:
    """fvcore-style multiply-accumulates of a jaxpr (docs/method.md#complexity).

    Convolutions count out-elements × (in / groups) × kernel volume (padding
    taps included, as fvcore does); dot_general / einsum the product of all index
    sizes.  Everything else (batch norm, pooling, element-wise ops) counts 0.
    """
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            rhs = eqn.invars[1].aval.shape
            spec = eqn.params["dimension_numbers"].rhs_spec  # (out, in, *spatial)
            per_out = rhs[spec[1]] * int(np.prod([rhs[d] for d in spec[2:]]))
            total += int(np.prod(eqn.outvars[0].aval.shape)) * per_out
        elif name == "dot_general":
            (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
            lhs, rhs = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
            free = [d for i, d in enumerate(rhs) if i not in rc and i not in rb]
            total += int(np.prod(lhs)) * int(np.prod(free))
        for sub in jax_core.jaxprs_in_params(eqn.params):
            total += jaxpr_macs(sub)
    return total


def model_stats(model_cfg: Any, num_frames: int, image_size: int = 224) -> dict:
    """Parameter count and XLA cost-analysis FLOPs of one clip (eval forward).

    Returns:
      {'params': int, 'flops': float, 'macs': float, 'fvcore_macs': int}.
      ``flops`` is XLA's count
      for one ``(1, num_frames, image_size, image_size, 3)`` clip with
      ``train=False``: it counts a multiply-add as 2 flops and also counts
      batch norm, ReLU, pooling, the L2 norms and the residual adds.  ``macs`` is
      ``flops / 2``, so it is slightly above fvcore's count, which covers only
      convolutions, einsums and the classifier (71.774 GMAC for RSA-R50 at 16
      frames, 224²; see README.md, "Size and cost").  XLA also skips the
      zero-padding taps of convolutions, which fvcore counts.  ``fvcore_macs``
      walks the jaxpr with fvcore's rules, for comparison with the paper.
    """
    model = build_model(model_cfg)
    x = jax.ShapeDtypeStruct((1, num_frames, image_size, image_size, 3), jnp.float32)
    variables = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(x.shape, x.dtype), train=False))
    fwd = jax.jit(lambda v, x: model.apply(v, x, train=False))
    cost = fwd.lower(variables, x).compile().cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    flops = float(cost["flops"])
    # fvcore counts the official graph: convolutions only, no banded matrices' zeros.
    conv_only = model.clone(rsa=tuple(dict(model.rsa, conv_strategy="taps2d").items()))
    jaxpr = jax.make_jaxpr(lambda v, x: conv_only.apply(v, x, train=False))(variables, x)
    return {"params": count_params(variables["params"]), "flops": flops, "macs": flops / 2,
            "fvcore_macs": jaxpr_macs(jaxpr.jaxpr)}
