"""Per-frame operations of the TSN-ResNet, in the forms each backend runs fast.

The network (`rsa_jax.models.resnet_tsn`) states what is computed; this module holds
how: 1×1 convolutions as channel matmuls, the stem's max pool as strided slices, and
(1,k,k) convolutions per frame, as lax convolutions or, on CPU for small output
frames, as im2col matmuls.  Every form has the same values (to float summation
order) as the plain lax operation; `tests/test_model.py` checks each one.  The RSA
layer's own backend forms are in `conv_forms.py`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from rsa_jax.layers.conv_forms import resolve_platform


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def channel_matmul(x: jax.Array, w: jax.Array, precision: Any = None) -> jax.Array:
    """x (..., C) @ w (C, D): a 1×1 convolution, with a CPU-friendly weight gradient.

    The weight gradient contracts the (long) position axis of both operands, and
    XLA:CPU's matmul kernels copy the left operand into a transposed layout first;
    the backward pass puts the operand with fewer channels on the left, so that
    the copy is of the smaller activation (4x smaller for the bottleneck's 1×1s).
    """
    return jnp.einsum("...c,cd->...d", x, w, precision=precision)


def _channel_matmul_fwd(x, w, precision):
    return channel_matmul(x, w, precision), (x, w)


def _channel_matmul_bwd(precision, res, g):
    x, w = res
    xf, gf = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
    if xf.shape[1] <= gf.shape[1]:
        dw = jnp.einsum("mc,md->cd", xf, gf, precision=precision)
    else:
        dw = jnp.einsum("md,mc->dc", gf, xf, precision=precision).T
    return jnp.einsum("...d,cd->...c", g, w, precision=precision), dw.astype(w.dtype)


channel_matmul.defvjp(_channel_matmul_fwd, _channel_matmul_bwd)


def _pool_taps(x: jax.Array):
    """The nine (1,3,3)/(1,2,2) window taps of x (B,T,H,W,C) padded by one with -inf."""
    h, w = x.shape[2:4]
    ho, wo = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    xp = jnp.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
    return [xp[:, :, a:a + 2 * ho - 1:2, b:b + 2 * wo - 1:2] for a in range(3) for b in range(3)]


@jax.custom_vjp
def max_pool_stem(x: jax.Array) -> jax.Array:
    """The stem's MaxPool (1,3,3), stride (1,2,2), padding (0,1,1), as nine strided slices.

    Same values and gradient as ``nn.max_pool`` (the gradient goes to the first
    maximum of each window in row-major order, as in XLA and PyTorch), without
    XLA:CPU's select-and-scatter, which costs ~10x more on the stem's activation.
    """
    taps = _pool_taps(x)
    y = taps[0]
    for t in taps[1:]:
        y = jnp.maximum(y, t)
    return y


def _max_pool_stem_fwd(x):
    y = max_pool_stem(x)
    return y, (x, y)


def _max_pool_stem_bwd(res, g):
    x, y = res
    h, w = x.shape[2:4]
    taken = jnp.zeros(y.shape, bool)
    dxp = jnp.zeros(x.shape[:2] + (h + 2, w + 2) + x.shape[4:], g.dtype)
    zero = jnp.zeros((), g.dtype)
    for i, t in enumerate(_pool_taps(x)):
        a, b = divmod(i, 3)
        hit = (t == y) & ~taken
        taken = taken | hit
        # Scatter tap (a, b) back to rows a, a+2, ... and columns b, b+2, ... of xp.
        dxp = dxp + lax.pad(jnp.where(hit, g, zero), zero, (
            (0, 0, 0), (0, 0, 0), (a, h + 2 - a - (2 * y.shape[2] - 1), 1),
            (b, w + 2 - b - (2 * y.shape[3] - 1), 1), (0, 0, 0)))
    return (dxp[:, :, 1:h + 1, 1:w + 1],)


max_pool_stem.defvjp(_max_pool_stem_fwd, _max_pool_stem_bwd)


# Largest output frame (positions) for which CPU (1,k,k) convolutions run as im2col.
IM2COL_MAX_POSITIONS = 36


def use_im2col(frame_hw: Sequence[int], kernel_hw: Sequence[int], strides_hw: Sequence[int],
               platform: str | None = None) -> bool:
    """Whether a per-frame convolution runs as `conv2d_im2col` rather than lax's conv.

    On CPU, for output frames of at most `IM2COL_MAX_POSITIONS` positions (the
    demo's and small-input stages 3-4): XLA:CPU's convolution, and above all its
    gradients, is slow there (fwd+bwd, 128 frames, 2 cores: 3×3 conv 128→128 on
    2×2 frames 50.5 -> 4.5 ms, 64→64 on 3×3 5.9 -> 3.2 ms; docs/benchmarks.md#cpu-forms).
    Larger frames, and every accelerator, keep the native convolution.  ``platform``:
    the one the program is built for (`conv_forms.resolve_platform`).
    """
    if resolve_platform(platform) != "cpu":
        return False
    ho, wo = ((n + 2 * (k // 2) - k) // s + 1 for n, k, s in zip(frame_hw, kernel_hw, strides_hw))
    return ho * wo <= IM2COL_MAX_POSITIONS


def conv2d_im2col(x: jax.Array, w: jax.Array, strides: Sequence[int],
                  precision: Any = None) -> jax.Array:
    """NHWC 2-D convolution with PyTorch padding k//2, as k·k strided slices + one matmul.

    Same values as ``lax.conv_general_dilated`` up to float summation order: the
    window taps are stacked along channels in (kH, kW, C) order, the flattening of an
    HWIO kernel, and contracted with `channel_matmul` (whose weight gradient suits CPU).
    """
    kh, kw = w.shape[:2]
    sh, sw = strides
    n, h, wd, c = x.shape
    ho, wo = (h - 1) // sh + 1, (wd - 1) // sw + 1   # odd kernels, padding k // 2
    xp = jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    cols = jnp.concatenate([xp[:, a:a + sh * (ho - 1) + 1:sh, b:b + sw * (wo - 1) + 1:sw]
                            for a in range(kh) for b in range(kw)], axis=-1)
    return channel_matmul(cols, w.reshape(kh * kw * c, w.shape[-1]), precision)


def frame_conv2d(x: jax.Array, w: jax.Array, strides: Sequence[int], precision: Any = None,
                 platform: str | None = None) -> jax.Array:
    """(1,k,k) convolution of every frame: x (B, T, H, W, C), w (1, kH, kW, C, D), stride
    (sH, sW), PyTorch padding k//2.  Frames are folded into the batch (XLA:CPU runs a
    2-D convolution faster than the equivalent 3-D one); `use_im2col` picks the form."""
    b, t = x.shape[:2]
    x2 = x.reshape((b * t,) + x.shape[2:])
    ks = w.shape[1:3]
    if use_im2col(x.shape[2:4], ks, strides, platform):
        y = conv2d_im2col(x2, w[0], strides, precision)
    else:
        y = lax.conv_general_dilated(
            x2, w[0], tuple(strides), [(k // 2, k // 2) for k in ks],
            dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision)
    return y.reshape((b, t) + y.shape[1:])
