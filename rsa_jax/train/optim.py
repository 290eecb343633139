"""Optimiser and learning-rate schedule of the official recipe (docs/training.md#optimiser,
docs/training.md#schedule).

PyTorch 1.6 ``SGD(momentum=0.9, nesterov, weight_decay=5e-4)`` after
``clip_grad_norm_(100)`` is, in optax pieces::

    clip_by_global_norm(100) -> add_decayed_weights(5e-4, mask) -> sgd(lr, 0.9, nesterov)

``optax.trace(nesterov=True)`` is exactly torch's ``buf = m·buf + d_p;
step = d_p + m·buf`` (dampening 0) and the decay is coupled L2 added before
momentum, as in torch. Decay is off for BN γ/β and every bias, i.e. for every
parameter with ndim <= 1 (RSA's ``P1`` and ``I`` are 2-D and *are* decayed).

The official loop's extra zero-gradient optimiser step at the start of every
epoch after the first (docs/training.md#recipe-audit) is `official_epoch_step`,
applied by the train loop only with ``config.official_epoch_step = True``.
Deviations (on purpose): the dropping of the last batch of each epoch; the lr
multipliers, which have no effect in the official runs outside that extra step.
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
    (0-based) trains at s = e + 1 (docs/training.md#schedule).
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


def _lr_mult(path) -> float:
    """Official ``get_optim_policies`` lr multiplier: 2 for biases; ``new_fc`` has
    the only bias of the network (convolutions have none, BN shifts are 1)."""
    names = [getattr(k, "key", getattr(k, "name", None)) for k in path]
    return 2.0 if names[-2:] == ["new_fc", "bias"] else 1.0


def official_epoch_step(params: Any, opt_state: Any, *, learning_rate: float, momentum: float,
                        nesterov: bool, weight_decay: float) -> tuple[Any, Any]:
    """One PyTorch SGD step with zero gradients, as the official loop takes at each
    epoch start after ``zero_grad``: no clipping, lr = base lr × lr_mult, coupled
    decay on the `weight_decay_mask` parameters, momentum buffer advanced.

    Changes the momentum trace inside ``opt_state`` (an optax.sgd chain), not the
    schedule count, so the lr schedule of the following steps is unaffected.
    """
    mask = weight_decay_mask(params)
    d_p = jax.tree_util.tree_map(lambda p, m: weight_decay * p if m else jnp.zeros_like(p),
                                 params, mask)
    trace = optax.tree_utils.tree_get(opt_state, "trace")
    if trace is None or not momentum:
        new_trace, step = trace, d_p
    else:
        new_trace = jax.tree_util.tree_map(lambda b, d: momentum * b + d, trace, d_p)
        step = jax.tree_util.tree_map(lambda d, b: d + momentum * b, d_p, new_trace) \
            if nesterov else new_trace
    params = jax.tree_util.tree_map_with_path(
        lambda path, p, u: p - learning_rate * _lr_mult(path) * u, params, step)
    if new_trace is not None:
        opt_state = optax.tree_utils.tree_set(opt_state, trace=new_trace)
    return params, opt_state
