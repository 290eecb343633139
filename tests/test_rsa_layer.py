"""The RSA layer against the official implementation's golden vectors."""

from __future__ import annotations

import json
import os
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rsa_jax.convert import rsa_layer_params_from_torch, rsa_layer_params_to_torch
from rsa_jax.layers import RSA, conv_forms
from rsa_jax.layers.rsa import l2_normalize, resolve_dims
from tests.rsa_fixtures import FIXTURE_DIR, LAYER_FIXTURES, load_layer_fixture, rel_err

IMPLS = ("conv", "patches")
# conv_strategy 'native' (lax 3-D convs) and 'flat' (depthwise shared convolution,
# broadcast products) are the accelerator paths; check them on CPU too.
# 'taps2d' is convolutions only; 'auto' on CPU evaluates the shared H2/G convolution in
# one of three forms chosen by frame size ('taps', 'row', 'frame'): each is forced here
# on every fixture.
VARIANTS = [("conv", "taps2d"), ("conv", "auto-row"), ("conv", "auto-frame"),
            ("conv", "native"), ("conv", "flat"), ("patches", "auto")]


def _layer(impl, strategy, **cfg):
    return RSA(**cfg, implementation=impl, conv_strategy=strategy.split("-")[0],
               precision=jax.lax.Precision.HIGHEST)


def _force_frames(strategy):
    form = strategy.split("-")[1] if "-" in strategy else None
    return mock.patch.object(conv_forms, "_shared_conv_form",
                             (lambda *a: form) if form else conv_forms._shared_conv_form)


def _run(fx, impl, strategy, dtype):
    layer = _layer(impl, strategy, **fx["layer"])
    params = jax.tree.map(lambda a: jnp.asarray(a, dtype),
                          rsa_layer_params_from_torch(fx["torch_params"], fx["layer"]))
    x = jnp.asarray(fx["input"], dtype)
    with _force_frames(strategy):
        y, vjp = jax.vjp(lambda p, x: layer.apply({"params": p}, x), params, x)
        gp, gx = vjp(jnp.asarray(fx["cotangent"], dtype))
    return y, gx, rsa_layer_params_to_torch(gp)


# The native-conv path (the accelerator default) is checked on CPU on a subset.
_NATIVE = {"rsa_grid_kVplusR_fVplusR", "rsa_stride122", "rsa_grid_kV_fR",
           "rsa_explicit_nh2_dk16_dv16_dd6_kVplusR_fVplusR"}
_F32_CASES = [pytest.param(p, impl, st, id=f"{os.path.basename(p)[:-4]}-{impl}-{st}")
              for p in LAYER_FIXTURES for impl, st in VARIANTS
              if st != "native" or os.path.basename(p)[:-4] in _NATIVE]


@pytest.mark.parametrize("path,impl,strategy", _F32_CASES)
def test_matches_official_float32(path, impl, strategy):
    fx = load_layer_fixture(path)
    y, gx, gp = _run(fx, impl, strategy, jnp.float32)
    assert y.shape == fx["output"].shape
    assert y.dtype == jnp.float32
    assert rel_err(y, fx["output"]) <= 1e-5
    np.testing.assert_allclose(y, fx["output"], rtol=1e-4,
                               atol=1e-5 * np.abs(fx["output"]).max())
    assert rel_err(gx, fx["grad_input"]) <= 1e-5
    assert set(gp) == set(fx["torch_grads"])
    for name, g in gp.items():
        assert rel_err(g, fx["torch_grads"][name]) <= 1e-5, name


@pytest.mark.parametrize("impl", IMPLS)
def test_matches_official_float64(impl):
    """In float64 only the fixtures' float32 storage rounding remains (<= 1e-6)."""
    with jax.enable_x64(True):
        for path in LAYER_FIXTURES:
            fx = load_layer_fixture(path)
            y, gx, gp = _run(fx, impl, "auto", jnp.float64)
            assert y.dtype == jnp.float64
            assert rel_err(y, fx["output"]) <= 1e-6, fx["name"]
            assert rel_err(gx, fx["grad_input"]) <= 1e-6, fx["name"]
            for name, g in gp.items():
                assert rel_err(g, fx["torch_grads"][name]) <= 1e-6, (fx["name"], name)


def test_head_major_order_would_fail():
    """The grid fixtures pin the value-major channel order e·nh + h."""
    fx = load_layer_fixture(os.path.join(FIXTURE_DIR, "rsa_grid_kVplusR_fVplusR.npz"))
    y, _, _ = _run(fx, "conv", "auto", jnp.float32)
    nh, dv = fx["config"]["nh"], fx["meta"]["resolved"]["dv"]
    head_major = np.asarray(y).reshape(y.shape[:-1] + (dv, nh)).swapaxes(-1, -2)
    assert rel_err(head_major.reshape(y.shape), fx["output"]) > 1e-2


_TYPES = ("V", "R", "VplusR")


@pytest.mark.parametrize("seed", range(6))
def test_implementations_agree_on_random_configs(seed):
    rng = np.random.default_rng(seed)
    kt, ct = rng.choice(_TYPES), rng.choice(_TYPES)
    nh = int(rng.choice([1, 2, 4]))
    dv = int(rng.choice([2, 4, 6]))
    dk = dv if ct == "VplusR" else int(rng.choice([2, 3, 5]))
    dd = dk if kt == "V" else int(rng.choice([2, 3, 4]))
    ks = tuple(int(k) for k in rng.choice([1, 3, 5], size=3))
    strides = (1, 2, 2) if rng.random() < 0.3 else (1, 1, 1)
    shape = (2, int(rng.integers(2, 5)), int(rng.integers(3, 8)), int(rng.integers(3, 8)),
             int(rng.integers(3, 9)))
    cfg = dict(features=nh * dv, num_heads=nh, key_dim=dk, value_dim=dv, latent_dim=dd,
               kernel_size=ks, strides=strides, kernel_type=str(kt), context_type=str(ct))
    x = jax.random.normal(jax.random.key(seed), shape)
    params = RSA(**cfg).init(jax.random.key(seed + 100), x)["params"]
    # Random P1 / I so that every term contributes.
    params = jax.tree_util.tree_map_with_path(
        lambda p, a: a + 0.3 * jax.random.normal(jax.random.key(len(str(p))), a.shape), params)
    outs = {}
    for impl, strategy in VARIANTS:
        layer = _layer(impl, strategy, **cfg)
        with _force_frames(strategy):
            y, grads = jax.value_and_grad(
                lambda p, x, layer=layer: jnp.sum(jnp.sin(layer.apply({"params": p}, x))),
                argnums=(0, 1))(params, x)
        outs[impl, strategy] = (y, grads)
    ref_y, ref_g = outs[VARIANTS[0]]
    for key, (y, g) in outs.items():
        np.testing.assert_allclose(y, ref_y, rtol=1e-5, err_msg=str((cfg, key)))
        for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(ref_g)):
            assert rel_err(a, b) < 1e-5, (cfg, key)


def _unsupported():
    with open(os.path.join(FIXTURE_DIR, "rsa_unsupported_configs.json")) as f:
        return json.load(f)


@pytest.mark.parametrize("case", _unsupported(), ids=lambda c: c["name"])
def test_rejects_what_official_code_cannot_run(case):
    c = case["config"]
    layer = RSA(features=c["d_out"], num_heads=c["nh"], key_dim=c["dk"] or None,
                value_dim=c["dv"] or None, latent_dim=c["dd"] or None,
                kernel_size=tuple(c["kernel_size"]), kernel_type=c["kernel_type"],
                context_type=c["feat_type"])
    n, cin, t, h, w = case["input_shape"]
    with pytest.raises(ValueError, match=r"kernel_size|key_dim|value_dim"):
        layer.init(jax.random.key(0), jnp.zeros((n, t, h, w, cin)))


def test_rejects_bad_arguments():
    x = jnp.zeros((1, 2, 5, 5, 8))
    with pytest.raises(ValueError, match="kernel_type"):
        RSA(features=8, num_heads=2, kernel_type="Q").init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="implementation"):
        RSA(features=8, num_heads=2, kernel_size=(1, 3, 3),
            implementation="fft").init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"\(B, T, H, W, C\)"):
        RSA(features=8, num_heads=2).init(jax.random.key(0), x[0])


def test_official_default_dims_and_init():
    """dv = d_out // nh, dk = dv, dd = dk; P1 ~ N(0, 1/(M·dd)); I = identity; MSRA fan-out."""
    d = resolve_dims(256, 8, None, None, None, (5, 7, 7), "VplusR", "VplusR")
    assert (d.dv, d.dk, d.dd, d.d_hid) == (32, 32, 32, 8 * 32 + 32 + 32)
    x = jnp.zeros((1, 2, 4, 4, 256))
    p = RSA(features=256).init(jax.random.key(0), x)["params"]
    assert p["projection"].shape == (256, d.d_hid)
    assert p["H1"].shape == (5, 7, 7, 1, 32 * 32)
    assert p["H2"].shape == p["G"].shape == (5, 7, 7, 1, 32)
    np.testing.assert_array_equal(p["I"], np.eye(32))
    np.testing.assert_allclose(np.std(p["P1"]), (245 * 32) ** -0.5, rtol=0.1)
    np.testing.assert_allclose(np.std(p["H1"]), np.sqrt(2 / (32 * 32 * 245)), rtol=0.05)
    np.testing.assert_allclose(np.std(p["projection"]), np.sqrt(2 / d.d_hid), rtol=0.05)
    # The layer-1 RSA of the paper's network has 24,848 parameters (docs/method.md#complexity).
    p1 = RSA(features=64).init(jax.random.key(0), jnp.zeros((1, 2, 4, 4, 64)))["params"]
    assert sum(a.size for a in jax.tree.leaves(p1)) == 24_848


def test_converter_rejects_mismatched_params():
    fx = load_layer_fixture(os.path.join(FIXTURE_DIR, "rsa_grid_kVplusR_fVplusR.npz"))
    tp = dict(fx["torch_params"])
    tp.pop("I")
    with pytest.raises(ValueError, match=r"missing=\['I'\]"):
        rsa_layer_params_from_torch(tp, fx["layer"])
    tp = dict(fx["torch_params"], extra=np.zeros(3))
    with pytest.raises(ValueError, match="unexpected=\\['extra'\\]"):
        rsa_layer_params_from_torch(tp, fx["layer"])
    tp = dict(fx["torch_params"], P1=np.zeros((1, 8, 7)))
    with pytest.raises(ValueError, match="P1: got"):
        rsa_layer_params_from_torch(tp, fx["layer"])


def test_bfloat16_compute_keeps_float32_params():
    x = jax.random.normal(jax.random.key(0), (1, 2, 6, 6, 16))
    layer = RSA(features=16, num_heads=2, kernel_size=(3, 3, 3), dtype=jnp.bfloat16)
    variables = layer.init(jax.random.key(1), x)
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(variables))
    y = layer.apply(variables, x)
    assert y.dtype == jnp.bfloat16
    y32 = RSA(features=16, num_heads=2, kernel_size=(3, 3, 3)).apply(variables, x)
    assert rel_err(y.astype(jnp.float32), y32) < 5e-2


def test_wide_layer_im2col_path_matches_native_conv():
    """dk > 32 takes the im2col path for H1 on CPU; it must equal lax's grouped conv."""
    x = jax.random.normal(jax.random.key(0), (1, 3, 5, 5, 80))
    outs = []
    for strategy in ("auto", "native"):
        layer = RSA(features=80, num_heads=2, kernel_size=(3, 3, 3), conv_strategy=strategy,
                    precision=jax.lax.Precision.HIGHEST)
        params = layer.init(jax.random.key(1), x)["params"]
        assert params["H1"].shape[-1] == 40 * 40  # dk = 40 groups
        params["P1"] = params["P1"] * 10
        outs.append(jax.value_and_grad(
            lambda p, layer=layer: jnp.sum(jnp.sin(layer.apply({"params": p}, x))))(params))
    np.testing.assert_allclose(outs[0][0], outs[1][0], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(outs[0][1]), jax.tree.leaves(outs[1][1])):
        assert rel_err(a, b) < 1e-5


def test_l2_normalize_accumulates_in_float32():
    """bfloat16/float16 inputs: the sum of squares runs in float32, the result is cast back."""
    x32 = jax.random.normal(jax.random.key(0), (3, 640)) * 300.0
    ref = np.asarray(x32) / np.sqrt(np.sum(np.asarray(x32, np.float64) ** 2, -1,
                                           keepdims=True) + 1e-6)
    for dtype, tol in ((jnp.bfloat16, 1e-2), (jnp.float16, 2e-3)):
        x = x32.astype(dtype)
        y = l2_normalize(x)
        assert y.dtype == dtype
        # float16 squares of values ~300 overflow (max 65504): a float16 sum gives inf -> 0.
        assert rel_err(y.astype(jnp.float32), ref) < tol, dtype
        reduce = [e for e in jax.make_jaxpr(l2_normalize)(x).eqns
                  if e.primitive.name == "reduce_sum"]
        assert [e.invars[0].aval.dtype for e in reduce] == [jnp.float32], dtype
    np.testing.assert_array_equal(l2_normalize(x32), x32 * jax.lax.rsqrt(
        jnp.sum(x32 * x32, -1, keepdims=True) + 1e-6))  # float32: unchanged arithmetic


def test_patches_lax_patch_op_matches_official_on_the_smallest_fixture():
    """'patches' with lax.conv_general_dilated_patches windows, forward and gradients
    (that op's gradient is slow on CPU: one fixture only, the smallest)."""
    path = min(LAYER_FIXTURES, key=lambda p: load_layer_fixture(p)["input"].size)
    fx = load_layer_fixture(path)
    layer = RSA(**fx["layer"], implementation="patches", patch_op="lax",
                precision=jax.lax.Precision.HIGHEST)
    params = rsa_layer_params_from_torch(fx["torch_params"], fx["layer"])
    x = jnp.asarray(fx["input"], jnp.float32)
    y, vjp = jax.vjp(lambda p, x: layer.apply({"params": p}, x), params, x)
    gp, gx = vjp(jnp.asarray(fx["cotangent"], jnp.float32))
    assert rel_err(y, fx["output"]) <= 1e-5
    assert rel_err(gx, fx["grad_input"]) <= 1e-5
    for name, g in rsa_layer_params_to_torch(gp).items():
        assert rel_err(g, fx["torch_grads"][name]) <= 1e-5, name
    # The two window extractions agree exactly, offsets in PyTorch's (t, h, w) order.
    v = jax.random.normal(jax.random.PRNGKey(0), (1, 3, 4, 5, 2))
    np.testing.assert_array_equal(conv_forms.extract_windows(v, (3, 3, 1), "lax"),
                                  conv_forms.extract_windows(v, (3, 3, 1), "stack"))


def test_cpu_small_matmul_avoids_the_slow_batched_dot_and_equals_einsum():
    """(4, 4, 4) per-position products run as multiply + sum on CPU (no dot), and the
    layer with 4 heads of 4 channels (its three products are all (4, 4, 4), its H1
    convolution in the banded 'row' form on 12×12 frames) equals the native path."""
    a = jax.random.normal(jax.random.key(0), (5, 4, 4))
    b = jax.random.normal(jax.random.key(1), (5, 4, 4))
    prims = {e.primitive.name for e in jax.make_jaxpr(conv_forms.cpu_matmul)(a, b).eqns}
    assert "dot_general" not in prims
    big = jax.make_jaxpr(conv_forms.cpu_matmul)(jnp.ones((5, 8, 8)), jnp.ones((5, 8, 8)))
    assert "custom_vjp_call" in {e.primitive.name for e in big.eqns}  # pmm kept
    assert conv_forms.select_forms("auto", (12, 12), (3, 7, 7), 4,
                                   platform="cpu").shared_form == "row"
    # float64: the forms sum in different orders, which float32 shows at ~1e-5 in
    # the filter gradients (sums over every position); float64 leaves ~1e-14.
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(2), (2, 3, 12, 12, 16), jnp.float64)
        cfg = dict(features=16, num_heads=4, kernel_size=(3, 7, 7))
        params = RSA(**cfg).init(jax.random.key(3), x)["params"]
        params = jax.tree.map(
            lambda p: p + 0.3 * jax.random.normal(jax.random.key(4), p.shape, p.dtype), params)
        outs = []
        for strategy in ("auto", "native"):
            layer = _layer("conv", strategy, **cfg)
            y, vjp = jax.vjp(lambda p, x, layer=layer: layer.apply({"params": p}, x),
                             params, x)
            outs.append((y, vjp(jnp.cos(y))))
    assert outs[0][0].dtype == jnp.float64
    assert rel_err(outs[0][0], outs[1][0]) < 1e-12
    for g, ref in zip(jax.tree.leaves(outs[0][1]), jax.tree.leaves(outs[1][1]), strict=True):
        assert rel_err(g, ref) < 1e-12


def test_small_head_layer_gradient_at_batch_one_runs():
    """A batch of one clip with 4-channel heads (the (2, 4, 4) products `cpu_matmul`
    would sum by hand) once crashed XLA:CPU; run it in a child so a crash fails here."""
    code = ("import jax, jax.numpy as jnp\n"
            "from rsa_jax.layers import RSA\n"
            "x = jax.random.normal(jax.random.key(0), (1, 2, 8, 8, 8))\n"
            "m = RSA(features=8, num_heads=2, kernel_size=(3, 3, 3))\n"
            "p = m.init(jax.random.key(1), x)['params']\n"
            "g = jax.grad(lambda p, x: jnp.sum(m.apply({'params': p}, x) ** 2), (0, 1))\n"
            "print(float(jnp.sum(jax.jit(g)(p, x)[1] ** 2)) > 0)\n")
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=300, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert r.stdout.strip().endswith("True")
