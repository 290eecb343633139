"""Relational Self-Attention (Kim et al., NeurIPS 2021) as a Flax linen module.

Notation follows ``shared/docs/rsa-method.md`` §1 (and the official ``ops/rsa.py``):
at every position n the layer forms L = ``num_heads`` queries q̂, one key k̂ and one
value v̂ (all L2-normalised, eps inside the square root), and computes

    y_{n,l} = κ_{n,l} · X_n
    κ_{n,l} = q̂_{n,l}ᵀ (P + R_n) A          kernel: basic (P) + relational (R_n = H1 * k̂)
    X_n     = V_n Λ + V_n V_nᵀ Γᵀ             context: basic (Λ = I) + relational (Γ = G)

over a kT×kH×kW window (M = kT·kH·kW offsets, zero padded, no wrap-around).

Two numerically equivalent implementations sit behind one interface:

* ``'conv'`` — the factorised form of the official code (§1.4): the key map is
  filtered by the grouped 3-D convolution H1, every value channel by the shared
  single-channel filter banks H2 and G (fused into one convolution), and the
  per-position latent kernel (nh × dd) and latent context (dd × dv) are contracted
  with ``einsum``.  Never materialises anything of size M per position.
* ``'patches'`` — literal to the paper: the M-neighbourhoods of k̂ and v̂ are
  extracted (pad + slice + stack; the gradient of ``conv_general_dilated_patches``
  is pathologically slow on CPU), the M-dim kernels κ (nh × M) and the M-row
  contexts X (M × dv) are formed explicitly and ``y = κ X``.  The M × M
  self-correlation V Vᵀ is folded by associativity, V (Vᵀ Γᵀ), since it would
  cost M²·dv per position.

Output channels are value-major, head-minor (channel ``e * num_heads + h``), as
the official ``rearrange`` produces; official checkpoints depend on it.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Literal, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

KernelType = Literal["V", "R", "VplusR"]
_TYPES = ("V", "R", "VplusR")
L2_EPS = 1e-6  # official: x / (sum(x^2) + 1e-6) ** 0.5


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
    """Official L2 normalisation: eps inside the sqrt, no clamp."""
    return x * lax.rsqrt(jnp.sum(x * x, axis=axis, keepdims=True) + L2_EPS)


def extract_windows(x: jax.Array, kernel_size: Sequence[int]) -> jax.Array:
    """(B, T, H, W, C) -> (B, T, H, W, M, C): zero-padded neighbourhoods.

    Offsets are enumerated row-major over (t, h, w), the flattening order of a
    PyTorch Conv3d kernel, so window index o lines up with ``weight[..., o]``.
    """
    kt, kh, kw = (int(k) for k in kernel_size)
    _, t, h, w, _ = x.shape
    xp = jnp.pad(x, ((0, 0), (kt // 2,) * 2, (kh // 2,) * 2, (kw // 2,) * 2, (0, 0)))
    slices = [xp[:, a:a + t, b:b + h, c:c + w]
              for a in range(kt) for b in range(kh) for c in range(kw)]
    return jnp.stack(slices, axis=-2)


def avg_pool_stride2(y: jax.Array) -> jax.Array:
    """Official strided output: AvgPool3d((1,3,3), (1,2,2), (0,1,1)), pads counted (/9)."""
    s = lax.reduce_window(y, jnp.array(0, y.dtype), lax.add, (1, 1, 3, 3, 1),
                          (1, 1, 2, 2, 1), ((0, 0), (0, 0), (1, 1), (1, 1), (0, 0)))
    return s / jnp.asarray(9, y.dtype)


def _conv3d_native(x, w, precision, groups=1):
    """Zero-padded 'same' 3-D cross-correlation, (B,T,H,W,C) * (kT,kH,kW,I,O)."""
    pad = [(k // 2, k // 2) for k in w.shape[:3]]
    return lax.conv_general_dilated(
        x, w, (1, 1, 1), pad, dimension_numbers=("NTHWC", "THWIO", "NTHWC"),
        feature_group_count=groups, precision=precision)


def _temporal_taps(x: jax.Array, kt: int) -> jax.Array:
    """(N, T, H, W) -> (N·T, H, W, kT): the kT zero-padded temporal neighbours."""
    n, t, h, w = x.shape
    xp = jnp.pad(x, ((0, 0), (kt // 2, kt // 2), (0, 0), (0, 0)))
    return jnp.stack([xp[:, a:a + t] for a in range(kt)], axis=-1).reshape(n * t, h, w, kt)


def _conv2d_taps(taps, w, precision):
    """taps (N·T, H, W, kT) * w (kT, kH, kW, F) -> (N·T, H, W, F)."""
    kh, kw = w.shape[1:3]
    return lax.conv_general_dilated(
        taps, jnp.transpose(w, (1, 2, 0, 3)), (1, 1), [(kh // 2,) * 2, (kw // 2,) * 2],
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=precision)


def _band(n: int, k: int):
    """Kernel tap linking input q to output p of a 'same' 1-D conv (size n, kernel k),
    as clipped indices [q, p] and a validity mask."""
    d = np.arange(n)[:, None] - np.arange(n)[None, :] + k // 2
    return np.clip(d, 0, k - 1), (d >= 0) & (d < k)


def _shared_conv_form(h: int, w: int, kernel_size: Sequence[int]) -> str:
    """How the CPU path evaluates the shared H2/G convolution on h×w frames.

    'frame': frames no larger than the kernel window: the whole 2-D convolution is
    one matmul with a dense (h·w·kT) × (h·w·F) banded matrix (<= ~2x the useful
    multiply-adds).  'row': w <= 2·kW: the kH row offsets are stacked and the W
    axis becomes a banded (kH·w·kT) × (w·F) matrix.  'taps': larger frames, a 2-D
    convolution over the temporal taps.  Measured fwd+bwd on 2 CPU cores, 5×7×7
    kernel: 7×7 frames 117 -> 27 ms ('frame'), 14×14 116 -> 60 ms ('row');
    at 28×28 and above the convolution is faster.
    """
    if h * w <= kernel_size[1] * kernel_size[2]:
        return "frame"
    return "row" if w <= 2 * kernel_size[2] else "taps"


def _banded_matmul(taps, bank, precision, form):
    """The 'same' 2-D convolution of `taps` (N, H, W, kT) with `bank` (kT, kH, kW, F) as
    one matmul with a banded weight matrix: over whole frames ('frame') or over the W
    axis of kH stacked row offsets ('row').  Returns (N·H·W, F)."""
    _, h, w, kt = taps.shape
    kh, kw = bank.shape[1:3]
    iw, okw = _band(w, kw)
    zero = jnp.zeros((), bank.dtype)
    if form == "frame":  # mat[(qh, qw, a), (ph, pw, f)] = bank[a, qh-ph+kh//2, qw-pw+kw//2, f]
        ih, okh = _band(h, kh)
        m = bank[:, ih[:, None, :, None], iw[None, :, None, :]]  # (kT, qh, qw, ph, pw, F)
        ok = okh[:, None, :, None] & okw[None, :, None, :]
        mat = jnp.moveaxis(jnp.where(ok[None, ..., None], m, zero), 0, 2)
        rows = taps.reshape(-1, h * w * kt)
    else:  # 'row': mat[(i, qw, a), (pw, f)] = bank[a, i, qw-pw+kw//2, f]; rows stack kH offsets
        m = jnp.where(okw[None, None, :, :, None], bank[:, :, iw], zero)  # (kT,kH,qw,pw,F)
        mat = jnp.transpose(m, (1, 2, 0, 3, 4))
        tp = jnp.pad(taps, ((0, 0), (kh // 2, kh // 2), (0, 0), (0, 0)))
        rows = jnp.stack([tp[:, i:i + h] for i in range(kh)], axis=2)  # (N, H, kH, W, kT)
        rows = rows.reshape(-1, kh * w * kt)
    return jnp.dot(rows, mat.reshape(rows.shape[1], -1), precision=precision)


def _shared_conv(v, bank, precision, form):
    """Applies one single-channel filter bank to every channel of v.

    v (B,T,H,W,C), bank (kT,kH,kW,1,F) -> (B,T,H,W,C,F).  Channels move into the
    batch so that one ungrouped operation serves them all: a lax 3-D convolution
    ('native'), a 2-D convolution over the temporal taps ('taps'), or one matmul
    with a banded weight matrix ('frame' / 'row', see `_shared_conv_form`).
    """
    b, t, h, w, c = v.shape
    vb = jnp.moveaxis(v, -1, 1).reshape(b * c, t, h, w)
    if form == "native":
        out = _conv3d_native(vb[..., None], bank, precision)
    else:
        taps, bank2d = _temporal_taps(vb, bank.shape[0]), bank[:, :, :, 0]
        out = (_conv2d_taps(taps, bank2d, precision) if form == "taps"
               else _banded_matmul(taps, bank2d, precision, form))
    return jnp.moveaxis(out.reshape(b, c, t, h, w, -1), 1, 4)


def _grouped_conv_taps(k, h1, groups, precision):
    """Grouped conv H1 (groups = dk, dd filters each) as one 2-D conv per group.

    k (B,T,H,W,dk), h1 (kT,kH,kW,1,dk·dd) -> (B,T,H,W,dk,dd).  A Python loop of
    dense convolutions: XLA:CPU's grouped-convolution gradient is ~30x slower.
    """
    b, t, h, w, dk = k.shape
    dd = h1.shape[-1] // groups
    outs = []
    for j in range(groups):
        taps = _temporal_taps(k[..., j], h1.shape[0])
        outs.append(_conv2d_taps(taps, h1[:, :, :, 0, j * dd:(j + 1) * dd], precision))
    return jnp.stack(outs, axis=-2).reshape(b, t, h, w, dk, dd)


# Above this many groups the per-group loop costs more compile time than it saves
# at run time (measured on CPU: at dk = 32 the loop is 2.6x faster than im2col;
# deeper layers have dk = 64 on 7x7 maps, where im2col is cheap).
_MAX_LOOPED_GROUPS = 32


def _grouped_conv_im2col(k, h1, groups, precision):
    """Grouped conv H1 as a batched matmul over channel-major windows.

    k (B,T,H,W,dk), h1 (kT,kH,kW,1,dk·dd) -> (B,T,H,W,dk,dd).
    """
    b, t, h, w, dk = k.shape
    ks = h1.shape[:3]
    m = int(np.prod(ks))
    dd = h1.shape[-1] // groups
    kc = jnp.pad(jnp.moveaxis(k, -1, 0),
                 ((0, 0), (0, 0)) + tuple((s // 2, s // 2) for s in ks))
    win = jnp.stack([kc[:, :, a:a + t, c:c + h, e:e + w] for a in range(ks[0])
                     for c in range(ks[1]) for e in range(ks[2])], axis=-1)
    r = jnp.einsum("jnm,jmd->jnd", win.reshape(dk, -1, m),
                   h1.reshape(m, dk, dd).transpose(1, 0, 2), precision=precision)
    return jnp.moveaxis(r, 0, 1).reshape(b, t, h, w, dk, dd)


def _t(x: jax.Array) -> jax.Array:
    """Swaps the last two axes in memory (the barrier keeps XLA from folding the
    transpose into a following dot, whose CPU kernel is ~7x slower when the lhs
    contraction axis is not the minor one)."""
    return lax.optimization_barrier(jnp.swapaxes(x, -1, -2))


@jax.custom_vjp
def _pmm(a: jax.Array, b: jax.Array) -> jax.Array:
    """Per-position matrix product (..., n, j) @ (..., j, d) -> (..., n, d).

    Batched small matmuls are fast on XLA:CPU only when the lhs contracts its
    minor axis; autodiff of an einsum produces the other kind for one of the two
    gradients, so the backward pass transposes that operand explicitly.
    """
    return jnp.einsum("...nj,...jd->...nd", a, b)


def _pmm_fwd(a, b):
    return _pmm(a, b), (a, b)


def _pmm_bwd(res, g):
    a, b = res
    return jnp.einsum("...nd,...jd->...nj", g, b), _pmm(_t(a), g)


_pmm.defvjp(_pmm_fwd, _pmm_bwd)


def _fan_out_normal():
    # Official ResNet re-initialises every Conv3d: kaiming_normal_(fan_out, relu).
    return nn.initializers.variance_scaling(2.0, "fan_out", "normal")


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
      conv_strategy: how 'conv' evaluates its 3-D convolutions: 'native'
        (lax 3-D convolution), 'taps2d' (temporal taps folded into channels of a
        2-D convolution, the grouped H1 as one such convolution per group, or an
        im2col matmul above 32 groups; XLA:CPU's 3-D and grouped convolutions
        are an order of magnitude slower; no other forms, so a traced graph has
        the official layer's multiply-adds), or 'auto' = native on GPU/TPU and
        on CPU taps2d where the shared H2/G convolution becomes a banded-matrix
        matmul on small frames (`_shared_conv_form`).
      dtype: compute dtype (None = input dtype); param_dtype: parameter dtype.
      precision: matmul/conv precision (use 'highest' for fixture parity on TPU/GPU).
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
    conv_strategy: Literal["auto", "native", "taps2d"] = "auto"
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None

    @property
    def dims(self) -> RSADims:
        return resolve_dims(self.features, self.num_heads, self.key_dim, self.value_dim,
                            self.latent_dim, self.kernel_size, self.kernel_type,
                            self.context_type)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 5:
            raise ValueError(f"RSA expects (B, T, H, W, C) input, got shape {x.shape}")
        if self.implementation not in ("conv", "patches"):
            raise ValueError(f"implementation must be 'conv' or 'patches', "
                             f"got {self.implementation!r}")
        d = self.dims
        ks = tuple(int(k) for k in self.kernel_size)
        m = int(np.prod(ks))
        dtype = self.dtype or x.dtype
        kt = self.kernel_type
        ct = self.context_type

        # Parameters, in the official registration order.
        p1 = (self.param("P1", nn.initializers.normal(stddev=(m * d.dd) ** -0.5),
                         (d.dk, d.dd), self.param_dtype) if kt == "VplusR" else None)
        lam = (self.param("I", lambda _, s, t: jnp.eye(s[0], dtype=t), (d.dk, d.dk),
                          self.param_dtype) if ct == "VplusR" else None)
        w_proj = self.param("projection", _fan_out_normal(), (x.shape[-1], d.d_hid),
                            self.param_dtype)
        h1 = (self.param("H1", _fan_out_normal(), ks + (1, d.dk * d.dd), self.param_dtype)
              if kt != "V" else None)
        h2 = self.param("H2", _fan_out_normal(), ks + (1, d.dd), self.param_dtype)
        g = (self.param("G", _fan_out_normal(), ks + (1, d.dv), self.param_dtype)
             if ct != "V" else None)
        x, w_proj, p1, lam, h1, h2, g = (
            None if a is None else jnp.asarray(a, dtype)
            for a in (x, w_proj, p1, lam, h1, h2, g))

        # Projection and split: queries [0, nh·dk), key (not for 'V'), value (last dv).
        z = jnp.einsum("bthwc,cd->bthwd", x, w_proj, precision=self.precision)
        q = l2_normalize(z[..., :d.nh * d.dk].reshape(z.shape[:-1] + (d.nh, d.dk)))
        k = l2_normalize(z[..., d.nh * d.dk:d.nh * d.dk + d.dk]) if kt != "V" else None
        v = l2_normalize(z[..., d.d_hid - d.dv:])

        fn = self._conv_form if self.implementation == "conv" else self._patch_form
        y = fn(q, k, v, p1, lam, h1, h2, g, d, ks)  # (B, T, H, W, dv, nh)
        self.sow_kernels(q, k, p1, h1, d)
        y = y.reshape(y.shape[:-2] + (d.dv * d.nh,))  # channel e·nh + h
        if max(self.strides) > 1:
            y = avg_pool_stride2(y)
        return y

    def _conv_form(self, q, k, v, p1, lam, h1, h2, g, d, ks):
        """Factorised evaluation (official §1.4): convs + latent contractions."""
        native = self.conv_strategy == "native" or (
            self.conv_strategy == "auto" and jax.default_backend() != "cpu")
        if native:  # XLA's GPU/TPU dots take any layout
            mm = functools.partial(jnp.einsum, "...nj,...jd->...nd",
                                   precision=self.precision)
            tr = functools.partial(jnp.swapaxes, axis1=-1, axis2=-2)
        else:
            mm, tr = _pmm, _t
        # Latent kernel κ̃ = q̂ᵀ(P + R), (nh × dd) per position.
        if self.kernel_type == "V":
            kern = q
        else:
            if native:
                r = _conv3d_native(k, h1, self.precision, groups=d.dk)
                r = r.reshape(r.shape[:-1] + (d.dk, d.dd))
            elif d.dk <= _MAX_LOOPED_GROUPS:
                r = _grouped_conv_taps(k, h1, d.dk, self.precision)
            else:
                r = _grouped_conv_im2col(k, h1, d.dk, self.precision)
            if p1 is not None:
                r = r + p1
            kern = mm(q, r)
        # Every value channel is filtered by the shared single-channel banks H2 (dd
        # filters, Â) and G (dv filters, Ĝ): one fused convolution.
        bank = h2 if g is None else jnp.concatenate([h2, g], axis=-1)
        if native:
            form = "native"
        elif self.conv_strategy == "auto":
            form = _shared_conv_form(v.shape[2], v.shape[3], ks)
        else:  # 'taps2d': convolutions only, the official layer's graph
            form = "taps"
        ab = _shared_conv(v, bank, self.precision, form)  # (..., c, dd [+ dv])
        a_hat = ab[..., :d.dd]  # Â[c, d]
        if g is None:
            f = tr(a_hat)  # F[d, e] = Â[e, d]
        else:
            g_hat = ab[..., d.dd:]  # Ĝ[c, e]
            if lam is not None:
                g_hat = g_hat + lam  # I indexes [c, e]: no transpose
            f = mm(tr(a_hat), g_hat)  # F[d, e] = Σ_c Â[c, d] Ĝ[c, e]
        return tr(mm(kern, f))  # y[e, n] = Σ_d κ̃[n, d] F[d, e]

    def _patch_form(self, q, k, v, p1, lam, h1, h2, g, d, ks):
        """Explicit M-dim kernels and M-row contexts (paper §1.2-1.3)."""
        m = int(np.prod(ks))
        prec = self.precision
        a = h2.reshape(m, d.dd).T  # A ∈ R^{D × M}
        vw = extract_windows(v, ks)  # V_n: (..., M, dv)
        # Kernel κ_{n,l} ∈ R^{M}.
        if self.kernel_type == "V":
            kern = jnp.einsum("bthwnd,dm->bthwnm", q, a, precision=prec)
        else:
            kw_ = extract_windows(k, ks)  # K_n: (..., M, dk)
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

    def sow_kernels(self, q, k, p1, h1, d: RSADims) -> None:
        """Records the latent kernels of every query for inspection (docs/using.md).

        Only when the 'rsa_kernels' collection is mutable
        (``apply(..., mutable=['rsa_kernels'])``), so training, evaluation and
        'intermediates' captures trace nothing extra. Sows 'kernel_basic' q̂ᵀP
        and 'kernel_relational' q̂ᵀR_n, each (B, T, H, W, nh, dd) in the latent
        space; `window_kernels` maps them onto the kT·kH·kW window (κ = latent · A,
        docs/method.md#kernels). R_n comes from the factorised grouped
        convolution of k̂ with H1, whatever ``implementation`` is.
        """
        if self.is_initializing() or not self.is_mutable_collection("rsa_kernels"):
            return  # init makes every collection mutable: no kernels in the variables
        zeros = jnp.zeros(q.shape[:-1] + (d.dd,), q.dtype)
        if self.kernel_type == "V":  # the query itself is the latent kernel
            basic, rel = q, zeros
        else:
            r = _conv3d_native(k, h1, self.precision, groups=d.dk)
            r = r.reshape(r.shape[:-1] + (d.dk, d.dd))
            rel = jnp.einsum("...nj,...jd->...nd", q, r, precision=self.precision)
            basic = zeros if p1 is None else jnp.einsum(
                "...nj,jd->...nd", q, p1, precision=self.precision)
        self.sow("rsa_kernels", "kernel_basic", basic)
        self.sow("rsa_kernels", "kernel_relational", rel)

    @staticmethod
    def window_kernels(latent: jax.Array, h2: jax.Array) -> jax.Array:
        """Latent kernels (..., nh, dd) and the layer's H2 (kT, kH, kW, 1, dd) ->
        window kernels κ (..., nh, kT, kH, kW), offsets in (t, h, w) order."""
        ks = h2.shape[:3]
        a = jnp.reshape(h2, (-1, h2.shape[-1])).T  # A ∈ R^{dd × M}
        return jnp.einsum("...nd,dm->...nm", latent, a).reshape(latent.shape[:-1] + ks)
