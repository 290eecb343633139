"""model.remat: 'rsa' / 'block' rematerialisation changes memory, never the numbers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rsa_jax.models import build_model

# Depth 18 (basic blocks) with one RSA layer in stage 1 and one in stage 4: the
# smallest model whose blocks, RSA layers, BN statistics, dropout and drop-path
# all sit inside rematerialised regions.
TINY = dict(depth=18, width=4, num_classes=5, dropout=0.5, stochastic_depth=0.5,
            rsa_positions=[[1], [], [], [1]], rsa=dict(num_heads=2, kernel_size=[3, 3, 3]))
X = jnp.asarray(np.random.default_rng(0).standard_normal((2, 2, 16, 16, 3)), jnp.float32)
LABELS = jnp.array([1, 3])
# Compile time dominates this test; LLVM optimisation changes no value we compare.
FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _loss_fn(model):
    def loss(params, batch_stats, x, rng):
        k1, k2 = jax.random.split(rng)
        logits, upd = model.apply({"params": params, "batch_stats": batch_stats}, x,
                                  train=True, mutable=["batch_stats"],
                                  rngs={"dropout": k1, "drop_path": k2})
        ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), LABELS[:, None], 1).mean()
        return ce, upd["batch_stats"]
    return jax.value_and_grad(loss, has_aux=True)


@pytest.fixture(scope="module")
def results():
    out = {}
    ref = build_model(TINY)
    v = jax.jit(lambda: ref.init(jax.random.PRNGKey(0), X, train=False)).lower().compile(FAST)()
    args = (v["params"], v["batch_stats"], X, jax.random.PRNGKey(7))
    for remat in ("none", "rsa", "block"):
        model = build_model(dict(TINY, remat=remat))
        # Initialised under remat: same tree, shapes and (same key) values as 'none'.
        own = jax.eval_shape(lambda m=model: m.init(jax.random.PRNGKey(0), X, train=False))
        jaxpr = str(jax.make_jaxpr(_loss_fn(model))(*args))
        (loss, stats), grads = jax.jit(_loss_fn(model)).lower(*args).compile(FAST)(*args)
        out[remat] = dict(tree=own, loss=loss, stats=stats, grads=grads,
                          remats=jaxpr.count("remat") + jaxpr.count("checkpoint["))
    return out


def _assert_trees_close(a, b, **tol):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol)


@pytest.mark.parametrize("remat", ["rsa", "block"])
def test_remat_keeps_params_loss_grads_and_batch_stats(results, remat):
    ref, r = results["none"], results[remat]
    # Same variable tree (names, shapes): checkpoints move between settings.
    assert jax.tree_util.tree_structure(r["tree"]) == jax.tree_util.tree_structure(ref["tree"])
    assert jax.tree_util.tree_leaves(r["tree"]) == jax.tree_util.tree_leaves(ref["tree"])
    np.testing.assert_allclose(r["loss"], ref["loss"], rtol=1e-6)
    _assert_trees_close(ref["grads"], r["grads"], rtol=1e-5, atol=1e-7)
    _assert_trees_close(ref["stats"], r["stats"], rtol=1e-6, atol=1e-7)


def test_remat_regions_are_traced(results):
    # 'none' has no remat region; 'rsa' at least one per RSA layer (2); 'block' one per
    # block (8).  The memory it saves at full size: benchmarks/RESULTS.md.
    assert results["none"]["remats"] == 0
    assert results["rsa"]["remats"] >= 2
    assert results["block"]["remats"] >= 8


def test_unknown_remat_setting_is_a_clear_error():
    model = build_model(dict(TINY, remat="all"))
    with pytest.raises(ValueError, match="model.remat must be one of"):
        jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), X, train=False))
