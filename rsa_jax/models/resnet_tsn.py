"""TSN-ResNet with RSA blocks (docs/method.md#network), plus its 2D/3D-conv baselines.

The official network (``ops/models.py`` TSN + ``ops/ResNet.py``) is a ResNet whose
convolutions are Conv3d with (1,k,k) kernels and no temporal stride: every frame
is processed independently except inside the RSA layers, which look 5 frames
wide.  Seven bottlenecks carry RSA in place of their middle (1,3,3) conv.

Layout is channels-last, ``(B, T, H, W, C)``.  Convolution kernels are stored as
(kT, kH, kW, C_in, C_out) even for (1,k,k) kernels, so a PyTorch Conv3d weight
converts with a single transpose; at run time (1,k,k) convolutions fold T into
the batch and run as 2-D convolutions, which XLA:CPU executes faster than the
equivalent 3-D convolution (measured in the model README section).

Parameter names follow the official state dict (``conv1``, ``bn1``,
``layer{s}_{b}/{conv1,bn1,conv2,bn2,conv3,bn3,downsample_conv,downsample_bn}``,
``new_fc``) so that ``rsa_jax.convert`` is a renaming plus transposes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from rsa_jax.layers import RSA
from rsa_jax.layers.frame_ops import channel_matmul, frame_conv2d, max_pool_stem

# (block type, blocks per stage) per depth, as torchvision's resnet{18,34,50,101}.
STAGE_BLOCKS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
                50: ("bottleneck", (3, 4, 6, 3)), 101: ("bottleneck", (3, 4, 23, 3))}
BACKBONES = ("rsa", "tsn2d", "tsn3d")
# Rematerialisation settings (docs/benchmarks.md): 'rsa' recomputes each RSA layer's
# intermediates (relational kernels, contexts: the largest per-clip tensors) in the
# backward pass from the layer's saved input; 'block' saves only each block's input.
REMAT = ("none", "rsa", "block")


def msra_fan_out():
    """Official ResNet init of every conv: kaiming_normal_(mode='fan_out', relu)."""
    return nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def survival_probs(num_blocks: int, stochastic_depth: float) -> list[float]:
    """Official linear schedule: 1.0 for the first block down to 1 - sd for the last."""
    if num_blocks == 1:
        return [1.0]
    return [1.0 - stochastic_depth * b / (num_blocks - 1) for b in range(num_blocks)]


class GroupBatchNorm(nn.Module):
    """Batch norm whose training statistics are over groups of ``group_clips`` clips.

    The official run normalises each GPU's 8 clips under DataParallel
    (docs/method.md#quirks); here the groups are consecutive rows of the global
    batch, whatever the device layout. Variables are named as ``nn.BatchNorm``'s
    (params scale/bias, batch_stats mean/var), so checkpoints are interchangeable.
    As under DataParallel, where only replica 0's buffers persist, the running
    statistics are updated from the first group alone. Same arithmetic as
    ``nn.BatchNorm`` (float32 E[x²] − E[x]² statistics, biased variance).
    """

    group_clips: int
    use_running_average: bool = False
    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    scale_init: Any = nn.initializers.ones

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        scale = self.param("scale", self.scale_init, (c,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
        if self.use_running_average:
            mean, var, xg = ra_mean.value, ra_var.value, x
        else:
            b, g = x.shape[0], self.group_clips
            if b % g:
                raise ValueError(f"model.bn_group_clips={g} does not divide the batch of {b} "
                                 "clips (per micro-batch) seen by a batch-norm layer")
            xg = x.reshape((b // g, g) + x.shape[1:])
            x32 = xg.astype(jnp.float32)
            axes = tuple(range(1, xg.ndim - 1))
            mean = x32.mean(axes)
            var = jnp.maximum(0.0, (x32 * x32).mean(axes) - mean * mean)
            if not self.is_initializing():
                m = self.momentum
                ra_mean.value = m * ra_mean.value + (1 - m) * mean[0]
                ra_var.value = m * ra_var.value + (1 - m) * var[0]
            mean, var = (v.reshape(v.shape[:1] + (1,) * len(axes) + v.shape[1:])
                         for v in (mean, var))
        y = (xg - mean) * (lax.rsqrt(var + self.epsilon) * scale) + bias
        return y.reshape(x.shape).astype(self.dtype)


def batch_norm(train: bool, group_clips: int, momentum: float, epsilon: float, dtype: Any,
               name: str, scale_init: Any = nn.initializers.ones) -> nn.Module:
    """``nn.BatchNorm`` over the whole batch, or `GroupBatchNorm` when ``group_clips > 0``."""
    if group_clips:
        return GroupBatchNorm(group_clips, use_running_average=not train, momentum=momentum,
                              epsilon=epsilon, dtype=dtype, param_dtype=jnp.float32,
                              scale_init=scale_init, name=name)
    return nn.BatchNorm(use_running_average=not train, momentum=momentum, epsilon=epsilon,
                        axis_name=None, dtype=dtype, param_dtype=jnp.float32, name=name,
                        scale_init=scale_init)


class Conv(nn.Module):
    """Bias-free Conv3d with PyTorch padding k//2; (1,k,k) kernels run per frame.

    Attributes:
      features: output channels.
      kernel_size: (kT, kH, kW), odd.
      strides: (sT, sH, sW).
    """

    features: int
    kernel_size: Sequence[int] = (1, 1, 1)
    strides: Sequence[int] = (1, 1, 1)
    dtype: Any = jnp.float32
    precision: Any = None
    platform: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        ks = tuple(int(k) for k in self.kernel_size)
        st = tuple(int(s) for s in self.strides)
        w = self.param("kernel", msra_fan_out(), ks + (x.shape[-1], self.features),
                       jnp.float32).astype(self.dtype)
        x = x.astype(self.dtype)
        pad = [(k // 2, k // 2) for k in ks]
        if ks == (1, 1, 1):
            # A 1×1 conv is a matmul over channels (strided: of every s-th position).
            # As a dot, XLA:CPU runs it and its weight gradient ~2x faster than as a
            # convolution, whose weight gradient also needs a transposed copy of x.
            return channel_matmul(x[:, ::st[0], ::st[1], ::st[2]], w[0, 0, 0], self.precision)
        if ks[0] == 1 and st[0] == 1:  # frames are independent
            return frame_conv2d(x, w, st[1:], self.precision, self.platform)
        return lax.conv_general_dilated(
            x, w, st, pad, dimension_numbers=("NTHWC", "THWIO", "NTHWC"),
            precision=self.precision)


class Block(nn.Module):
    """Bottleneck (depth 50/101) or basic block (18/34), torchvision v1.5 layout.

    Bottleneck: 1×1 → BN → ReLU → mid → BN → ReLU → 1×1 (×4) → BN(γ=0) → [drop path]
    → + shortcut → ReLU, with the stride on the middle conv.  Basic: mid(stride) →
    BN → ReLU → conv2 → BN(γ=0) → ... ; RSA, if any, replaces the *second* conv
    (``conv2``) of a basic block, which never carries the stride.

    Attributes:
      planes: width of the block's inner convolutions.
      stride: spatial stride (1 or 2) of the middle conv and shortcut.
      mid_kernel: kernel of the plain middle conv ((1,3,3) or (3,3,3)).
      rsa: None, or the `RSA` constructor fields for the middle conv.
      survival: stochastic-depth survival probability of the residual branch.
      downsample: whether the shortcut is a 1×1 conv + BN.
    """

    planes: int
    kind: str = "bottleneck"
    stride: int = 1
    mid_kernel: Sequence[int] = (1, 3, 3)
    rsa: Any = None
    survival: float = 1.0
    downsample: bool = False
    bn_momentum: float = 0.9
    bn_eps: float = 1e-5
    bn_group_clips: int = 0
    dtype: Any = jnp.float32
    precision: Any = None
    platform: str | None = None
    remat_rsa: bool = False

    def _bn(self, name, train, zero=False):
        return batch_norm(train, self.bn_group_clips, self.bn_momentum, self.bn_eps,
                          self.dtype, name,
                          nn.initializers.zeros if zero else nn.initializers.ones)

    def _mid(self, name, stride):
        if self.rsa is not None:
            # nothing_saveable: only the layer's input is kept for the backward pass.
            rsa_cls = (nn.remat(RSA, policy=jax.checkpoint_policies.nothing_saveable)
                       if self.remat_rsa else RSA)
            return rsa_cls(features=self.planes, **dict(self.rsa), dtype=self.dtype,
                           precision=self.precision, platform=self.platform, name=name)
        return Conv(self.planes, self.mid_kernel, (1, stride, stride), self.dtype,
                    self.precision, self.platform, name=name)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        def conv(f, k, s, name):
            return Conv(f, k, s, self.dtype, self.precision, self.platform, name=name)

        s = self.stride
        if self.kind == "bottleneck":
            out_ch = 4 * self.planes
            y = nn.relu(self._bn("bn1", train)(conv(self.planes, (1, 1, 1), (1, 1, 1), "conv1")(x)))
            y = self._mid("conv2", s)(y)
            if self.rsa is not None:
                self.sow("intermediates", "rsa_out", y)
            y = nn.relu(self._bn("bn2", train)(y))
            y = self._bn("bn3", train, zero=True)(conv(out_ch, (1, 1, 1), (1, 1, 1), "conv3")(y))
        else:
            out_ch = self.planes
            y = conv(self.planes, self.mid_kernel, (1, s, s), "conv1")(x)
            y = nn.relu(self._bn("bn1", train)(y))
            y = self._mid("conv2", 1)(y)
            if self.rsa is not None:
                self.sow("intermediates", "rsa_out", y)
            y = self._bn("bn2", train, zero=True)(y)
        if train and self.survival < 1.0:
            # One Bernoulli(p) per clip; the kept branch is scaled by 1/p (official).
            keep = jax.random.bernoulli(self.make_rng("drop_path"), self.survival,
                                        (y.shape[0],) + (1,) * (y.ndim - 1))
            scale = 1.0 / self.survival if self.survival > 0 else 0.0
            y = y * (keep.astype(y.dtype) * jnp.asarray(scale, y.dtype))
        if self.downsample:
            x = conv(out_ch, (1, 1, 1), (1, s, s), "downsample_conv")(x)
            x = self._bn("downsample_bn", train)(x)
        return nn.relu(y + x.astype(y.dtype))


class ResNetTSN(nn.Module):
    """TSN-ResNet on ``(B, T, H, W, 3)`` clips -> ``(B, num_classes)`` float32 logits.

    Attributes:
      depth: 18, 34, 50 or 101.
      width: base width (64 = the standard ResNet; stage widths width·{1,2,4,8}).
      num_classes: classifier outputs.
      backbone: 'rsa' (RSA at ``rsa_positions``), 'tsn2d' ((1,3,3) convs everywhere)
        or 'tsn3d' ((3,3,3) middle convs; the stem stays (1,7,7)).
      rsa_positions: per stage, 0-based block indices whose middle conv is RSA.  As
        in the official code block 0 of a stage is never RSA, and indices past the
        stage's length are ignored (so the default list also works for depth 18).
      rsa: `RSA` fields shared by all RSA layers, as a tuple of (name, value) pairs
        (num_heads, kernel_size, kernel_type, context_type, implementation, key_dim,
        value_dim, latent_dim).
      dropout: dropout rate on the per-frame 2048-d feature before ``new_fc``.
      stochastic_depth: final drop rate of the linear schedule (0.2 -> 1.0 ... 0.8).
      bn_momentum, bn_eps: flax convention (PyTorch momentum 0.1 == flax 0.9).
      bn_group_clips: 0 = batch-norm statistics over the whole (micro-)batch; g > 0 =
        over each group of g consecutive clips (`GroupBatchNorm`; 8 = official).
      dtype: compute dtype; parameters are always float32.
      remat: one of `REMAT`: 'none', 'rsa' (recompute inside every RSA layer in
        the backward pass) or 'block' (recompute every residual block from its
        input).  Values and gradients are the same; only memory and time change.
      platform: 'cpu', 'gpu' or 'tpu': the platform the program is built for, which
        picks the backend forms of every layer (None: the default devices'; see
        `rsa_jax.layers.conv_forms.resolve_platform`).
    """

    depth: int = 50
    width: int = 64
    num_classes: int = 174
    backbone: str = "rsa"
    rsa_positions: Sequence[Sequence[int]] = ((2,), (1, 3), (1, 3, 5), (1,))
    rsa: Any = (("num_heads", 8), ("kernel_size", (5, 7, 7)), ("kernel_type", "VplusR"),
                ("context_type", "VplusR"), ("implementation", "conv"))
    dropout: float = 0.3
    stochastic_depth: float = 0.2
    bn_momentum: float = 0.9
    bn_eps: float = 1e-5
    bn_group_clips: int = 0
    dtype: Any = jnp.float32
    precision: Any = None
    remat: str = "none"
    platform: str | None = None

    def block_specs(self) -> list[dict]:
        """Static description of every block, in construction order."""
        if self.depth not in STAGE_BLOCKS:
            raise ValueError(f"depth must be one of {sorted(STAGE_BLOCKS)}, got {self.depth}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        kind, counts = STAGE_BLOCKS[self.depth]
        if self.backbone == "rsa" and len(self.rsa_positions) != 4:
            raise ValueError(f"rsa_positions needs 4 lists (one per stage), "
                             f"got {self.rsa_positions!r}")
        probs = survival_probs(sum(counts), self.stochastic_depth)
        mid = (3, 3, 3) if self.backbone == "tsn3d" else (1, 3, 3)
        expansion = 4 if kind == "bottleneck" else 1
        specs, in_ch, g = [], self.width, 0
        for s, n in enumerate(counts):
            planes = self.width * 2 ** s
            positions = set(self.rsa_positions[s]) if self.backbone == "rsa" else set()
            for b in range(n):
                stride = 2 if (b == 0 and s > 0) else 1
                specs.append(dict(
                    name=f"layer{s + 1}_{b}", planes=planes, kind=kind, stride=stride,
                    mid_kernel=mid, rsa=b > 0 and b in positions, survival=probs[g],
                    downsample=b == 0 and (stride != 1 or in_ch != planes * expansion)))
                in_ch = planes * expansion
                g += 1
        return specs

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, return_features: bool = False):
        if x.ndim != 5 or x.shape[-1] != 3:
            raise ValueError(f"ResNetTSN expects (B, T, H, W, 3) frames, got {x.shape}")
        feats = {}
        y = Conv(self.width, (1, 7, 7), (1, 2, 2), self.dtype, self.precision, self.platform,
                 name="conv1")(x.astype(self.dtype))
        y = batch_norm(train, self.bn_group_clips, self.bn_momentum, self.bn_eps, self.dtype,
                       "bn1")(y)
        y = nn.relu(y)
        y = max_pool_stem(y)
        feats["stem"] = y
        rsa_fields = dict(self.rsa)
        if self.remat not in REMAT:
            raise ValueError(f"model.remat must be one of {REMAT}, got {self.remat!r}")
        # `train` (argument 2, after the module itself) picks Python branches: static.
        block_cls = (nn.remat(Block, static_argnums=(2,),
                              policy=jax.checkpoint_policies.nothing_saveable)
                     if self.remat == "block" else Block)
        for spec in self.block_specs():
            y = block_cls(planes=spec["planes"], kind=spec["kind"], stride=spec["stride"],
                      mid_kernel=spec["mid_kernel"],
                      rsa=tuple(rsa_fields.items()) if spec["rsa"] else None,
                      survival=spec["survival"], downsample=spec["downsample"],
                      bn_momentum=self.bn_momentum, bn_eps=self.bn_eps,
                      bn_group_clips=self.bn_group_clips, dtype=self.dtype,
                      precision=self.precision, platform=self.platform,
                      remat_rsa=self.remat == "rsa",
                      name=spec["name"])(y, train)
            feats[spec["name"].split("_")[0]] = y  # last block of a stage wins
        pooled = jnp.mean(y.astype(jnp.float32), axis=(2, 3))  # (B, T, C) spatial mean
        h = nn.Dropout(self.dropout, deterministic=not train)(pooled)
        frame_logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                                kernel_init=nn.initializers.xavier_uniform(),
                                precision=self.precision, name="new_fc")(h)
        frame_logits = frame_logits.astype(jnp.float32)
        logits = jnp.mean(frame_logits, axis=1)  # TSN consensus: mean over frames
        if return_features:
            feats.update(pooled=pooled, frame_logits=frame_logits)
            return logits, feats
        return logits
