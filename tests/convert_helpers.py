"""A tiny official-layout model and its state dict saved as the official `main.py`
saves it, the network fixture's official state dict, and a torchvision ResNet file:
the converter tests' inputs. Needs torch for everything that returns tensors.
"""

from __future__ import annotations

import json
import zlib
from collections import OrderedDict
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from rsa_jax.convert import variables_to_state_dict
from rsa_jax.models import build_model

FIXTURES = Path(__file__).parent / "fixtures"

TINY = dict(depth=50, width=16, num_classes=7, backbone="rsa",
            rsa_positions=[[1], [1, 3], [2], [1]],
            rsa=dict(num_heads=4, kernel_size=[3, 5, 5], kernel_type="VplusR",
                     context_type="VplusR"))


def random_variables(cfg, seed=0):
    """``(model, variables)`` of ``cfg`` with random values in [0.5, 1.5)."""
    model = build_model(cfg)  # structure only (no compile): eval_shape
    v = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(seed),
                                          jnp.zeros((1, 1, 32, 32, 3)), train=False))
    leaves, tree = jax.tree_util.tree_flatten(v)
    rng = np.random.default_rng(seed)
    leaves = [rng.uniform(0.5, 1.5, a.shape).astype(np.float32) for a in leaves]
    return model, jax.tree_util.tree_unflatten(tree, leaves)


def official_dict(model, variables) -> OrderedDict:
    """The official state dict of ``variables``, as torch tensors with the `module.`
    prefix and `num_batches_tracked` counters of a DataParallel checkpoint."""
    import torch
    sd = OrderedDict()
    for k, v in variables_to_state_dict(variables, model).items():
        sd["module." + k] = torch.from_numpy(v)
        if k.endswith("running_var"):
            sd["module." + k[:-len("running_var")] + "num_batches_tracked"] = torch.tensor(0)
    return sd


def save(path, sd, wrap=True):
    """Saves ``sd`` as the official `main.py` does (``wrap``: in its checkpoint dict)."""
    import torch
    torch.save({"epoch": 3, "arch": "ResNet", "state_dict": sd, "best_prec1": 1.5}
               if wrap else sd, path)
    return path


def regenerate_weight(key: str, shape, salt: str = "") -> np.ndarray:
    """The fixture rule: per-key PCG64 seeded by crc32(salt + key), by leaf name."""
    shape = tuple(int(s) for s in shape)
    rng = np.random.default_rng(zlib.crc32((salt + key).encode("utf-8")))
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "num_batches_tracked":
        return np.zeros(shape, np.int64)
    if leaf in ("running_mean", "P1"):
        x = 0.1 * rng.standard_normal(shape)
    elif leaf == "running_var":
        x = rng.uniform(0.5, 1.5, shape)
    elif leaf == "I":
        x = np.eye(shape[-1]) + 0.1 * rng.standard_normal(shape)
    elif len(shape) == 1 and leaf == "weight":  # BN scale
        x = rng.uniform(0.5, 1.5, shape)
    elif len(shape) == 1 and leaf == "bias":  # BN shift, classifier bias
        x = 0.1 * rng.standard_normal(shape)
    else:  # conv / classifier weights
        x = rng.standard_normal(shape) * np.sqrt(1.0 / int(np.prod(shape[1:])))
    return x.astype(np.float32)


def official_state_dict(salt: str = "") -> OrderedDict:
    """The network fixture's official state dict (torch tensors), regenerated."""
    import torch
    keys = json.loads((FIXTURES / "official_checkpoint_keys.json").read_text())
    return OrderedDict((k, torch.from_numpy(regenerate_weight(k, shape, salt)))
                       for k, shape, _ in keys)


def save_official(path: Path, state_dict) -> Path:
    """Saves ``state_dict`` as the official `main.py` saves its best checkpoint."""
    import torch
    torch.save({"epoch": 80, "arch": "ResNet", "state_dict": state_dict,
                "best_prec1": 53.986}, path)
    return path


def torchvision_state_dict(depth=50, seed=0, counters=True) -> OrderedDict:
    """A file in torchvision's resnet{depth} layout, with random values."""
    import torch
    model = build_model({"depth": depth, "backbone": "tsn2d", "num_classes": 1000})
    abstract = jax.eval_shape(lambda: model.init(
        jax.random.PRNGKey(0), jnp.zeros((1, 1, 32, 32, 3)), train=False))
    rng = np.random.default_rng(seed)
    zeros = jax.tree_util.tree_map(lambda a: np.zeros(a.shape, np.float32), abstract)
    sd = OrderedDict()
    for k, v in variables_to_state_dict(zeros, model).items():
        v = rng.standard_normal(v.shape).astype(np.float32)
        if k.startswith("new_fc."):
            sd["fc." + k.split(".")[1]] = torch.from_numpy(v.reshape(v.shape[:2]))
            continue
        k = k[len("base_model."):]
        sd[k] = torch.from_numpy(v[:, :, 0] if v.ndim == 5 else v)
        if counters and k.endswith("running_var"):
            sd[k[:-len("running_var")] + "num_batches_tracked"] = torch.tensor(7)
    return sd
