"""Train step, optimiser recipe and schedule: fast tests on a tiny model.

The tiny model is local to this file (conv + BN + dropout + per-frame classifier
+ mean over T) so these tests do not depend on the ResNet assembly; the
end-to-end tests use the real model and data.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from rsa_jax import parallel
from rsa_jax.train import optim
from rsa_jax.train import step as step_lib

NUM_CLASSES = 5


class TinyVideoNet(nn.Module):
    """Conv3d(1x3x3) + BN + ReLU + dropout + per-frame Dense + mean over T."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(8, (1, 3, 3), use_bias=False)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        x = nn.relu(x).mean(axis=(2, 3))                       # (B, T, C)
        x = nn.Dropout(0.3, deterministic=not train)(x)
        return nn.Dense(NUM_CLASSES)(x).mean(axis=1)


def _config(**kw):
    c = ml_collections.ConfigDict(dict(
        learning_rate=0.02, num_epochs=80, warmup_epochs=5, warmup_factor=1e-3,
        min_lr_ratio=1e-3, schedule="epoch", momentum=0.9, nesterov=True,
        weight_decay=5e-4, grad_clip_norm=100.0))
    c.update(kw)
    return c


def _batch(n=8, seed=0):
    r = np.random.RandomState(seed)
    return {"video": r.randn(n, 2, 8, 8, 3).astype(np.float32),
            "label": r.randint(0, NUM_CLASSES, n).astype(np.int32)}


@functools.cache
def _run_steps(num_devices: int, accum: int = 1, num_steps: int = 2):
    mesh = parallel.create_mesh({"data": num_devices}, jax.devices()[:num_devices])
    cfg = _config(learning_rate=0.5)
    tx = optim.create_optimizer(cfg, steps_per_epoch=1)
    state, sh = step_lib.create_train_state(TinyVideoNet(), tx, jax.random.PRNGKey(0),
                                            (1, 2, 8, 8, 3), mesh)
    train, _ = step_lib.compile_steps(mesh, sh, learning_rate_fn=optim.lr_schedule(cfg, 1),
                                      label_smoothing=0.1, grad_accum_steps=accum)
    losses = []
    for i in range(num_steps):
        state, m = train(state, parallel.shard_batch(_batch(seed=i), mesh))
        losses.append(float(m.compute()["loss"]))
    return jax.device_get((state.params, state.batch_stats)), losses


def test_eight_devices_equal_one_device():
    assert jax.device_count() >= 8, "conftest.py should force 8 CPU devices"
    (p1, b1), l1 = _run_steps(1)
    (p8, b8), l8 = _run_steps(8)
    np.testing.assert_allclose(l8, l1, rtol=1e-6, atol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves((p8, b8)), jax.tree_util.tree_leaves((p1, b1))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    one_step = _run_steps(1, num_steps=1)[0][0]
    assert not np.allclose(p1["Dense_0"]["kernel"], one_step["Dense_0"]["kernel"])


def test_fsdp_sharding_gives_same_step():
    mesh = parallel.create_mesh({"data": 8}, jax.devices()[:8])
    cfg = _config(learning_rate=0.5)
    tx = optim.create_optimizer(cfg, 1)
    state, sh = step_lib.create_train_state(TinyVideoNet(), tx, jax.random.PRNGKey(0),
                                            (1, 2, 8, 8, 3), mesh, fsdp_min_size=16)
    kernel_sh = sh.params["Dense_0"]["kernel"]
    assert kernel_sh.spec == jax.sharding.PartitionSpec("data", None)   # (8, 5): dim 0
    assert sh.opt_state[2][0].trace["Dense_0"]["kernel"].spec == kernel_sh.spec
    train, _ = step_lib.compile_steps(mesh, sh, learning_rate_fn=optim.lr_schedule(cfg, 1),
                                      label_smoothing=0.1)
    for i in range(2):
        state, _ = train(state, parallel.shard_batch(_batch(seed=i), mesh))
    (p1, _), _ = _run_steps(1)
    for a, b in zip(jax.tree_util.tree_leaves(jax.device_get(state.params)),
                    jax.tree_util.tree_leaves(p1)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_grad_accumulation_matches_without_bn_effects():
    # With accumulation the BN batch statistics are per micro-batch, so outputs
    # differ slightly; the update must still be close and finite.
    (pa, _), la = _run_steps(8, accum=2)
    (p1, _), l1 = _run_steps(1)
    assert np.all(np.isfinite(la))
    np.testing.assert_allclose(la[0], l1[0], rtol=0.2)


def test_lr_schedule_matches_logged_values():
    """docs/training.md#schedule: per-epoch lr of the SSv2 / SSv1 logs (E = 80)."""
    spe = 7
    sched = optim.lr_schedule(_config(), steps_per_epoch=spe)
    logged = {0: 0.004016, 1: 0.008012, 2: 0.012008, 3: 0.016004, 4: 0.02, 5: 0.0199912,
              6: 0.019965, 40: 0.0106373, 60: 0.00302036, 70: 0.000721533, 76: 9.87741e-05,
              77: 5.50363e-05, 78: 2.87629e-05, 79: 2e-05}
    for epoch, lr in logged.items():
        for s in (epoch * spe, epoch * spe + spe - 1):   # constant within the epoch
            np.testing.assert_allclose(float(sched(s)), lr, rtol=2e-5)
    smooth = optim.lr_schedule(_config(schedule="step"), steps_per_epoch=spe)
    for epoch, lr in logged.items():
        np.testing.assert_allclose(float(smooth(epoch * spe)), lr, rtol=2e-5)
    assert float(smooth(spe // 2)) > float(smooth(0))           # moves inside an epoch
    e50 = optim.lr_schedule(_config(num_epochs=50), 1)          # SSv1 script, E = 50
    np.testing.assert_allclose(float(e50(49)), 2e-5, rtol=1e-4)


def test_optimizer_is_torch_sgd_nesterov_coupled_decay():
    """optax chain == PyTorch 1.6 SGD(nesterov, wd) after clip_grad_norm_
    (docs/training.md#optimiser)."""
    cfg = _config(grad_clip_norm=1.0, schedule="step")
    tx = optim.create_optimizer(cfg, steps_per_epoch=3)
    lr_fn = optim.lr_schedule(cfg, 3)
    r = np.random.RandomState(0)
    params = {"conv": {"kernel": r.randn(3, 4).astype(np.float32)},
              "bn": {"scale": r.randn(4).astype(np.float32)}}
    opt_state = tx.init(params)
    ref = jax.tree_util.tree_map(np.array, params)
    buf = jax.tree_util.tree_map(np.zeros_like, params)
    p = params
    for t in range(4):
        g = jax.tree_util.tree_map(lambda x: r.randn(*x.shape).astype(np.float32), params)
        upd, opt_state = tx.update(g, opt_state, p)
        p = optax.apply_updates(p, upd)
        # reference, written the way torch does it
        norm = np.sqrt(sum(np.sum(x.astype(np.float64) ** 2) for x in jax.tree_util.tree_leaves(g)))
        scale = min(1.0, 1.0 / norm)
        lr = float(lr_fn(t))
        for k, name in (("conv", "kernel"), ("bn", "scale")):
            d_p = g[k][name] * scale + (5e-4 * ref[k][name] if name == "kernel" else 0.0)
            buf[k][name] = 0.9 * buf[k][name] + d_p
            ref[k][name] = ref[k][name] - lr * (d_p + 0.9 * buf[k][name])
    for a, b in zip(jax.tree_util.tree_leaves(p), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_weight_decay_mask_skips_bn_and_bias():
    params = {"conv": {"kernel": jnp.zeros((1, 3, 3, 4, 4))}, "bn": {"scale": jnp.zeros(4),
              "bias": jnp.zeros(4)}, "rsa": {"P1": jnp.zeros((2, 2)), "I": jnp.zeros((2, 2))},
              "fc": {"bias": jnp.zeros(3)}}
    m = optim.weight_decay_mask(params)
    assert m["conv"]["kernel"] and m["rsa"]["P1"] and m["rsa"]["I"]
    assert not (m["bn"]["scale"] or m["bn"]["bias"] or m["fc"]["bias"])


def test_label_smoothing_is_official_loss():
    """0.1·mean(-Σ log p)/K + 0.9·NLL (docs/training.md#loss) == CE against smoothed
    targets."""
    r = np.random.RandomState(1)
    logits, labels = r.randn(4, NUM_CLASSES), r.randint(0, NUM_CLASSES, 4)
    logp = jax.nn.log_softmax(logits)
    official = 0.1 * np.mean(-logp.sum(-1)) / NUM_CLASSES + 0.9 * np.mean(
        -logp[np.arange(4), labels])
    ours = optax.softmax_cross_entropy(
        logits, optax.smooth_labels(jax.nn.one_hot(labels, NUM_CLASSES), 0.1)).mean()
    np.testing.assert_allclose(ours, official, rtol=1e-6)


def test_multiview_eval_averages_views():
    mesh = parallel.create_mesh({"data": 1}, jax.devices()[:1])
    tx = optim.create_optimizer(_config(), 1)
    state, sh = step_lib.create_train_state(TinyVideoNet(), tx, jax.random.PRNGKey(0),
                                            (1, 2, 8, 8, 3), mesh)
    v = np.random.RandomState(0).randn(2, 3, 2, 8, 8, 3).astype(np.float32)
    multi = step_lib.eval_step(state, v)
    single = np.stack([step_lib.eval_step(state, v[:, i]) for i in range(3)], 1).mean(1)
    np.testing.assert_allclose(multi, single, rtol=1e-5, atol=1e-6)


def test_uint8_input_is_normalised_on_device_like_the_host_path():
    """data.uint8_output: the jitted steps normalise; logits/loss/update match the
    host-normalised float32 batch (docs/data.md#pipeline)."""
    from rsa_jax.data import transforms
    mesh = parallel.create_mesh({"data": 2}, jax.devices()[:2])
    cfg = _config(learning_rate=0.5)
    tx = optim.create_optimizer(cfg, 1)
    state, sh = step_lib.create_train_state(TinyVideoNet(), tx, jax.random.PRNGKey(0),
                                            (1, 2, 8, 8, 3), mesh)
    twin = jax.tree_util.tree_map(jnp.copy, state)     # the train step donates its state
    train, evaluate = step_lib.compile_steps(
        mesh, sh, learning_rate_fn=optim.lr_schedule(cfg, 1), label_smoothing=0.1)
    r = np.random.RandomState(4)
    pixels = r.randint(0, 256, (4, 2, 8, 8, 3)).astype(np.uint8)
    host = transforms.normalize(pixels)
    labels = r.randint(0, NUM_CLASSES, 4).astype(np.int32)
    np.testing.assert_allclose(np.asarray(step_lib.normalize_video(pixels)), host, atol=1e-6)
    def feed(v):
        return parallel.shard_batch({"video": v, "label": labels}, mesh)
    logits_u8 = np.asarray(evaluate(state, feed(pixels)["video"]))
    logits_f32 = np.asarray(evaluate(state, feed(host)["video"]))
    np.testing.assert_allclose(logits_u8, logits_f32, atol=1e-6)
    assert np.abs(logits_f32).max() > 1e-2            # not trivially zero
    s_u8, m_u8 = train(state, feed(pixels))
    s_f32, m_f32 = train(twin, feed(host))
    np.testing.assert_allclose(float(m_u8.compute()["loss"]), float(m_f32.compute()["loss"]),
                               atol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(jax.device_get((s_u8.params, s_u8.batch_stats))),
                    jax.tree_util.tree_leaves(jax.device_get((s_f32.params, s_f32.batch_stats)))):
        np.testing.assert_allclose(a, b, atol=1e-6)
