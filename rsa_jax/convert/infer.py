"""Reading an official state dict's keys: normalisation and config inference.

Inference is robust to one damaged entry: block kind, RSA types and head sizes
are decided by the majority of the RSA layers, and width / class count fall
back to a sibling tensor, so that the strict key check that follows names the
one missing, extra or mis-shaped tensor instead of a wrong guess's dozens of
unrelated keys (docs/converting.md#errors).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from rsa_jax.convert.rsa_layer import rsa_expected_torch_shapes
from rsa_jax.convert.torch_io import CheckpointError
from rsa_jax.models import STAGE_BLOCKS, default_model_config

# Older module names of the logged runs (docs/method.md#parameter-names): RelationInvolution's
# E_conv/E_feat/E_feat_2 are the released H1/H2/G (H2/G by registration order).
LEGACY_RSA_NAMES = {"E_conv": "H1", "E_feat": "H2", "E_feat_2": "G"}
OPTIONAL_SUFFIX = ".num_batches_tracked"
# The classifier of a dropout-0 official model (TSN._prepare_tsn, dropout == 0).
_FC1_AS_NEW_FC = {"base_model.fc1.weight": "new_fc.weight", "base_model.fc1.bias": "new_fc.bias"}
RSA_TENSORS = ("projection.weight", "H1.weight", "H2.weight", "G.weight", "P1", "I")
RSA_KEY = re.compile(r"(base_model\.layer[1-4]\.\d+)\.conv2\.(" +
                      "|".join(re.escape(n) for n in RSA_TENSORS) + ")$")


def normalize_official_keys(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Strips `module.`, renames legacy RSA modules and a dropout-0 model's classifier
    `base_model.fc1.*` to `new_fc.*`, drops `num_batches_tracked`.

    Raises:
      CheckpointError: two keys that name the same entry after renaming.
    """
    out = {}
    for key, v in state_dict.items():
        k = key[len("module."):] if key.startswith("module.") else key
        if k.endswith(OPTIONAL_SUFFIX):
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


def resnet_layout(keys: Iterable[str], prefix: str = "") -> tuple[str, list[int], int | None]:
    """(block kind, blocks per stage, depth or None) read off ResNet keys.

    ``prefix`` is what precedes ``layerN.`` ('base_model.' officially, '' for
    torchvision).  Any `conv3` makes the blocks bottlenecks, so one missing
    tensor does not turn a ResNet-50 into a ResNet-34.
    """
    counts, kind = [0, 0, 0, 0], "basic"
    pat = re.compile(re.escape(prefix) + r"layer([1-4])\.(\d+)\.(\w+)")
    for k in keys:
        m = pat.match(k)
        if m:
            s, b = int(m.group(1)) - 1, int(m.group(2))
            counts[s] = max(counts[s], b + 1)
            kind = "bottleneck" if m.group(3) == "conv3" else kind
    depth = [d for d, (kd, c) in STAGE_BLOCKS.items() if kd == kind and list(c) == counts]
    return kind, counts, (depth[0] if depth else None)


def rsa_layers(sd: Mapping[str, Any]) -> dict[str, dict[str, tuple]]:
    """{block: {RSA tensor name: shape}} for every block holding any RSA tensor."""
    out: dict[str, dict[str, tuple]] = {}
    for k, v in sd.items():
        m = RSA_KEY.match(k)
        if m:
            out.setdefault(m.group(1), {})[m.group(2)] = tuple(np.shape(v))
    return out


def _types(found: Mapping[str, tuple]) -> tuple[str, str]:
    kt = "VplusR" if "P1" in found else "R" if "H1.weight" in found else "V"
    ct = "VplusR" if "I" in found else "R" if "G.weight" in found else "V"
    return kt, ct


def _fits(cfg: dict, found: Mapping[str, tuple], planes: int | None) -> bool:
    if planes is None or "projection.weight" not in found:
        return False
    try:
        exp = rsa_expected_torch_shapes(found["projection.weight"][1],
                                         dict(cfg, features=planes))
    except ValueError:
        return False
    return exp == dict(found)


def _candidates(base: dict, found: Mapping[str, tuple]) -> Iterable[dict]:
    """Head-size configs to try: default sizes first, then explicit ones."""
    d_hid = found["projection.weight"][0]
    for nh in range(1, d_hid + 1):
        yield dict(base, num_heads=nh, key_dim=None, value_dim=None, latent_dim=None)
    dd = found["H2.weight"][0]
    dk = found["H1.weight"][0] // dd if "H1.weight" in found else dd
    dv = found["G.weight"][0] if "G.weight" in found else None
    for nh in range(1, d_hid + 1):
        dv_ = dv or d_hid - nh * dk - (0 if base["kernel_type"] == "V" else dk)
        if dv_ > 0:
            yield dict(base, num_heads=nh, key_dim=dk, value_dim=dv_, latent_dim=dd)


def _solve_rsa_heads(layers: Mapping[str, Mapping[str, tuple]], planes: Mapping[str, int],
                     base: dict) -> dict:
    """The head sizes that fit the most RSA layers (ideally all of them)."""
    best, best_n = None, 0
    for blk, found in layers.items():
        if _types(found) != (base["kernel_type"], base["context_type"]) or \
                "H2.weight" not in found or "projection.weight" not in found:
            continue  # a damaged layer cannot serve as the reference
        cfg = next((c for c in _candidates(base, found) if _fits(c, found, planes.get(blk))),
                   None)
        if cfg is None:
            continue
        n = sum(_fits(cfg, f, planes.get(b)) for b, f in layers.items())
        if n > best_n:
            best, best_n = cfg, n
        if n * 2 > len(layers):
            break  # a majority already agrees; the strict check names the rest
    if best is None:
        blk, found = next(iter(layers.items()))
        raise CheckpointError(f"cannot infer RSA head sizes: no RSA layer has a consistent "
                              f"set of tensors (first: {blk}.conv2.* shapes {dict(found)})")
    return best


def _majority(values: list) -> Any:
    # Ties go to the earliest layer's value.
    counts = Counter(values)
    return max(counts, key=lambda v: (counts[v], -values.index(v)))


def _rsa_config(sd: Mapping[str, np.ndarray], layers: Mapping[str, Mapping[str, tuple]]) -> dict:
    kt, ct = _majority([_types(f) for f in layers.values()])
    sizes = [f["H2.weight"][2:] for f in layers.values() if "H2.weight" in f]
    if not sizes:
        raise CheckpointError(f"no RSA layer has H2.weight (or E_feat.weight): "
                              f"RSA layers found {sorted(layers)}")
    base = dict(kernel_size=[int(k) for k in _majority(sizes)], kernel_type=kt,
                context_type=ct, implementation="conv")
    planes = {blk: int(sd[blk + ".conv1.weight"].shape[0]) for blk in layers
              if blk + ".conv1.weight" in sd}
    return _solve_rsa_heads(layers, planes, base)


def _first_shape(sd: Mapping[str, np.ndarray], keys: tuple[str, ...]) -> tuple | None:
    return next((tuple(sd[k].shape) for k in keys if k in sd), None)


def infer_model_config(state_dict: Mapping[str, Any]) -> dict:
    """Model config (see `rsa_jax.models.build_model`) read off a state dict's shapes.

    Depth, width, class count, backbone, RSA positions, kernel size, kernel and
    context types and head sizes are inferred; dropout and stochastic depth
    (training-only) take the paper's values, except that a `base_model.fc1`
    classifier means dropout 0.  One missing or damaged tensor does not change
    the inferred model (see the module docstring).

    Raises:
      CheckpointError: keys or shapes that no supported model has.
    """
    sd = normalize_official_keys(state_dict)
    stem = _first_shape(sd, ("base_model.conv1.weight", "base_model.bn1.weight"))
    head = _first_shape(sd, ("new_fc.weight", "new_fc.bias"))
    if stem is None or head is None:
        raise CheckpointError(
            "not an official RSA/TSN state dict: expected keys 'module.base_model.conv1.weight' "
            "and 'module.new_fc.weight' (or 'module.base_model.fc1.weight' for dropout 0); "
            f"first keys found: {list(state_dict)[:8]}")
    kind, counts, depth = resnet_layout(sd, "base_model.")
    if depth is None:
        raise CheckpointError(f"blocks per stage {counts} ({kind} blocks) match no "
                              f"ResNet depth {sorted(STAGE_BLOCKS)}")
    cfg = default_model_config()
    cfg.update(depth=depth, width=int(stem[0]), num_classes=int(head[0]))
    if any(k.removeprefix("module.") in _FC1_AS_NEW_FC for k in state_dict):
        cfg["dropout"] = 0.0  # an fc1 classifier means the model was built with dropout 0
    layers = rsa_layers(sd)
    if layers:
        positions = [[], [], [], []]
        for blk in layers:
            s, b = blk[len("base_model.layer"):].split(".")
            positions[int(s) - 1].append(int(b))
        cfg["rsa"] = _rsa_config(sd, layers)
        cfg["backbone"], cfg["rsa_positions"] = "rsa", [sorted(p) for p in positions]
    else:
        # layer1.0 decides, as it always did; another block's conv2 if it is missing.
        mids = [v.shape for k, v in sd.items()
                if re.fullmatch(r"base_model\.layer[1-4]\.\d+\.conv2\.weight", k)]
        mid = sd["base_model.layer1.0.conv2.weight"].shape \
            if "base_model.layer1.0.conv2.weight" in sd else (mids or [(0, 0, 1)])[0]
        cfg["backbone"] = "tsn3d" if mid[2] > 1 else "tsn2d"
    return cfg
