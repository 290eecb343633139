"""Each query's RSA kernel over its window, for inspection (docs/using.md).

The layer never forms κ explicitly in its `conv` implementation; these functions
rebuild it from the same parameters: the latent kernels q̂ᵀP (basic) and q̂ᵀR_n
(relational, R_n from the grouped H1 convolution of k̂), then κ = latent · A with
A = H2 (docs/method.md#kernels).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rsa_jax.layers.conv_forms import conv3d_native


def latent_kernels(q, k, p1, h1, dk: int, dd: int, kernel_type: str, precision=None):
    """(basic, relational) latent kernels, each (B, T, H, W, nh, dd), from the
    layer's normalised queries q (…, nh, dk), key k (…, dk), P1 and H1."""
    zeros = jnp.zeros(q.shape[:-1] + (dd,), q.dtype)
    if kernel_type == "V":  # the query itself is the latent kernel
        return q, zeros
    r = conv3d_native(k, h1, precision, groups=dk)
    r = r.reshape(r.shape[:-1] + (dk, dd))
    rel = jnp.einsum("...nj,...jd->...nd", q, r, precision=precision)
    basic = zeros if p1 is None else jnp.einsum("...nj,jd->...nd", q, p1, precision=precision)
    return basic, rel


def window_kernels(latent: jax.Array, h2: jax.Array) -> jax.Array:
    """Latent kernels (..., nh, dd) and the layer's H2 (kT, kH, kW, 1, dd) ->
    window kernels κ (..., nh, kT, kH, kW), offsets in (t, h, w) order."""
    ks = h2.shape[:3]
    a = jnp.reshape(h2, (-1, h2.shape[-1])).T  # A ∈ R^{dd × M}
    return jnp.einsum("...nd,dm->...nm", latent, a).reshape(latent.shape[:-1] + ks)
