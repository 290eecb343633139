"""Compiling for TPU chips from a CPU host (rsa_jax/aot.py, rsa_jax/train/compiled.py):
the platform a program is built for picks its forms, libtpu's compile-only client
compiles a layer and the train step, and every failure is one clear error."""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend import core as jax_core
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from rsa_jax import aot, chips
from rsa_jax.layers import RSA
from rsa_jax.models import build_model
from rsa_jax.train import compiled

aot.set_compile_only_env()
needs_libtpu = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                  reason="libtpu (requirements-dev.txt) is not installed")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_MODEL = dict(depth=18, width=4, num_classes=3, rsa_positions=[[1], [], [], [1]],
                  rsa=dict(num_heads=2, kernel_size=[3, 3, 3]), stochastic_depth=0.0)


def _tiny_config():
    """The project's one tiny run (configs/synthetic.py:tiny)."""
    import configs.synthetic as synthetic
    return synthetic.get_config("tiny")


def _convs(jaxpr, out=None):
    """(lhs rank, feature groups) of every convolution, sub-jaxprs included."""
    out = [] if out is None else out
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            out.append((eqn.invars[0].aval.ndim, eqn.params["feature_group_count"]))
        for sub in jax_core.jaxprs_in_params(eqn.params):
            _convs(sub, out)
    return out


@functools.cache
def _model_convs(platform: str):
    model = build_model(dict(TINY_MODEL, platform=platform))
    x = jnp.zeros((2, 2, 16, 16, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))

    def loss(v, x):
        return model.apply(v, x).sum()
    return _convs(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(variables, x).jaxpr), model


def test_platform_picks_the_forms_on_a_cpu_host():
    """platform='tpu' traces the accelerator forms on this CPU host: the grouped 3-D
    convolution of every RSA layer (forward and input gradient carry the groups; the
    kernel gradient carries them as batch groups), and every (1,k,k) convolution as a
    convolution (forward and both gradients); platform='cpu' traces the CPU forms."""
    tpu, model = _model_convs("tpu")
    cpu, _ = _model_convs("cpu")
    n_rsa = sum(s["rsa"] for s in model.block_specs())
    n_frame_convs = 1 + sum(2 - s["rsa"] for s in model.block_specs())  # stem + 3×3s
    assert sum(1 for r, g in tpu if r == 5 and g > 1) == 2 * n_rsa
    assert sum(1 for r, _ in tpu if r == 4) == 3 * n_frame_convs
    assert not any(r == 5 for r, _ in cpu)      # CPU: temporal taps, no 3-D convolutions
    assert sum(1 for r, _ in cpu if r == 4) < 3 * n_frame_convs       # some as im2col


def _v5e_devices(n: int):
    return aot.topology_devices("v5e:2x2")[:n]


@needs_libtpu
def test_compiles_one_rsa_layer_for_a_v5e_chip():
    layer = RSA(features=16, num_heads=2, kernel_size=(3, 3, 3), platform="tpu",
                dtype=jnp.bfloat16)
    x = jax.ShapeDtypeStruct((2, 4, 16, 16, 16), jnp.float32)
    params = jax.eval_shape(layer.init, jax.random.PRNGKey(0), x)
    mesh = Mesh(np.array(_v5e_devices(1)), ("data",))
    rep = NamedSharding(mesh, P())

    def fwd_bwd(p, x):
        return jax.grad(lambda p, x: layer.apply(p, x).astype(jnp.float32).sum(),
                        argnums=(0, 1))(p, x)
    c = jax.jit(fwd_bwd, in_shardings=(rep, rep)).lower(params, x).compile()
    mem, cost = c.memory_analysis(), c.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    leaves = jax.tree_util.tree_leaves(params) + [x]
    in_bytes = sum(math.prod(a.shape) * a.dtype.itemsize for a in leaves)
    assert mem.argument_size_in_bytes >= in_bytes          # TPU tiles pad, never shrink
    assert mem.output_size_in_bytes >= in_bytes            # gradients of the same shapes
    # The forward's multiply-adds (fvcore's rules on the same layer) are a floor of what
    # forward + backward executes; the backward costs about twice the forward.
    from rsa_jax.models import jaxpr_macs
    macs = jaxpr_macs(jax.make_jaxpr(lambda p, x: layer.apply(p, x))(params, x).jaxpr)
    assert 2 * 2 * macs <= cost["flops"] <= 10 * 2 * macs
    assert cost["bytes accessed"] >= in_bytes


@pytest.fixture(scope="module")
def tiny_step():
    return aot.run(_tiny_config(), "v5e:2x2", per_chip_batch=1)


@needs_libtpu
def test_tiny_train_step_for_a_v5e_slice(tiny_step):
    s = tiny_step
    c = _tiny_config()
    model = build_model(c.model)
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                               jnp.zeros((1, 2, 16, 16, 3))))["params"]
    param_bytes = sum(math.prod(a.shape) * 4 for a in jax.tree_util.tree_leaves(params))
    chip = chips.by_name("v5e")
    assert (s["chips"], s["per_chip_batch"], s["global_batch"]) == (4, 1, 4)
    # The state (params + SGD momentum, replicated) is an argument, donated: aliased.
    assert s["hbm"]["arguments"] >= 2 * param_bytes
    assert s["hbm"]["aliased"] >= 2 * param_bytes
    assert 0 < s["hbm"]["total"] <= s["hbm"]["capacity"] == chip.hbm_bytes
    # Data parallel over 4 chips: the float32 gradients are all-reduced.
    assert s["collectives"]["all-reduce"]["bytes"] >= param_bytes
    assert s["roofline_s"] == max(s["flops"] / chip.peak_flops("float32"),
                                  s["hbm_bytes"] / (1e9 * chip.hbm_gbps))
    assert s["clips_per_s_slice"] == pytest.approx(4 * s["clips_per_s_chip"])


@needs_libtpu
def test_a_pod_slice_of_many_hosts_compiles():
    devices = aot.topology_devices("v5p:4x4x4")
    assert len({d.process_index for d in devices}) == 16
    s = aot.run(_tiny_config(), "v5p:4x4x4", per_chip_batch=1, devices=devices)
    assert (s["chips"], s["global_batch"], s["chip"]) == (64, 64, "v5p")
    assert s["collectives"]["all-reduce"]["count"] > 0


@needs_libtpu
def test_failures_are_one_clear_error(monkeypatch):
    with pytest.raises(aot.AotError, match=r"unknown TPU topology 'v9x:2x2'.*v5e:2x2"):
        aot.topology_devices("v9x:2x2")
    with pytest.raises(aot.AotError, match=r"unknown TPU topology 'v5e:3x3'.*libtpu:"):
        aot.topology_devices("v5e:3x3")
    c = _tiny_config()
    c.model.bn_group_clips = 4
    with pytest.raises(aot.AotError, match="use a multiple of 4"):
        aot.run(c, "v5e:1x1", per_chip_batch=3)
    with pytest.raises(aot.AotError, match="does not divide over the 4 chips"):
        aot.run(dict_config(global_batch_size=6), "v5e:2x2")
    with pytest.raises(aot.AotError, match=r"per-chip batch 1000000 does not fit: the compiler "
                                           r"needs [\d.]+ GiB per chip, [\d.]+ GiB available"):
        aot.run(_tiny_config(), "v5e:1x1", per_chip_batch=1_000_000)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "libtpu" else real(name, *a))
    with pytest.raises(aot.AotError, match=r"libtpu is not installed.*pip install 'libtpu=="):
        aot.topology_devices("v5e:2x2")


def dict_config(**overrides):
    c = _tiny_config()
    c.update(overrides)
    return c


def test_unoptimised_flops_are_the_lowered_programs_cost():
    """The FLOPs used where a compiler has no cost analysis (deviceless CUDA) equal
    jax's own cost analysis of the lowered program (pins the private call)."""
    lowered = jax.jit(lambda a, b: jnp.tanh(a @ b)).lower(
        jax.ShapeDtypeStruct((64, 32), jnp.float32), jax.ShapeDtypeStruct((32, 16), jnp.float32))
    flops = compiled.unoptimised_flops(lowered)
    assert flops == lowered.cost_analysis()["flops"] >= 2 * 64 * 32 * 16


def test_gpu_requests_are_checked():
    with pytest.raises(aot.AotError, match=r"unknown GPU 'h900'; known: h100"):
        aot.gpu_devices("h900", "1x1x8")
    with pytest.raises(aot.AotError, match=r"<partitions>x<hosts>x<GPUs per host>"):
        aot.gpu_devices("h100", "v5e:2x2")
    if not aot.has_module("jax_plugins.xla_cuda12"):
        with pytest.raises(aot.AotError, match=r"pip install --no-deps jax-cuda12-plugin=="):
            aot.gpu_devices("h100", "1x1x8")


def test_parse_oom_reads_the_compilers_sizes():
    msg = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
           "temporaries (159.64G) exceeds available HBM (15.75G).")
    assert compiled.parse_oom(msg) == (159.64 * 2 ** 30, 15.75 * 2 ** 30)
    assert compiled.parse_oom("RESOURCE_EXHAUSTED: Used 17.5G of 15.7G hbm.") == (
        17.5 * 2 ** 30, 15.7 * 2 ** 30)
    assert compiled.parse_oom("RESOURCE_EXHAUSTED: out of memory") == (None, None)
    assert compiled.parse_oom("INVALID_ARGUMENT: bad shape") is None


def _report(b: int, total: int) -> compiled.StepReport:
    return compiled.StepReport(b, 1, 0.0, total, 0, 0, 0, 0, 1.0, 1.0, {})


def _fake_compiler(limit_of, calls):
    """compile_at(config, b): fits while 100 + 10·b <= the remat setting's limit."""
    def compile_at(config, b):
        calls.append((str(config.model.remat), b))
        need = 100 + 10 * b
        if need > limit_of[str(config.model.remat)]:
            raise compiled.DoesNotFit(b, need, limit_of[str(config.model.remat)], "fake")
        return _report(b, need)
    return compile_at


@pytest.mark.parametrize("step,capacity,expected", [(1, 1000, 90), (4, 1000, 88),
                                                    (1, 150, 5), (1, 110, 1), (1, 100, 0),
                                                    (2, 100_000, 4096)])
def test_largest_batch_searches_with_few_compiles(step, capacity, expected):
    calls = []
    fake = _fake_compiler({"none": capacity}, calls)
    cfg = _tiny_config()
    best, tried = compiled.largest_batch(lambda b: fake(cfg, b), step, capacity)
    assert best == expected
    assert len(calls) == len({b for _, b in calls}) <= 2 + 2 + 2 * math.ceil(math.log2(4096))
    assert all(b % step == 0 for _, b in calls)
    assert all(isinstance(tried[b], compiled.StepReport) == (100 + 10 * b <= capacity)
               for b in tried)


def test_a_step_that_does_not_fit_says_what_would():
    """The train loop's answer to an out-of-memory compile (rsa_jax.main prints it as one
    FATAL line): batch, bytes needed, capacity, largest batch that fits, remat setting."""
    calls = []
    fake = _fake_compiler({"none": 1000, "rsa": 1500, "block": 2500}, calls)
    c = _tiny_config()
    c.global_batch_size = 800          # 4 chips × 200 clips
    err = compiled.explain_oom(c, 200, 2100 * 2 ** 30, 16 * 2 ** 30, "TPU v5 lite",
                               lambda cfg, b: fake(cfg, b))
    msg = str(err)
    assert msg.startswith("per-chip batch 200 does not fit: the train step needs 2100.00 GiB")
    assert "the v5e chip has 16.00 GiB" in msg
    assert "the largest per-chip batch that fits is 90" in msg   # limit 1000 for 'none'
    assert "--config.model.remat=block fits batch 200" in msg     # 'rsa' needs 2100 > 1500
    assert ("rsa", 200) in calls and ("block", 200) in calls
    assert "\n" not in msg


@needs_libtpu
def test_the_train_loops_compile_explains_running_out_of_memory():
    """`compile_or_explain`, as `train_and_evaluate` calls it on a real TPU host: a
    compile over the slice's devices that runs out of HBM becomes `DoesNotFit` (main's
    one FATAL line) with the compiler's sizes; the fit search is faked (cheap)."""
    c = _tiny_config()
    c.global_batch_size = 4 * 1_000_000
    train_fn, state, batch, mesh = compiled.step_program(c, _v5e_devices(4), 1_000_000)
    calls = []
    fake = _fake_compiler({"none": 1000, "rsa": 1000, "block": 1000}, calls)
    with pytest.raises(compiled.DoesNotFit) as err:
        compiled.compile_or_explain(train_fn, state, batch, c, mesh, compile_at=fake)
    msg = str(err.value)
    needed, available = err.value.needed, err.value.available
    assert needed > available > 15 * 2 ** 30            # the compiler's own figures
    assert msg.startswith(f"per-chip batch 1000000 does not fit: the train step needs "
                          f"{needed / 2 ** 30:.2f} GiB")
    assert f"the v5e chip has {available / 2 ** 30:.2f} GiB" in msg
    assert "the largest per-chip batch that fits is 90" in msg and "remat=" not in msg


@needs_libtpu
def test_cli_prints_one_json_line_and_fatal_lines():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    base = [sys.executable, "-m", "rsa_jax.aot", "--config", "configs/synthetic.py:tiny"]
    out = subprocess.run(base + ["--topology", "v5e:2x2", "--json"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    import json
    s = json.loads(out.stdout.strip().splitlines()[-1])
    assert (s["chips"], s["per_chip_batch"], s["chip"]) == (4, 2, "v5e")   # global batch 8
    bad = subprocess.run(base + ["--topology", "v5e:3x3"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines()[-1].startswith("FATAL: unknown TPU topology")
