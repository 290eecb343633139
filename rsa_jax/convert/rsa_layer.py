"""One official RSA layer's parameters <-> the Flax `RSA` module's.

Layouts: PyTorch Conv3d weights are (O, I/groups, kT, kH, kW); ours are
channels-last (kT, kH, kW, I/groups, O).  `P1` and `I` drop their leading 1
and keep their index order ([j, d] and [c, e]): the official code broadcasts
them as is, so transposing `I` would silently change the model
(docs/method.md#parameter-names).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from rsa_jax.layers.rsa import resolve_dims


def conv3d_weight_from_torch(w: np.ndarray) -> np.ndarray:
    """(O, I, kT, kH, kW) -> (kT, kH, kW, I, O)."""
    return np.ascontiguousarray(np.transpose(np.asarray(w), (2, 3, 4, 1, 0)))


def conv3d_weight_to_torch(w: np.ndarray) -> np.ndarray:
    """(kT, kH, kW, I, O) -> (O, I, kT, kH, kW)."""
    return np.ascontiguousarray(np.transpose(np.asarray(w), (4, 3, 0, 1, 2)))


def rsa_expected_torch_shapes(d_in: int, layer_cfg: Mapping) -> dict[str, tuple]:
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
    expected = rsa_expected_torch_shapes(d_in, layer_cfg)
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
