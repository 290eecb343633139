"""conv_strategy='autotune' (rsa_jax/train/tuning.py, rsa_jax/layers/strategy.py):
per-shape choice by time, the JSON cache, and numerical identity of the autotuned
model with the default one."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rsa_jax.layers import strategy
from rsa_jax.models import build_model
from rsa_jax.train import tuning


def _config(strategy="autotune"):
    import configs.synthetic as synthetic
    c = synthetic.get_config()
    c.data.num_frames = 2
    c.data.image_size = 16
    c.model.width = 8
    c.model.rsa_positions = [[1], [], [], [1]]         # two RSA layers of different shapes
    # 8 heads: dk = features / 8 stays small, so the per-group loops compile fast.
    c.model.rsa = dict(num_heads=8, kernel_size=[3, 3, 3], kernel_type="VplusR",
                       context_type="VplusR", implementation="conv", conv_strategy=strategy)
    c.global_batch_size = jax.device_count()        # one clip per device
    return c


def _fake_timer(seconds: dict[tuple[str, str], float], calls: list):
    def timer(name, key, fn):
        calls.append((name, key))
        return seconds[(name, key)]
    return timer


def test_layer_choice_and_encoding():
    table = {"2x4x4x8->8/s1": "patches/stack", "2x1x1x64->64/s1": "conv/taps2d"}
    s = strategy.encode(table)
    assert strategy.decode(s) == table
    assert strategy.layer_choice("conv", s, "auto", "2x4x4x8->8/s1") == (
        "patches", "auto", "stack")
    assert strategy.layer_choice("conv", s, "auto", "2x1x1x64->64/s1") == (
        "conv", "taps2d", "auto")
    # Unknown shape or unresolved 'autotune': the default strategy, same numbers.
    assert strategy.layer_choice("conv", s, "auto", "other") == ("conv", "auto", "auto")
    assert strategy.layer_choice("conv", "autotune", "lax", "k") == ("conv", "auto", "lax")
    assert strategy.layer_choice("patches", "native", "lax", "k") == (
        "patches", "native", "lax")


def test_picks_the_argmin_per_shape_and_caches(tmp_path):
    model = build_model(_config().model)
    shape = (1, 2, 16, 16, 3)
    keys = sorted(tuning.rsa_layer_inputs(model, shape))
    assert keys == ["2x1x1x64->64/s1", "2x4x4x8->8/s1"]   # layer4_1 and layer1_1
    names = strategy.candidates("cpu")
    rng = np.random.default_rng(0)
    seconds = {(n, k): float(rng.uniform(1, 2)) for n in names for k in keys}
    calls: list = []
    path = str(tmp_path / "autotune.json")
    table = tuning.tune(model, shape, path, _fake_timer(seconds, calls), platform="cpu")
    assert sorted(calls) == sorted(seconds)               # every candidate × shape, once
    for k in keys:
        assert table[k]["choice"] == min(names, key=lambda n: seconds[(n, k)])
        assert not table[k]["cached"]
    # A restart reuses the file: no timing at all.
    again = tuning.tune(model, shape, path, _fake_timer({}, calls), platform="cpu")
    assert len(calls) == len(seconds)
    assert {k: e["choice"] for k, e in again.items()} == {k: e["choice"] for k, e in
                                                         table.items()}
    assert all(e["cached"] for e in again.values())
    stored = json.load(open(path))
    assert len(stored) == 2 and all(jax.devices()[0].device_kind in k for k in stored)


def test_real_timer_picks_a_real_candidate(tmp_path):
    cfg = _config()
    cfg.model.rsa_positions = [[], [], [], [1]]             # the cheap 1×1 layer only
    model = build_model(cfg.model)
    timed: list = []
    real = tuning.wall_timer(iters=1, warmup=1)

    def timer(name, key, fn):
        timed.append(name)
        return real(name, key, fn)
    table = tuning.tune(model, (1, 2, 16, 16, 3), str(tmp_path / "a.json"), timer)
    assert set(timed) == set(strategy.candidates())
    for e in table.values():
        assert e["choice"] in strategy.candidates()
        assert e["seconds"][e["choice"]] == min(e["seconds"].values()) > 0
    assert list(table) == ["2x1x1x64->64/s1"]
    assert "autotune 2x1x1x64->64/s1: " in tuning.format_table(table)


def test_autotuned_model_equals_the_default_model(tmp_path):
    # Force choices away from the default ('conv/auto') so the graphs differ.
    keys = ["2x1x1x64->64/s1", "2x4x4x8->8/s1"]
    forced = {"2x4x4x8->8/s1": "patches/stack", "2x1x1x64->64/s1": "conv/native"}
    seconds = {(n, k): (0.0 if forced[k] == n else 1.0)
               for n in strategy.candidates() for k in keys}
    tuned_cfg = tuning.resolve_config(_config(), str(tmp_path), _fake_timer(seconds, []))
    assert strategy.decode(tuned_cfg.model.rsa.conv_strategy) == forced
    assert (tmp_path / tuning.CACHE_FILE).exists()
    default, tuned = build_model(_config("auto").model), build_model(tuned_cfg.model)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 2, 16, 16, 3))
    variables = jax.jit(lambda x: default.init(jax.random.PRNGKey(1), x, train=False))(x)
    fd = jax.jit(lambda v: default.apply(v, x, train=False))
    ft = jax.jit(lambda v: tuned.apply(v, x, train=False))
    assert str(fd.trace(variables).jaxpr) != str(ft.trace(variables).jaxpr)  # applied
    np.testing.assert_allclose(ft(variables), fd(variables), rtol=1e-4, atol=1e-4)


def test_resolve_config_leaves_other_strategies_alone(tmp_path):
    c = _config("taps2d")
    assert tuning.resolve_config(c, str(tmp_path)) is c
    assert not (tmp_path / tuning.CACHE_FILE).exists()
    with pytest.raises(ValueError, match="patch_op"):
        from rsa_jax.layers.conv_forms import extract_windows
        extract_windows(jnp.zeros((1, 1, 1, 1, 1)), (1, 1, 1), "bad")
