"""Recipe items of the train loop that need no dataset: per-group batch norm
(docs/training.md#recipe-audit), the official per-epoch extra optimiser step
and the refused float16 (docs/training.md#optimiser)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from rsa_jax import parallel
from rsa_jax.models import build_model
from rsa_jax.models.resnet_tsn import GroupBatchNorm


def _bn_variables(c, seed):
    r = np.random.RandomState(seed)
    return {"params": {"scale": jnp.asarray(r.rand(c) + 0.5, jnp.float32),
                       "bias": jnp.asarray(r.randn(c), jnp.float32)},
            "batch_stats": {"mean": jnp.asarray(r.randn(c), jnp.float32),
                            "var": jnp.asarray(r.rand(c) + 0.5, jnp.float32)}}


def test_group_batch_norm_equals_batchnorm_per_slice_and_keeps_first_group_stats():
    x = np.random.RandomState(0).randn(8, 2, 3, 3, 5).astype(np.float32) * 3 + 1
    v = _bn_variables(5, 1)
    ref = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)
    group = GroupBatchNorm(4, momentum=0.9, epsilon=1e-5)
    y, upd = group.apply(v, x, mutable=["batch_stats"])
    slices = [ref.apply(v, x[i:i + 4], mutable=["batch_stats"]) for i in (0, 4)]
    np.testing.assert_allclose(y, np.concatenate([s[0] for s in slices]), atol=1e-5)
    # running statistics: the first group's update only (DataParallel keeps replica 0's)
    for k in ("mean", "var"):
        np.testing.assert_allclose(upd["batch_stats"][k], slices[0][1]["batch_stats"][k],
                                   rtol=1e-6)
        assert not np.allclose(upd["batch_stats"][k], slices[1][1]["batch_stats"][k])
    whole = ref.apply(v, x, mutable=["batch_stats"])[0]
    assert np.abs(np.asarray(y) - np.asarray(whole)).max() > 1e-2   # groups do matter
    np.testing.assert_allclose(GroupBatchNorm(4, use_running_average=True).apply(v, x),
                               nn.BatchNorm(use_running_average=True).apply(v, x), atol=1e-6)
    # independent of the device layout: the batch sharded one clip per device
    mesh = parallel.create_mesh({"data": 8}, jax.devices()[:8])
    xs = jax.device_put(x, NamedSharding(mesh, P("data")))
    ys = jax.jit(lambda a: group.apply(v, a, mutable=["batch_stats"])[0])(xs)
    np.testing.assert_allclose(ys, y, atol=1e-6)
    with pytest.raises(ValueError, match="bn_group_clips=3 does not divide the batch of 8"):
        GroupBatchNorm(3).apply(v, x, mutable=["batch_stats"])


def test_every_batch_norm_of_the_model_uses_the_groups():
    """Wiring only (traced, not compiled): with ``bn_group_clips`` each of the model's
    batch-norm layers is a GroupBatchNorm, under the same variable names."""
    cfg = dict(depth=18, width=4, num_classes=3, backbone="rsa", dropout=0.0,
               rsa_positions=[[], [], [], [1]],
               rsa=dict(num_heads=2, kernel_size=[3, 3, 3], implementation="conv"))
    x = jax.ShapeDtypeStruct((4, 2, 16, 16, 3), jnp.float32)
    calls = []

    def count(next_fun, args, kwargs, context):
        if context.method_name == "__call__":
            calls.append(type(context.module).__name__)
        return next_fun(*args, **kwargs)

    shapes = {}
    for g in (0, 2):
        model = build_model(dict(cfg, bn_group_clips=g))
        calls.clear()
        with nn.intercept_methods(count):
            shapes[g] = jax.eval_shape(
                lambda a, m=model: m.init({"params": jax.random.PRNGKey(0),
                                           "dropout": jax.random.PRNGKey(1)}, a, train=True), x)
        num_bn = len(jax.tree_util.tree_leaves(shapes[g]["batch_stats"])) // 2
        # the stem, 2 per block, 3 shortcuts
        assert calls.count("GroupBatchNorm" if g else "BatchNorm") == num_bn == 1 + 8 * 2 + 3
        assert "BatchNorm" not in calls if g else "GroupBatchNorm" not in calls
    assert jax.tree_util.tree_structure(shapes[0]) == jax.tree_util.tree_structure(shapes[2])


def test_official_epoch_step_matches_torch_sgd_sequence():
    """Two epochs of 2 steps; before epoch 1 the official loop calls ``step()`` on
    zeroed gradients at the base lr (×2 for the classifier bias), then resumes the
    schedule. The optax chain + `official_epoch_step` must track torch.optim.SGD."""
    import ml_collections
    import optax
    import torch

    from rsa_jax.train import optim
    cfg = ml_collections.ConfigDict(dict(
        learning_rate=0.3, num_epochs=4, warmup_epochs=1, warmup_factor=0.1, min_lr_ratio=1e-3,
        schedule="epoch", momentum=0.9, nesterov=True, weight_decay=0.05, grad_clip_norm=100.0))
    spe = 2
    tx, lr_fn = optim.create_optimizer(cfg, spe), optim.lr_schedule(cfg, spe)
    r = np.random.RandomState(5)
    params = {"conv1": {"kernel": r.randn(3, 4)}, "bn1": {"scale": r.randn(4)},
              "new_fc": {"kernel": r.randn(4, 2), "bias": r.randn(2)}}
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), params)
    grads = [jax.tree_util.tree_map(lambda a: jnp.asarray(r.randn(*a.shape), jnp.float32),
                                    params) for _ in range(2 * spe)]
    t = {k: {n: torch.tensor(np.asarray(v), requires_grad=True) for n, v in d.items()}
         for k, d in params.items()}
    groups = [{"params": [t["conv1"]["kernel"], t["new_fc"]["kernel"]], "lr_mult": 1,
               "decay_mult": 1},
              {"params": [t["bn1"]["scale"]], "lr_mult": 1, "decay_mult": 0},
              {"params": [t["new_fc"]["bias"]], "lr_mult": 2, "decay_mult": 0}]
    sgd = torch.optim.SGD(groups, lr=0.3, momentum=0.9, weight_decay=0.05, nesterov=True)
    opt_state, p = tx.init(params), params
    for i, g in enumerate(grads):
        if i % spe == 0:                          # epoch start
            for group in sgd.param_groups:        # adjust_learning_rate: base lr × mult
                group["lr"] = 0.3 * group["lr_mult"]
                group["weight_decay"] = 0.05 * group["decay_mult"]
            sgd.step()                            # epoch 0: no gradients yet, a no-op
        if i and i % spe == 0:                    # later: gradients zeroed, not None
            p, opt_state = optim.official_epoch_step(p, opt_state, learning_rate=0.3,
                                                     momentum=0.9, nesterov=True,
                                                     weight_decay=0.05)
        for group in sgd.param_groups:            # the scheduler: one lr for every group
            group["lr"] = float(lr_fn(i))
        for k, d in t.items():
            for n, v in d.items():
                v.grad = torch.tensor(np.asarray(g[k][n]))
        sgd.step()
        sgd.zero_grad(set_to_none=False)
        upd, opt_state = tx.update(g, opt_state, p)
        p = optax.apply_updates(p, upd)
    for k, d in t.items():
        for n, v in d.items():
            np.testing.assert_allclose(p[k][n], v.detach().numpy(), rtol=1e-5, atol=1e-6)
    without = params
    s = tx.init(params)
    for g in grads:
        u, s = tx.update(g, s, without)
        without = optax.apply_updates(without, u)
    assert not np.allclose(without["new_fc"]["bias"], p["new_fc"]["bias"], atol=1e-3)


def test_float16_training_is_refused_before_any_work(tmp_path):
    import ml_collections

    from rsa_jax.train import train
    cfg = ml_collections.ConfigDict({"model": {"dtype": "float16"}})
    with pytest.raises(ValueError, match="dtype=float16: training in float16 needs loss scaling"):
        train.train_and_evaluate(cfg, str(tmp_path))
    assert not list(tmp_path.iterdir())
