"""Pictures of what an RSA network computes on one clip (``predict --explain``).

- ``<input>_kernels_<layer>.png``: the relational kernels of one RSA layer at
  one query position, laid out as the official repository's kernel figures:
  the kT input frames around the query on top (query cell and its kH×kW
  window drawn on each), then one row per head with the basic (P), relational
  (R) and total kernel as 3-D scatters over the window's (t, h, w) offsets,
  diverging colours (red > 0, white 0, blue < 0) on one shared colour bar.
  The values are the layer's own ('rsa_kernels' collection, docs/method.md#kernels).
- ``<input>_evidence.png``: the sampled frames and, below, the per-frame
  logits of the clip's top classes (TSN averages these over frames).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from rsa_jax import inference


def _rsa_layers(kernels: dict, model) -> list[str]:
    """Blocks with sown kernels, in network order."""
    return [s["name"] for s in model.block_specs()
            if "kernel_basic" in kernels.get(s["name"], {}).get("conv2", {})]


def rsa_blocks(model) -> list[str]:
    """The model's RSA blocks in network order (from its layout: nothing runs)."""
    return [s["name"] for s in model.block_specs() if s["rsa"]]


def check_request(model, layer: str | None, heads: Sequence[int] | None = None) -> None:
    """Checks ``--explain_layer`` / ``--explain_heads`` against the model, before any
    prediction runs.

    Raises:
      ValueError: no RSA layer, an unknown block, or a head the layers lack.
    """
    names = rsa_blocks(model)
    if not names:
        raise ValueError("the model has no RSA layer (backbone tsn2d/tsn3d?)")
    if layer is not None and layer not in names:
        raise ValueError(f"--explain_layer {layer!r}: RSA blocks are {names}")
    num_heads = int(dict(model.rsa).get("num_heads", 8))
    if heads is not None and not all(0 <= h < num_heads for h in heads):
        raise ValueError(f"--explain_heads {list(heads)}: heads must be in "
                         f"0..{num_heads - 1} (the layers have {num_heads})")


@functools.lru_cache(maxsize=8)
def _kernel_forward(model):
    """One jitted forward with sown kernels per model: every input reuses its compile."""
    import jax

    def fwd(variables, x):
        (logits, feats), state = model.apply(
            variables, x, train=False, return_features=True,
            mutable=["intermediates", "rsa_kernels"])
        return logits, feats["frame_logits"], state["intermediates"], state["rsa_kernels"]

    return jax.jit(fwd)


def layer_kernels(loaded: inference.LoadedModel, video: np.ndarray, layer: str | None = None,
                  at: Sequence[int] | None = None) -> dict[str, Any]:
    """Kernels of one RSA layer at one query position for a clip.

    Args:
      video: normalised float32 (T, S, S, 3).
      layer: block name such as 'layer4_1' (default: the first RSA block, the finest
        grid: its query cell and window are the most legible on the frames).
      at: (t, y, x) in the layer's grid (default: where its output norm peaks).

    Returns:
      {'layer', 'at', 'grid' (T', H', W'), 'basic' / 'relational' / 'total'
      (nh, kT, kH, kW), 'frame_logits' (T, C), 'logits' (C,)}.
    """
    from rsa_jax.layers.kernels import window_kernels

    logits, frame_logits, inter, kernels = _kernel_forward(loaded.model)(
        loaded.variables, video[None])
    names = _rsa_layers(kernels, loaded.model)
    if not names:
        raise ValueError("the model has no RSA layer (backbone tsn2d/tsn3d?)")
    layer = layer or names[0]
    if layer not in names:
        raise ValueError(f"--explain_layer {layer!r}: RSA blocks are {names}")
    sown = kernels[layer]["conv2"]
    basic = np.asarray(sown["kernel_basic"][0][0])  # (T', H', W', nh, dd)
    rel = np.asarray(sown["kernel_relational"][0][0])
    grid = basic.shape[:3]
    if at is None:
        out = np.asarray(inter[layer]["rsa_out"][0][0])
        strength = np.linalg.norm(out, axis=-1) if out.shape[:3] == grid else \
            np.linalg.norm(basic + rel, axis=(-1, -2))
        at = np.unravel_index(int(np.argmax(strength)), grid)
    at = tuple(int(v) for v in at)
    if len(at) != 3 or any(not 0 <= a < g for a, g in zip(at, grid)):
        raise ValueError(f"--explain_at {at} outside the layer grid {grid} (t, y, x)")
    h2 = np.asarray(loaded.variables["params"][layer]["conv2"]["H2"])
    kern = {k: np.asarray(window_kernels(v[at], h2))
            for k, v in (("basic", basic), ("relational", rel), ("total", basic + rel))}
    return dict(layer=layer, at=at, grid=grid, **kern,
                frame_logits=np.asarray(frame_logits[0]), logits=np.asarray(logits[0]))


def _display(video: np.ndarray) -> np.ndarray:
    """Normalised frames back to [0, 1] RGB for display."""
    from rsa_jax.data import transforms
    return np.clip(video * transforms.IMAGENET_STD + transforms.IMAGENET_MEAN, 0, 1)


def plot_kernels(video: np.ndarray, k: dict, path: str, title: str = "",
                 heads: Sequence[int] | None = None) -> str:
    """Writes the kernel figure (see module doc) for ``heads`` (default all); returns
    ``path``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import colors, patches

    num_heads, kt, kh, kw = k["total"].shape
    heads = list(range(num_heads)) if heads is None else list(heads)
    if not heads or not all(0 <= h < num_heads for h in heads):
        raise ValueError(f"heads must be in 0..{num_heads - 1} (the layer has {num_heads}), "
                         f"got {heads}")
    nh = len(heads)
    t0, y0, x0 = k["at"]
    frames = _display(video)
    scale = frames.shape[1] / k["grid"][1]  # input pixels per layer cell
    ncols = max(kt, 3)
    fig = plt.figure(figsize=(3.0 * ncols + 1.0, 2.8 * (nh + 1)))
    gs = fig.add_gridspec(nh + 1, ncols + 1, width_ratios=[1] * ncols + [0.08])
    for i in range(kt):
        ax = fig.add_subplot(gs[0, i])
        t = t0 + i - kt // 2
        ax.set_xticks([]), ax.set_yticks([])
        if 0 <= t < len(frames):
            ax.imshow(frames[t])
            corner = ((x0 - kw // 2) * scale - .5, (y0 - kh // 2) * scale - .5)
            ax.add_patch(patches.Rectangle(corner, kw * scale, kh * scale, fill=False,
                                           ec="yellow", lw=1.5))
            ax.add_patch(patches.Rectangle((x0 * scale - .5, y0 * scale - .5), scale, scale,
                                           fill=True, fc="red", alpha=.6))
            ax.set_title(f"frame t{i - kt // 2:+d}" if i != kt // 2 else "query frame",
                         fontsize=10)
        else:
            ax.set_title(f"t{i - kt // 2:+d} (zero padding)", fontsize=10)
    vmax = float(max(np.abs(k[n][heads]).max()
                     for n in ("basic", "relational", "total"))) or 1.0
    norm = colors.Normalize(-vmax, vmax)
    tt, yy, xx = np.meshgrid(np.arange(kt) - kt // 2, np.arange(kh) - kh // 2,
                             np.arange(kw) - kw // 2, indexing="ij")
    sc = None
    for row, h in enumerate(heads):
        for j, (name, label) in enumerate((("basic", "basic (P)"), ("relational", "relational (R)"),
                                           ("total", "total (P + R)"))):
            ax = fig.add_subplot(gs[row + 1, j], projection="3d")
            v = k[name][h]
            sc = ax.scatter(xx.ravel(), tt.ravel(), -yy.ravel(), c=v.ravel(), cmap="bwr",
                            norm=norm, s=12 + 60 * np.abs(v.ravel()) / vmax,
                            edgecolors="0.6", linewidths=0.3, depthshade=False)
            ax.set_xlabel("w", fontsize=8, labelpad=-8), ax.set_ylabel("t", fontsize=8, labelpad=-8)
            ax.set_zlabel("h", fontsize=8, labelpad=-8)
            ax.tick_params(labelsize=6, pad=-3)
            ax.set_title(f"head {h}: {label}", fontsize=10)
    cax = fig.add_subplot(gs[1:, ncols])
    fig.colorbar(sc, cax=cax, label="kernel weight")
    fig.suptitle(title or f"{k['layer']} kernels at (t, y, x) = {k['at']}", fontsize=12)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_evidence(video: np.ndarray, frame_logits: np.ndarray, logits: np.ndarray,
                  names: Sequence[str], path: str, top: int = 3, title: str = "") -> str:
    """Writes the per-frame class evidence figure; returns ``path``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = _display(video)
    t = len(frames)
    fig, (ax0, ax1) = plt.subplots(2, 1, figsize=(max(6.0, 1.1 * t), 5.5),
                                   gridspec_kw={"height_ratios": [1, 2]})
    ax0.imshow(np.concatenate(list(frames), axis=1))
    ax0.set_xticks((np.arange(t) + .5) * frames.shape[2], [str(i) for i in range(t)])
    ax0.set_yticks([])
    ax0.set_xlabel("sampled frame")
    for c in np.argsort(-logits)[:top]:
        ax1.plot(np.arange(t), frame_logits[:, c], marker="o",
                 label=f"{names[c][:40]} (clip {logits[c]:.2f})")
    ax1.set_xlim(-.5, t - .5)
    ax1.set_xticks(np.arange(t))
    ax1.set_xlabel("frame")
    ax1.set_ylabel("per-frame logit")
    ax1.grid(alpha=.3)
    ax1.legend(fontsize=8, loc="best")
    fig.suptitle(title or "per-frame class evidence (clip logit = mean over frames)",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def explain(loaded: inference.LoadedModel, video: inference.VideoInput, out_dir: str,
            layer: str | None = None, at: Sequence[int] | None = None,
            heads: Sequence[int] | None = None) -> list[str]:
    """Writes both figures for one input (centre clip, centre crop); returns paths."""
    os.makedirs(out_dir, exist_ok=True)
    clip = inference.views_of(video.record, loaded.data)[0]
    k = layer_kernels(loaded, clip, layer, at)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.basename(video.name.rstrip("/"))) or "input"
    best = loaded.class_names[int(np.argmax(k["logits"]))]
    return [plot_kernels(clip, k, os.path.join(out_dir, f"{stem}_kernels_{k['layer']}.png"),
                         f"{stem}: {k['layer']} kernels at (t, y, x) = {k['at']}; "
                         f"predicted: {best}", heads),
            plot_evidence(clip, k["frame_logits"], k["logits"], loaded.class_names,
                          os.path.join(out_dir, f"{stem}_evidence.png"),
                          title=f"{stem}: per-frame class evidence")]
