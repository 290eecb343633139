"""A tiny official-layout model and its state dict saved as the official `main.py`
saves it: the converter tests' inputs (tests/test_convert_errors.py,
tests/test_convert_messages.py). Needs torch for `official_dict` and `save`.
"""

from __future__ import annotations

from collections import OrderedDict

import jax
import jax.numpy as jnp
import numpy as np

from rsa_jax.convert import variables_to_state_dict
from rsa_jax.models import build_model

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
