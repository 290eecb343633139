"""Train state, one train step and one eval step — pure functions of their inputs.

``train_step`` is written for one device; ``compile_steps`` jits it with the
shardings from ``rsa_jax.parallel`` (batch on the data axis, so batch norm
averages over the global batch; state donated).
"""

# No `from __future__ import annotations`: clu reads TrainMetrics annotations as objects.

import functools
from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from clu import metrics
from flax.training import train_state

from rsa_jax import parallel
from rsa_jax.data import transforms
from rsa_jax.train import optim

# The host path's folded constants (transforms._NORMALIZE_LUT is built from the
# same float32 products), so device and host normalisation agree to rounding.
_MEAN_255 = transforms.IMAGENET_MEAN * np.float32(255.0)
_INV_STD_255 = np.float32(1.0) / (transforms.IMAGENET_STD * np.float32(255.0))


class TrainState(train_state.TrainState):
    """Params, optimiser state, BN statistics and the run's base RNG key.

    ``rng`` is a raw uint32 key, constant over the run: step n uses
    ``fold_in(rng, n)``, so a restored state replays the same dropout and
    stochastic-depth masks as an uninterrupted run.
    """

    batch_stats: Any
    rng: jax.Array


@flax.struct.dataclass
class TrainMetrics(metrics.Collection):
    loss: metrics.Average.from_output("loss")
    accuracy: metrics.Average.from_output("accuracy")
    grad_norm: metrics.Average.from_output("grad_norm")
    learning_rate: metrics.LastValue.from_output("learning_rate")


def init_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array,
               input_shape: tuple[int, ...]) -> TrainState:
    """Initialises variables with the model's own initialisers (call under jit)."""
    k_params, k_drop, k_dp, k_train = jax.random.split(rng, 4)
    variables = model.init({"params": k_params, "dropout": k_drop, "drop_path": k_dp},
                           jnp.zeros(input_shape, jnp.float32), train=False)
    return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                             batch_stats=variables.get("batch_stats", {}), rng=k_train)


def normalize_video(video: jax.Array) -> jax.Array:
    """uint8 pixels → float32 ImageNet-normalised (inside the jitted steps, so the
    host sends 1 byte per value instead of 4); float input is already normalised
    by the data pipeline and passes through. The model casts to its compute dtype."""
    if video.dtype != jnp.uint8:
        return video
    return (video.astype(jnp.float32) - _MEAN_255) * _INV_STD_255


def _loss_and_grads(state: TrainState, params, batch_stats, batch, rng, label_smoothing):
    def loss_fn(p):
        k_drop, k_dp = jax.random.split(rng)
        logits, updates = state.apply_fn(
            {"params": p, "batch_stats": batch_stats}, normalize_video(batch["video"]), train=True,
            mutable=["batch_stats"], rngs={"dropout": k_drop, "drop_path": k_dp})
        logits = logits.astype(jnp.float32)
        targets = optax.smooth_labels(jax.nn.one_hot(batch["label"], logits.shape[-1]),
                                      label_smoothing)
        loss = optax.softmax_cross_entropy(logits, targets).mean()
        correct = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
        return loss, (correct, updates.get("batch_stats", batch_stats))

    (loss, (acc, new_bs)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return loss, acc, new_bs, grads


def train_step(state: TrainState, batch: dict[str, jax.Array], *,
               learning_rate_fn: Callable[[jax.Array], jax.Array],
               label_smoothing: float = 0.1,
               grad_accum_steps: int = 1) -> tuple[TrainState, TrainMetrics]:
    """Forward, label-smoothed cross-entropy, backward, optax update, metrics.

    With ``grad_accum_steps = A > 1`` the batch is split into A micro-batches
    (row i goes to micro-batch i % A, so each stays evenly spread over the data
    axis); gradients are averaged and BN statistics updated micro-batch by
    micro-batch, then one optimiser update is applied.
    """
    rng = jax.random.fold_in(state.rng, state.step)
    if grad_accum_steps == 1:
        loss, acc, new_bs, grads = _loss_and_grads(state, state.params, state.batch_stats,
                                                   batch, rng, label_smoothing)
    else:
        a = grad_accum_steps
        micro = jax.tree_util.tree_map(
            lambda x: jnp.swapaxes(x.reshape((x.shape[0] // a, a) + x.shape[1:]), 0, 1),
            batch)

        def body(carry, inputs):
            bs, g_sum, l_sum, a_sum = carry
            i, mb = inputs
            loss, acc, bs, g = _loss_and_grads(state, state.params, bs, mb,
                                               jax.random.fold_in(rng, i), label_smoothing)
            g_sum = jax.tree_util.tree_map(jnp.add, g_sum, g)
            return (bs, g_sum, l_sum + loss, a_sum + acc), None

        zeros = jax.tree_util.tree_map(jnp.zeros_like, state.params)
        (new_bs, grads, loss, acc), _ = jax.lax.scan(
            body, (state.batch_stats, zeros, 0.0, 0.0), (jnp.arange(a), micro))
        grads = jax.tree_util.tree_map(lambda g: g / a, grads)
        loss, acc = loss / a, acc / a
    new_state = state.apply_gradients(grads=grads, batch_stats=new_bs)
    m = TrainMetrics.single_from_model_output(
        loss=loss, accuracy=acc, grad_norm=optax.global_norm(grads),
        learning_rate=learning_rate_fn(state.step))
    return new_state, m


def eval_step(state: TrainState, video: jax.Array) -> jax.Array:
    """Class logits (float32) of a batch; multi-view input (b, V, T, H, W, 3)
    is classified view by view and the logits averaged over views."""
    video = normalize_video(video)
    views = video.shape[1] if video.ndim == 6 else None
    if views:
        video = video.reshape((-1,) + video.shape[2:])
    logits = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats},
                            video, train=False).astype(jnp.float32)
    if views:
        logits = logits.reshape(-1, views, logits.shape[-1]).mean(axis=1)
    return logits


def compile_steps(mesh, state_shardings, *, learning_rate_fn, label_smoothing: float,
                  grad_accum_steps: int = 1):
    """jits train/eval steps with explicit shardings and a donated train state."""
    batch_sh = parallel.data_sharding(mesh)
    rep = parallel.replicated(mesh)
    step = functools.partial(train_step, learning_rate_fn=learning_rate_fn,
                             label_smoothing=label_smoothing,
                             grad_accum_steps=grad_accum_steps)
    p_train = jax.jit(step, in_shardings=(state_shardings, batch_sh),
                      out_shardings=(state_shardings, rep), donate_argnums=(0,))
    p_eval = jax.jit(eval_step, in_shardings=(state_shardings, batch_sh),
                     out_shardings=batch_sh)
    return p_train, p_eval


def compile_epoch_step(state_shardings, *, learning_rate: float, momentum: float,
                       nesterov: bool, weight_decay: float) -> Callable[[TrainState], TrainState]:
    """jits `optim.official_epoch_step` on the train state (sharded, donated); the
    state's step count, hence the lr schedule and RNG stream, is unchanged."""
    def epoch_step(state: TrainState) -> TrainState:
        params, opt_state = optim.official_epoch_step(
            state.params, state.opt_state, learning_rate=learning_rate, momentum=momentum,
            nesterov=nesterov, weight_decay=weight_decay)
        return state.replace(params=params, opt_state=opt_state)

    return jax.jit(epoch_step, in_shardings=(state_shardings,), out_shardings=state_shardings,
                   donate_argnums=(0,))


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array,
                       input_shape: tuple[int, ...], mesh, partition_rules=(),
                       fsdp_min_size: int = 0) -> tuple[TrainState, Any]:
    """Initialises the state directly in its sharded layout.

    Returns:
      (state, state_shardings) — the shardings are reused for the jitted step
      and for restoring checkpoints.
    """
    init = functools.partial(init_state, model, tx, input_shape=input_shape)
    _, shardings = abstract_train_state(model, tx, input_shape, mesh, partition_rules,
                                        fsdp_min_size)
    state = jax.jit(init, out_shardings=shardings)(rng)
    return state, shardings


def abstract_train_state(model: nn.Module, tx: optax.GradientTransformation,
                         input_shape: tuple[int, ...], mesh, partition_rules=(),
                         fsdp_min_size: int = 0) -> tuple[Any, Any]:
    """The train state's shapes and dtypes (``jax.ShapeDtypeStruct``s carrying their
    shardings) and its shardings, without computing anything: what `create_train_state`
    builds, for compiling the step ahead of time (`rsa_jax.aot`)."""
    init = functools.partial(init_state, model, tx, input_shape=input_shape)
    abstract = jax.eval_shape(init, jax.random.PRNGKey(0))
    shardings = parallel.tree_shardings(mesh, abstract, partition_rules, fsdp_min_size)
    typed = jax.tree_util.tree_map(
        lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), abstract, shardings)
    return typed, shardings
