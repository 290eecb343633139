"""Relational Self-Attention (Kim et al., NeurIPS 2021) as a Flax linen module.

Notation as in docs/method.md#notation (and the official ``ops/rsa.py``): at every
position n the layer forms L = ``num_heads`` queries q̂, one key k̂ and one value v̂
(all L2-normalised, eps inside the square root), and computes

    y_{n,l} = κ_{n,l} · X_n
    κ_{n,l} = q̂_{n,l}ᵀ (P + R_n) A          kernel: basic (P) + relational (R_n = H1 * k̂)
    X_n     = V_n Λ + V_n V_nᵀ Γᵀ             context: basic (Λ = I) + relational (Γ = G)

over a kT×kH×kW window (M = kT·kH·kW offsets, zero padded, no wrap-around); see
docs/method.md#kernels and docs/method.md#contexts.

Two numerically equivalent implementations sit behind one interface:

* ``'conv'`` — the factorised form of the official code (docs/method.md#output-layout):
  the key map is filtered by the grouped 3-D convolution H1, every value channel by
  the shared single-channel filter banks H2 and G (fused into one convolution), and
  the per-position latent kernel (nh × dd) and latent context (dd × dv) are
  contracted.  Never materialises anything of size M per position.  How each
  convolution and product runs on a given backend is `conv_forms.select_forms`.
* ``'patches'`` — literal to the paper: the M-neighbourhoods of k̂ and v̂ are
  extracted (``patch_op``: the patch op, or pad + slice + stack where its gradient
  is slow, as on CPU), the M-dim kernels κ (nh × M) and the M-row
  contexts X (M × dv) are formed explicitly and ``y = κ X``.  The M × M
  self-correlation V Vᵀ is folded by associativity, V (Vᵀ Γᵀ), since it would
  cost M²·dv per position.

Output channels are value-major, head-minor (``e * num_heads + h``), as the official
``rearrange`` makes them; checkpoints depend on it (docs/method.md#channel-order).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from rsa_jax.layers import conv_forms, kernels, strategy
from rsa_jax.layers.conv_forms import extract_windows

KernelType = Literal["V", "R", "VplusR"]
_TYPES = ("V", "R", "VplusR")
L2_EPS = 1e-6  # official: x / (sum(x^2) + 1e-6) ** 0.5
# The official ResNet re-initialises every Conv3d with kaiming_normal_(fan_out, relu).
_FAN_OUT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


@dataclasses.dataclass(frozen=True)
class RSADims:
    """Resolved head sizes, in the official order (dv, then dk, then dd)."""

    nh: int
    dk: int
    dv: int
    dd: int
    d_hid: int


def resolve_dims(features: int, num_heads: int, key_dim: int | None,
                 value_dim: int | None, latent_dim: int | None,
                 kernel_size: Sequence[int], kernel_type: str,
                 context_type: str) -> RSADims:
    """Resolves default sizes and rejects what the official layer cannot run.

    Raises:
      ValueError: naming the offending setting and the official constraint.
    """
    if kernel_type not in _TYPES:
        raise ValueError(f"kernel_type must be one of {_TYPES}, got {kernel_type!r}")
    if context_type not in _TYPES:
        raise ValueError(f"context_type must be one of {_TYPES}, got {context_type!r}")
    if len(tuple(kernel_size)) != 3 or any(int(k) < 1 for k in kernel_size):
        raise ValueError(f"kernel_size must be three positive ints (kT, kH, kW), "
                         f"got {tuple(kernel_size)}")
    if any(int(k) % 2 == 0 for k in kernel_size):
        raise ValueError(
            f"kernel_size {tuple(kernel_size)} has an even side: the official layer pads "
            "k//2 on each side, so an even kernel changes the spatial size and its "
            "rearrangement back to the input grid fails. Use odd kernel sizes.")
    if num_heads < 1:
        raise ValueError(f"num_heads must be >= 1, got {num_heads}")
    # Official resolution order: dv, then dk, then dd (0/None = default).
    dv = value_dim or features // num_heads
    dk = key_dim or dv
    dd = latent_dim or dk
    if dv < 1:
        raise ValueError(f"features={features} // num_heads={num_heads} gives value_dim 0")
    if kernel_type == "V" and dk != dd:
        raise ValueError(
            f"kernel_type 'V' uses the query itself as the latent kernel, so it needs "
            f"key_dim == latent_dim; got key_dim={dk}, latent_dim={dd}.")
    if context_type == "VplusR" and dv != dk:
        raise ValueError(
            f"context_type 'VplusR' adds I (key_dim x key_dim) to the value x value "
            f"relational context, so it needs value_dim == key_dim; got "
            f"value_dim={dv}, key_dim={dk}.")
    d_hid = num_heads * dk + dv + (0 if kernel_type == "V" else dk)
    return RSADims(num_heads, dk, dv, dd, d_hid)


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
    """Official L2 normalisation, x / sqrt(Σ x² + 1e-6): eps inside the sqrt, no clamp.

    The squares are summed (and the scaling done) in at least float32 and the result
    cast back, so that bfloat16/float16 compute neither loses the sum's precision
    nor overflows it (float16 squares overflow above ~256).
    """
    acc = jnp.promote_types(x.dtype, jnp.float32)
    xa = x.astype(acc)
    return (xa * lax.rsqrt(jnp.sum(xa * xa, axis=axis, keepdims=True) + L2_EPS)).astype(x.dtype)


def avg_pool_stride2(y: jax.Array) -> jax.Array:
    """Official strided output: AvgPool3d((1,3,3), (1,2,2), (0,1,1)), pads counted (/9)."""
    s = lax.reduce_window(y, jnp.array(0, y.dtype), lax.add, (1, 1, 3, 3, 1),
                          (1, 1, 2, 2, 1), ((0, 0), (0, 0), (1, 1), (1, 1), (0, 0)))
    return s / jnp.asarray(9, y.dtype)


class RSA(nn.Module):
    """Relational self-attention over a local spatio-temporal window.

    Input and output are channels-last ``(B, T, H, W, C)``; output channels are
    ``num_heads * value_dim`` in value-major order.

    Attributes:
      features: d_out; only used for the default value_dim = features // num_heads.
      num_heads: L, the number of queries sharing one key and one value map.
      key_dim, value_dim, latent_dim: dk, dv, dd; None = official defaults
        (dv = features // nh, dk = dv, dd = dk).
      kernel_size: (kT, kH, kW), odd.
      strides: any component > 1 average-pools the output spatially by 2, as the
        official layer does (the stride values themselves are not used).
      kernel_type: 'V' (basic), 'R' (relational) or 'VplusR'.
      context_type: 'V' (basic), 'R' (relational) or 'VplusR'.
      implementation: 'conv' (factorised) or 'patches' (explicit windows).
      conv_strategy: how 'conv' runs its convolutions: 'native' (lax 3-D
        convolutions), 'taps2d' (2-D convolutions over the temporal taps only, so a
        traced graph has the official layer's multiply-adds) or 'auto' (native on
        GPU/TPU; on CPU, banded matmuls on small frames); see `conv_forms.select_forms`.
        'autotune', or a table resolved by `rsa_jax.train.tuning.resolve_config`, picks
        implementation and strategy per layer shape (unresolved: 'auto').
      patch_op: window extraction of 'patches': 'lax', 'stack' or 'auto'.
      dtype: compute dtype (None = input dtype); param_dtype: parameter dtype.
      precision: matmul/conv precision (use 'highest' for fixture parity on TPU/GPU).
      platform: 'cpu', 'gpu' or 'tpu', the platform the program is built for, which
        picks the 'auto' forms (None: the default devices'; `conv_forms.resolve_platform`).
    """

    features: int
    num_heads: int = 8
    key_dim: int | None = None
    value_dim: int | None = None
    latent_dim: int | None = None
    kernel_size: Sequence[int] = (5, 7, 7)
    strides: Sequence[int] = (1, 1, 1)
    kernel_type: KernelType = "VplusR"
    context_type: KernelType = "VplusR"
    implementation: Literal["conv", "patches"] = "conv"
    conv_strategy: str = "auto"
    patch_op: Literal["auto", "lax", "stack"] = "auto"
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None
    platform: str | None = None

    @property
    def dims(self) -> RSADims:
        """The resolved (nh, dk, dv, dd, d_hid) of this layer."""
        return resolve_dims(self.features, self.num_heads, self.key_dim, self.value_dim,
                            self.latent_dim, self.kernel_size, self.kernel_type,
                            self.context_type)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, T, H, W, C_in) -> (B, T, H', W', nh·dv), channel e·nh + h."""
        if x.ndim != 5:
            raise ValueError(f"RSA expects (B, T, H, W, C) input, got shape {x.shape}")
        if self.implementation not in ("conv", "patches"):
            raise ValueError(f"implementation must be 'conv' or 'patches', "
                             f"got {self.implementation!r}")
        d = self.dims
        ks = tuple(int(k) for k in self.kernel_size)
        dtype = self.dtype or x.dtype
        p = self._params(x.shape[-1], d, ks, dtype)
        q, k, v = self._project(jnp.asarray(x, dtype), p["projection"], d)
        choice = strategy.layer_choice(self.implementation, self.conv_strategy,
                                       self.patch_op, strategy.shape_key(self, x.shape))
        fn = self._conv_form if choice[0] == "conv" else self._patch_form
        y = fn(choice, q, k, v, p["P1"], p["I"], p["H1"], p["H2"], p["G"], d, ks)  # (..., dv, nh)
        if self.is_mutable_collection("rsa_kernels") and not self.is_initializing():
            # For inspection only (docs/using.md): latent kernels q̂ᵀP and q̂ᵀR_n.
            lat = kernels.latent_kernels(q, k, p["P1"], p["H1"], d.dk, d.dd,
                                         self.kernel_type, self.precision)
            for name, value in zip(("kernel_basic", "kernel_relational"), lat, strict=True):
                self.sow("rsa_kernels", name, value)
        y = y.reshape(y.shape[:-2] + (d.dv * d.nh,))  # channel e·nh + h
        if max(self.strides) > 1:
            y = avg_pool_stride2(y)
        return y

    def _params(self, c_in: int, d: RSADims, ks: tuple[int, ...], dtype) -> dict:
        """Parameters in the official registration order, cast to `dtype`: P1 = P, I = Λ,
        projection = W, H1 = B, H2 = A, G = Γ (None where the types have no such term)."""
        kt, ct, pd = self.kernel_type, self.context_type, self.param_dtype
        m = int(np.prod(ks))
        p = {
            "P1": (self.param("P1", nn.initializers.normal(stddev=(m * d.dd) ** -0.5),
                              (d.dk, d.dd), pd) if kt == "VplusR" else None),
            "I": (self.param("I", lambda _, s, t: jnp.eye(s[0], dtype=t), (d.dk, d.dk), pd)
                  if ct == "VplusR" else None),
            "projection": self.param("projection", _FAN_OUT, (c_in, d.d_hid), pd),
            "H1": (self.param("H1", _FAN_OUT, ks + (1, d.dk * d.dd), pd)
                   if kt != "V" else None),
            "H2": self.param("H2", _FAN_OUT, ks + (1, d.dd), pd),
            "G": (self.param("G", _FAN_OUT, ks + (1, d.dv), pd)
                  if ct != "V" else None),
        }
        return {n: None if a is None else jnp.asarray(a, dtype) for n, a in p.items()}

    def _project(self, x: jax.Array, w_proj: jax.Array, d: RSADims):
        """W x, split and L2-normalised: q̂ (..., nh, dk), k̂ (..., dk) or None, v̂ (..., dv).

        Channel order of the projection: queries [0, nh·dk) (query h, component j at
        h·dk + j), then the key (not for kernel 'V'), then the value (last dv).
        """
        z = jnp.einsum("bthwc,cd->bthwd", x, w_proj, precision=self.precision)
        q = l2_normalize(z[..., :d.nh * d.dk].reshape(z.shape[:-1] + (d.nh, d.dk)))
        k = (l2_normalize(z[..., d.nh * d.dk:d.nh * d.dk + d.dk])
             if self.kernel_type != "V" else None)
        v = l2_normalize(z[..., d.d_hid - d.dv:])
        return q, k, v

    def _conv_form(self, choice, q, k, v, p1, lam, h1, h2, g, d, ks):
        """Factorised evaluation (docs/method.md#output-layout): convs + latent contractions.

        κ̃ = q̂ᵀ(P + R) (nh × dd), F = Âᵀ(Λ + Ĝ) (dd × dv) per position; y = κ̃ F.
        """
        ops = conv_forms.select_forms(choice[1], v.shape[2:4], ks, d.dk,
                                      self.precision, self.platform)
        mm, tr = ops.matmul, ops.transpose
        # Latent kernel κ̃ = q̂ᵀ(P + R), (nh × dd) per position.
        if self.kernel_type == "V":
            kern = q
        else:
            r = ops.grouped_conv(k, h1)  # R[j, d] = Σ_o B[(j, o), d] k̂_{n+o}[j]
            if p1 is not None:
                r = r + p1
            kern = mm(q, r)
        # Every value channel is filtered by the shared single-channel banks H2 (dd
        # filters, Â) and G (dv filters, Ĝ): one fused convolution.
        bank = h2 if g is None else jnp.concatenate([h2, g], axis=-1)
        ab = ops.shared_conv(v, bank)  # (..., c, dd [+ dv])
        a_hat = ab[..., :d.dd]  # Â[c, d]
        if g is None:
            f = tr(a_hat)  # F[d, e] = Â[e, d]
        else:
            g_hat = ab[..., d.dd:]  # Ĝ[c, e]
            if lam is not None:
                g_hat = g_hat + lam  # I indexes [c, e]: no transpose
            f = mm(tr(a_hat), g_hat)  # F[d, e] = Σ_c Â[c, d] Ĝ[c, e]
        return tr(mm(kern, f))  # y[e, n] = Σ_d κ̃[n, d] F[d, e]

    def _patch_form(self, choice, q, k, v, p1, lam, h1, h2, g, d, ks):
        """Explicit M-dim kernels and M-row contexts (docs/method.md#kernels, #contexts)."""
        m = int(np.prod(ks))
        prec = self.precision
        a = h2.reshape(m, d.dd).T  # A ∈ R^{D × M}
        vw = extract_windows(v, ks, choice[2], self.platform)  # V_n: (..., M, dv)
        # Kernel κ_{n,l} ∈ R^{M}.
        if self.kernel_type == "V":
            kern = jnp.einsum("bthwnd,dm->bthwnm", q, a, precision=prec)
        else:
            kw_ = extract_windows(k, ks, choice[2], self.platform)  # K_n: (..., M, dk)
            bmat = h1.reshape(m, d.dk, d.dd)  # B[(j, o), d]
            r = jnp.einsum("bthwoj,ojd->bthwjd", kw_, bmat, precision=prec)
            if p1 is not None:
                r = r + p1
            lat = jnp.einsum("bthwnj,bthwjd->bthwnd", q, r, precision=prec)
            kern = jnp.einsum("bthwnd,dm->bthwnm", lat, a, precision=prec)
        # Context X_n ∈ R^{M × dv}.
        if g is None:
            ctx = vw
        else:
            gam = g.reshape(m, d.dv)  # Γᵀ
            vtg = jnp.einsum("bthwoc,oe->bthwce", vw, gam, precision=prec)  # Vᵀ Γᵀ
            mix = vtg if lam is None else vtg + lam
            ctx = jnp.einsum("bthwmc,bthwce->bthwme", vw, mix, precision=prec)
        return jnp.einsum("bthwnm,bthwme->bthwen", kern, ctx, precision=prec)
