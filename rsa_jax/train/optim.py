"""Optimiser and learning-rate schedule of the official recipe (rsa-method.md §4.1-4.3).

PyTorch 1.6 ``SGD(momentum=0.9, nesterov, weight_decay=5e-4)`` after
``clip_grad_norm_(100)`` is, in optax pieces::

    clip_by_global_norm(100) -> add_decayed_weights(5e-4, mask) -> sgd(lr, 0.9, nesterov)

``optax.trace(nesterov=True)`` is exactly torch's ``buf = m·buf + d_p;
step = d_p + m·buf`` (dampening 0) and the decay is coupled L2 added before
momentum, as in torch. Decay is off for BN γ/β and every bias, i.e. for every
parameter with ndim <= 1 (RSA's ``P1`` and ``I`` are 2-D and *are* decayed, §4.1).

Deviations (on purpose, see §4.2): the official loop's "phantom" zero-gradient
optimiser step at the start of every epoch is not reproduced, nor is its
dropping of the last batch of each epoch; the lr multipliers have no effect in
the official runs and are not modelled.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax


def epoch_lr_schedule(base_lr: float, num_epochs: int, warmup_epochs: int = 5,
                      warmup_factor: float = 1e-3, min_ratio: float = 1e-3) -> optax.Schedule:
    """lr as a function of the official scheduler counter s (float, in epochs).

    ``ops/CosineAnnealingLR.py``: for s < warmup linear from ``warmup_factor·lr``
    to lr, then cosine to ``min_ratio·lr`` reached at s = num_epochs. Epoch e
    (0-based) trains at s = e + 1 (§4.2).
    """
    warmup = optax.linear_schedule(base_lr * warmup_factor, base_lr, warmup_epochs)
    cosine = optax.cosine_decay_schedule(base_lr, max(num_epochs - warmup_epochs, 1),
                                         alpha=min_ratio)
    return optax.join_schedules([warmup, cosine], [warmup_epochs])


def lr_schedule(config: Any, steps_per_epoch: int) -> optax.Schedule:
    """Per-optimiser-step schedule.

    ``config.schedule == 'epoch'``: the official stepped form, constant within an
    epoch (s = floor(step / steps_per_epoch) + 1). ``'step'``: the smooth form
    s = step / steps_per_epoch + 1, equal to the stepped one at every epoch start.
    """
    by_epoch = epoch_lr_schedule(config.learning_rate, config.num_epochs,
                                 config.warmup_epochs, config.warmup_factor,
                                 config.min_lr_ratio)
    if config.schedule not in ("epoch", "step"):
        raise ValueError(f"config.schedule must be 'epoch' or 'step', got {config.schedule!r}")
    smooth = config.schedule == "step"

    def schedule(step):
        s = jnp.asarray(step, jnp.float32) / steps_per_epoch
        s = s if smooth else jnp.floor(s)
        return by_epoch(s + 1.0)

    return schedule


def weight_decay_mask(params: Any) -> Any:
    """True where L2 decay applies: conv/dense kernels, RSA P1/I (ndim > 1)."""
    return jax.tree_util.tree_map(lambda p: jnp.ndim(p) > 1, params)


def create_optimizer(config: Any, steps_per_epoch: int) -> optax.GradientTransformation:
    """The official SGD recipe as an optax chain (see module docstring)."""
    parts = []
    if config.grad_clip_norm:
        parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
    if config.weight_decay:
        parts.append(optax.add_decayed_weights(config.weight_decay, mask=weight_decay_mask))
    parts.append(optax.sgd(lr_schedule(config, steps_per_epoch), momentum=config.momentum,
                           nesterov=config.nesterov))
    return optax.chain(*parts)
