"""ResNetTSN: architecture, parameter count, initialisation, train-mode behaviour."""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from rsa_jax.models import ResNetTSN, build_model, count_params, model_stats, survival_probs

# Two RSA blocks only: compile time grows with the number of RSA layers.
TINY = dict(depth=50, width=8, num_classes=5, dropout=0.5, stochastic_depth=0.2,
            rsa_positions=[[1], [], [], [1]], rsa=dict(num_heads=2, kernel_size=[3, 3, 3]))
X = jnp.asarray(np.random.default_rng(0).standard_normal((2, 3, 32, 32, 3)), jnp.float32)


def abstract_params(cfg, x_shape=(1, 2, 32, 32, 3)):
    model = build_model(cfg)
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(x_shape),
                                             train=False))


def test_rsa_r50_has_the_official_parameter_count():
    v = abstract_params({"num_classes": 174})
    assert count_params(v["params"]) == 22_034_302
    # docs/method.md#network: backbone 21,677,776 and new_fc 356,526.
    assert count_params(v["params"]["new_fc"]) == 356_526
    rsa = sum(count_params(v["params"][b]["conv2"]) for b in
              ("layer1_2", "layer2_1", "layer2_3", "layer3_1", "layer3_3", "layer3_5",
               "layer4_1"))
    assert rsa == 2_630_288


def test_param_tree_uses_official_names():
    p = abstract_params({"num_classes": 174})["params"]
    assert set(p["layer1_0"]) == {"conv1", "bn1", "conv2", "bn2", "conv3", "bn3",
                                  "downsample_conv", "downsample_bn"}
    assert set(p["layer2_1"]["conv2"]) == {"projection", "H1", "H2", "G", "P1", "I"}
    assert p["layer2_2"]["conv2"]["kernel"].shape == (1, 3, 3, 128, 128)
    assert p["conv1"]["kernel"].shape == (1, 7, 7, 3, 64)
    assert p["new_fc"]["kernel"].shape == (2048, 174) and p["new_fc"]["bias"].shape == (174,)
    biases = [path for path, _ in jax.tree_util.tree_flatten_with_path(p)[0]
              if path[-1].key == "bias" and path[-2].key.startswith("conv")]
    assert not biases  # only BN and new_fc have biases


@pytest.mark.parametrize("depth,backbone,expected", [
    (50, "tsn2d", 23_864_558),  # torchvision resnet50 (25,557,032) - fc + 174-way fc
    (18, "tsn2d", 11_265_774), (50, "tsn3d", None), (18, "rsa", None), (101, "rsa", None)])
def test_depths_and_baselines(depth, backbone, expected):
    p = abstract_params({"depth": depth, "backbone": backbone, "num_classes": 174})["params"]
    if expected is not None:
        assert count_params(p) == expected
    kernel = p["layer1_1"]["conv2"].get("kernel")
    if backbone == "tsn3d":
        assert kernel.shape[:3] == (3, 3, 3)
    if backbone == "rsa" and depth == 18:
        # basic blocks: RSA replaces conv2 of layer1.1? no: positions [[2]] is out of
        # range for 2 blocks and ignored; layer2.1 / layer3.1 / layer4.1 carry RSA.
        assert "kernel" in p["layer1_1"]["conv2"]
        assert "projection" in p["layer2_1"]["conv2"] and "projection" in p["layer4_1"]["conv2"]
        assert p["layer2_1"]["conv1"]["kernel"].shape == (1, 3, 3, 128, 128)


def test_block_zero_is_never_rsa():
    m = build_model(dict(TINY, rsa_positions=[[0, 1], [0], [], [0, 2]]))
    rsa = [s["name"] for s in m.block_specs() if s["rsa"]]
    assert rsa == ["layer1_1", "layer4_2"]


def test_stochastic_depth_schedule():
    probs = [s["survival"] for s in build_model({}).block_specs()]
    np.testing.assert_allclose(probs, 1.0 - 0.2 * np.arange(16) / 15, atol=1e-12)
    assert probs[0] == 1.0 and abs(probs[-1] - 0.8) < 1e-12
    assert survival_probs(1, 0.5) == [1.0]


def test_init_msra_zero_gamma_xavier_fc():
    # Width 32 keeps the compile small; the statistics are checked per tensor shape.
    m = build_model({"num_classes": 174, "width": 32, "rsa": {"kernel_size": [1, 3, 3]}})
    v = jax.jit(lambda: m.init(jax.random.PRNGKey(0), jnp.zeros((1, 1, 32, 32, 3)),
                               train=False))()
    p = v["params"]
    for name in ("layer1_0", "layer2_1", "layer4_2"):
        assert np.all(p[name]["bn3"]["scale"] == 0)  # zero-init residual
        assert np.all(p[name]["bn1"]["scale"] == 1) and np.all(p[name]["bn1"]["bias"] == 0)
    w = np.asarray(p["layer3_0"]["conv2"]["kernel"])  # (1,3,3,128,128): fan_out 128·9
    assert abs(w.std() / np.sqrt(2.0 / (128 * 9)) - 1) < 0.03
    proj = np.asarray(p["layer3_1"]["conv2"]["projection"])  # fan_out = d_hid = 160
    assert abs(proj.std() / np.sqrt(2.0 / 160) - 1) < 0.05
    np.testing.assert_array_equal(p["layer3_1"]["conv2"]["I"], np.eye(16))
    fc = np.asarray(p["new_fc"]["kernel"])  # xavier uniform, bias 0
    assert np.abs(fc).max() <= np.sqrt(6 / (1024 + 174)) and np.all(p["new_fc"]["bias"] == 0)
    assert np.all(v["batch_stats"]["bn1"]["var"] == 1)


@pytest.fixture(scope="module")
def tiny():
    cfg = ml_collections.ConfigDict(TINY)
    model = build_model(cfg)
    variables = jax.jit(lambda: model.init(jax.random.PRNGKey(0), X, train=False))()
    return model, variables


@pytest.fixture(scope="module")
def train_apply(tiny):
    model, _ = tiny
    return jax.jit(lambda v, x, k1, k2: model.apply(
        v, x, train=True, mutable=["batch_stats"], rngs={"dropout": k1, "drop_path": k2}))


def test_forward_shapes_and_features(tiny):
    model, v = tiny
    logits, feats = jax.jit(lambda v, x: model.apply(v, x, train=False,
                                                     return_features=True))(v, X)
    assert logits.shape == (2, 5) and logits.dtype == jnp.float32
    assert feats["stem"].shape == (2, 3, 8, 8, 8)
    assert feats["layer4"].shape == (2, 3, 1, 1, 256)
    assert feats["frame_logits"].shape == (2, 3, 5)
    np.testing.assert_allclose(logits, feats["frame_logits"].mean(1), rtol=1e-6)
    # Frames are independent except inside RSA: with no RSA, permuting frames
    # permutes the per-frame logits.
    m2 = build_model(dict(TINY, backbone="tsn2d"))
    v2 = jax.jit(lambda: m2.init(jax.random.PRNGKey(0), X, train=False))()
    fwd = jax.jit(lambda v, x: m2.apply(v, x, train=False, return_features=True))
    _, f = fwd(v2, X)
    _, fr = fwd(v2, X[:, ::-1])
    np.testing.assert_allclose(fr["frame_logits"], f["frame_logits"][:, ::-1], atol=1e-5)


def test_train_mode_updates_batch_stats_and_is_random(tiny, train_apply):
    model, v = tiny
    k = jax.random.PRNGKey
    out1, state = train_apply(v, X, k(1), k(2))
    out2, _ = train_apply(v, X, k(1), k(2))
    out3, _ = train_apply(v, X, k(3), k(4))
    assert out1.dtype == jnp.float32 and out1.shape == (2, 5)
    np.testing.assert_array_equal(out1, out2)  # same keys, same result
    assert not np.allclose(out1, out3)
    mean0 = v["batch_stats"]["layer1_0"]["bn1"]["mean"]
    mean1 = state["batch_stats"]["layer1_0"]["bn1"]["mean"]
    assert not np.allclose(mean0, mean1)  # momentum 0.9 running average moved
    with pytest.raises(flax.errors.InvalidRngError):  # stochastic depth needs its rng
        model.apply(v, X, train=True, mutable=["batch_stats"], rngs={"dropout": k(0)})


def test_drop_path_draws_one_bernoulli_per_clip():
    from rsa_jax.models.resnet_tsn import Block
    x = jnp.broadcast_to(X[:1, :, :8, :8, :1], (64, 3, 8, 8, 16))  # 64 identical clips
    v = Block(planes=4).init(jax.random.PRNGKey(0), x, train=False)
    v["params"]["bn3"]["scale"] = jnp.ones_like(v["params"]["bn3"]["scale"])

    def run(survival):
        return Block(planes=4, survival=survival).apply(
            v, x, train=True, mutable=["batch_stats"],
            rngs={"drop_path": jax.random.PRNGKey(3)})[0]
    y, full = np.asarray(run(0.5)), np.asarray(run(1.0))  # full = relu(branch + x)
    dropped = np.asarray(jax.nn.relu(x))
    is_drop = np.all(np.isclose(y, dropped, atol=1e-6), axis=(1, 2, 3, 4))
    kept = y[~is_drop]
    # Each clip is dropped or kept as a whole (one draw per clip, all frames).
    assert 16 <= is_drop.sum() <= 48
    np.testing.assert_allclose(kept, np.broadcast_to(kept[:1], kept.shape), atol=1e-5)
    assert not np.allclose(kept[0], full[0])  # kept branches are scaled by 1/p


def test_bfloat16_compute_keeps_float32_params_and_logits():
    m = build_model(dict(TINY, dtype="bfloat16", rsa_positions=[[1], [], [], []]))
    v = jax.jit(lambda: m.init(jax.random.PRNGKey(0), X, train=False))()
    assert all(a.dtype == jnp.float32 for a in jax.tree_util.tree_leaves(v))
    logits = jax.jit(lambda v, x: m.apply(v, x, train=False))(v, X)
    assert logits.dtype == jnp.float32 and np.all(np.isfinite(logits))


def test_config_errors():
    with pytest.raises(ValueError, match="depth"):
        build_model({"depth": 42}).block_specs()
    with pytest.raises(ValueError, match="backbone"):
        build_model({"backbone": "c3d"}).block_specs()
    with pytest.raises(ValueError, match="dtype"):
        build_model({"dtype": "int8"})
    with pytest.raises(ValueError, match=r"\(B, T, H, W, 3\)"):
        build_model(TINY).init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    assert isinstance(build_model(TINY), ResNetTSN)


def test_model_stats_tiny():
    s = model_stats(dict(TINY, backbone="tsn2d"), num_frames=2, image_size=32)
    assert s["params"] == count_params(abstract_params(dict(TINY, backbone="tsn2d"))["params"])
    assert s["flops"] > 0 and s["macs"] == s["flops"] / 2 and s["fvcore_macs"] > 0
    s4 = model_stats(dict(TINY, backbone="tsn2d"), num_frames=4, image_size=32)
    assert abs(s4["flops"] / s["flops"] - 2) < 0.01  # linear in T


def test_fvcore_style_macs_match_the_paper_log():
    # docs/method.md#complexity: 71,774,240,768 MACs at 16 × 224² (fvcore, 174 classes).
    from rsa_jax.models import jaxpr_macs
    # Convolutions only (no banded-matrix forms, whose zeros would count).
    m = build_model({"num_classes": 174, "rsa": {"conv_strategy": "taps2d"}})
    x = jax.ShapeDtypeStruct((1, 16, 224, 224, 3), jnp.float32)
    v = jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), jnp.zeros(x.shape), train=False))
    jaxpr = jax.make_jaxpr(lambda v, x: m.apply(v, x, train=False))(v, x)
    assert jaxpr_macs(jaxpr.jaxpr) == 71_774_240_768


# --- CPU-friendly forms of the stem pool and the 1×1 convolutions -----------------

def _library_max_pool(x):
    import flax.linen as nn
    return nn.max_pool(x, (1, 3, 3), (1, 2, 2), ((0, 0), (1, 1), (1, 1)))


@pytest.mark.parametrize("shape", [(1, 2, 12, 12, 3), (2, 1, 13, 11, 4)])
def test_stem_max_pool_matches_library_pool_and_its_gradient(shape):
    from rsa_jax.layers.frame_ops import max_pool_stem
    # After ReLU and rounding most windows hold ties: the gradient must go to the
    # first maximum of each window, exactly as XLA's select-and-scatter does.
    x = jnp.round(2 * jax.nn.relu(jax.random.normal(jax.random.key(0), shape))) / 2
    y, vjp = jax.vjp(max_pool_stem, x)
    y_ref, vjp_ref = jax.vjp(_library_max_pool, x)
    np.testing.assert_array_equal(y, y_ref)
    ones = jnp.ones_like(y)  # integer counts: exact, whatever the summation order
    np.testing.assert_array_equal(vjp(ones)[0], vjp_ref(ones)[0])
    ct = jax.random.normal(jax.random.key(1), y.shape)
    np.testing.assert_allclose(vjp(ct)[0], vjp_ref(ct)[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("c_in,c_out", [(16, 4), (4, 16)])
def test_channel_matmul_gradient_matches_einsum(c_in, c_out):
    from rsa_jax.layers.frame_ops import channel_matmul
    x = jax.random.normal(jax.random.key(0), (2, 3, 5, 5, c_in))
    w = jax.random.normal(jax.random.key(1), (c_in, c_out))
    ours = jax.grad(lambda x, w: jnp.sum(jnp.sin(channel_matmul(x, w))), (0, 1))(x, w)
    ref = jax.grad(lambda x, w: jnp.sum(jnp.sin(jnp.einsum("...c,cd->...d", x, w))),
                   (0, 1))(x, w)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hw,k,s", [((2, 2), 3, 1), ((3, 5), 3, 2), ((6, 6), 3, 2),
                                    ((5, 4), 7, 2), ((4, 4), 1, 1)])
def test_im2col_conv_matches_lax_conv_and_its_gradients(hw, k, s):
    from jax import lax

    from rsa_jax.layers.frame_ops import conv2d_im2col
    def ref(x, w):
        return lax.conv_general_dilated(x, w, (s, s), [(k // 2, k // 2)] * 2,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), (3,) + hw + (5,), jnp.float64)
        w = jax.random.normal(jax.random.key(1), (k, k, 5, 6), jnp.float64)
        y, y_ref = conv2d_im2col(x, w, (s, s)), ref(x, w)
        assert y.shape == y_ref.shape
        np.testing.assert_allclose(y, y_ref, rtol=0, atol=1e-12)
        loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))  # noqa: E731
        ours = jax.grad(loss(lambda x, w: conv2d_im2col(x, w, (s, s))), (0, 1))(x, w)
        theirs = jax.grad(loss(ref), (0, 1))(x, w)
        for a, b in zip(ours, theirs):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


def test_im2col_is_chosen_on_cpu_for_small_output_frames_only():
    from rsa_jax.layers.frame_ops import IM2COL_MAX_POSITIONS, use_im2col
    assert use_im2col((2, 2), (3, 3), (1, 1), platform="cpu")
    assert use_im2col((12, 12), (3, 3), (2, 2), platform="cpu")      # 6×6 out
    assert not use_im2col((12, 12), (3, 3), (1, 1), platform="cpu")  # 12×12 out
    assert not use_im2col((2, 2), (3, 3), (1, 1), platform="gpu")
    side = int(IM2COL_MAX_POSITIONS ** 0.5)
    assert use_im2col((side, side), (3, 3), (1, 1), platform="cpu")
    assert not use_im2col((side + 1, side), (3, 3), (1, 1), platform="cpu")
