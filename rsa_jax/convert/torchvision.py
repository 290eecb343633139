"""torchvision ImageNet ResNets -> inflated `ResNetTSN` backbones, and merging.

The official network starts from torchvision's ImageNet ResNet-50: 2-D kernels
gain a unit temporal axis, the classifier is dropped, and the blocks that carry
RSA keep their fresh initialisation (docs/method.md#imagenet-init).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from rsa_jax.convert.infer import OPTIONAL_SUFFIX, resnet_layout
from rsa_jax.convert.keys import (
    abstract_variables,
    check_keys,
    expected_shapes,
    flatten,
    module_to_torch,
    torch_key,
    unflatten,
    variables_to_state_dict,
)
from rsa_jax.convert.rsa_layer import conv3d_weight_from_torch
from rsa_jax.convert.torch_io import CheckpointError, read_state_dict
from rsa_jax.models import STAGE_BLOCKS, build_model, to_plain


def torchvision_to_backbone(state_dict_or_path: Any, model_cfg: Any,
                            trust_pickle: bool = False) -> dict:
    """torchvision ImageNet ResNet state dict -> inflated backbone variables.

    As the official code (docs/method.md#imagenet-init): 2-D kernels get a unit temporal
    axis ((O,I,kh,kw) -> (O,I,1,kh,kw)); for 'tsn3d' middle convs with kT > 1
    the kernel is repeated over time and divided by kT (I3D inflation, not in
    the official code).  ``fc.*`` is skipped, and so is **every** entry of the
    blocks that carry RSA (their conv1/bn1/bn2/conv3/bn3 keep the fresh MSRA
    init with bn3 γ = 0).  Returns a partial ``{'params', 'batch_stats'}`` tree;
    combine with `merge_pretrained(fresh_variables, this)`.

    Raises:
      CheckpointError: a file of another depth or width than the model (one line
        saying so), or one line listing missing, unexpected or mis-shaped keys.
    """
    model = build_model(model_cfg)
    if isinstance(state_dict_or_path, (str, os.PathLike)):
        sd, _ = read_state_dict(state_dict_or_path, trust_pickle=trust_pickle)
    else:
        sd = {k: np.asarray(v) for k, v in state_dict_or_path.items()}
    sd = {k: v for k, v in sd.items() if not k.endswith(OPTIONAL_SUFFIX)}
    _check_architecture(sd, model)
    # What torchvision's file holds for this depth: the plain model's keys, 2-D.
    plain = build_model(dict(_cfg_dict(model_cfg), backbone="tsn2d"))
    expected = {}
    for key, shape in expected_shapes(plain).items():
        if key.startswith("base_model."):
            expected[key[len("base_model."):]] = shape[:2] + shape[3:] if len(shape) == 5 \
                else shape
    fc = {k: v.shape for k, v in sd.items() if k in ("fc.weight", "fc.bias")}
    rsa_blocks = {s["name"] for s in model.block_specs() if s["rsa"]}
    # The blocks RSA replaces are skipped whole: what the file has there is not checked.
    skipped = {module_to_torch(b) for b in rsa_blocks}

    def used(key: str) -> bool:
        return ".".join(key.split(".")[:2]) not in skipped

    check_keys({k: v.shape for k, v in sd.items() if k not in fc and used(k)},
               {k: v for k, v in expected.items() if used(k)}, "torchvision state dict")
    abstract = abstract_variables(model)
    out = {}
    for col in ("params", "batch_stats"):
        flat = {}
        for path, leaf in flatten(abstract[col]).items():
            if path[0] == "new_fc" or path[0] in rsa_blocks:
                continue
            v = sd[torch_key(col, path)[len("base_model."):]]
            if path[-1] == "kernel":
                kt = leaf.shape[0]
                v = np.repeat(v[:, :, None], kt, axis=2) / kt
                v = conv3d_weight_from_torch(v)
            flat[path] = np.ascontiguousarray(v, dtype=np.float32)
        out[col] = unflatten(flat)
    return out


def backbone_to_torchvision(variables: Mapping, model_cfg: Any) -> dict[str, np.ndarray]:
    """Inverse of `torchvision_to_backbone` for the non-RSA blocks (kT = 1 kernels)."""
    model = build_model(model_cfg)
    rsa_blocks = {module_to_torch(s["name"]) for s in model.block_specs() if s["rsa"]}
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
    fresh = flatten(fresh_variables)
    pre = flatten(pretrained_variables)
    unknown = sorted("/".join(p) for p in pre if p not in fresh)
    bad = sorted(f"{'/'.join(p)}: {np.shape(v)} vs fresh {np.shape(fresh[p])}"
                 for p, v in pre.items() if p in fresh and np.shape(v) != np.shape(fresh[p]))
    if unknown or bad:
        raise CheckpointError(f"pretrained variables do not fit the model: "
                              f"unknown={unknown} mis-shaped={bad}")
    merged = dict(fresh)
    for p, v in pre.items():
        merged[p] = jnp.asarray(v, dtype=getattr(fresh[p], "dtype", None))
    return unflatten(merged)


def _cfg_dict(model_cfg: Any) -> dict:
    return dict(to_plain(model_cfg))


def _check_architecture(sd: Mapping[str, Any], model) -> None:
    """A whole file of another depth / width is one cause, not hundreds of bad keys."""
    kind, counts, depth = resnet_layout(sd)
    if depth is not None and depth != model.depth:
        per_stage = STAGE_BLOCKS[model.depth][1]
        gap = sum(abs(a - b) for a, b in zip(counts, per_stage))
        raise CheckpointError(
            f"torchvision state dict: ResNet-{depth} file, depth-{model.depth} model "
            f"(blocks per stage {counts} vs {list(per_stage)}: {gap} blocks missing or "
            f"extra); pass --depth {depth} (Python: model_cfg['depth'] = {depth})")
    stem = sd.get("conv1.weight")
    if depth is not None and stem is not None and np.shape(stem)[0] != model.width:
        raise CheckpointError(
            f"torchvision state dict: width-{np.shape(stem)[0]} file (conv1.weight "
            f"{tuple(np.shape(stem))}), width-{model.width} model; set the model's width "
            f"to {np.shape(stem)[0]} (--model_config '{{\"width\": {np.shape(stem)[0]}}}')")
