"""Loading the official layer fixtures (tests/fixtures/rsa_*.npz) into Flax terms."""

from __future__ import annotations

import glob
import json
import os

import numpy as np

FIXTURE_DIR = os.path.join(os.path.dirname(__file__), "fixtures")
LAYER_FIXTURES = sorted(glob.glob(os.path.join(FIXTURE_DIR, "rsa_*.npz")))


def rel_err(a, b) -> float:
    """The fixtures README's metric: max|a - b| / max|b|."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def layer_config(cfg: dict) -> dict:
    """Official constructor arguments -> `RSA` fields (0 = derive the default)."""
    return dict(features=cfg["d_out"], num_heads=cfg["nh"], key_dim=cfg["dk"] or None,
                value_dim=cfg["dv"] or None, latent_dim=cfg["dd"] or None,
                kernel_size=tuple(cfg["kernel_size"]), strides=tuple(cfg["stride"]),
                kernel_type=cfg["kernel_type"], context_type=cfg["feat_type"])


def load_layer_fixture(path: str) -> dict:
    z = np.load(path, allow_pickle=False)
    cfg = json.loads(str(z["config"]))
    return {
        "name": os.path.basename(path)[:-4],
        "config": cfg,
        "meta": json.loads(str(z["meta"])),
        "layer": layer_config(cfg),
        "torch_params": {k[len("param/"):]: z[k] for k in z.files if k.startswith("param/")},
        "torch_grads": {k[len("grad/"):]: z[k] for k in z.files if k.startswith("grad/")},
        # PyTorch (N, C, T, H, W) -> channels-last (N, T, H, W, C).
        "input": z["input"].transpose(0, 2, 3, 4, 1),
        "cotangent": z["cotangent"].transpose(0, 2, 3, 4, 1),
        "output": z["output"].transpose(0, 2, 3, 4, 1),
        "grad_input": z["grad_input"].transpose(0, 2, 3, 4, 1),
    }
