"""Every value of the paper configs (`configs/ssv2.py`, `configs/ssv1.py`) against the
official release (docs/training.md#recipe-audit).

Sources are KimManjin/RSA files at the commits the audit names; `v2.sh` is
`scripts/train_Something_v2.sh`, `v1.sh` `scripts/train_Something_v1.sh`, `log2` /
`log1` are `logs/RSA_R50_SSV2_16frames.log` / `logs/RSA_R50_SSV1_16frames.log`
(the configuration dump near line 450, written by an earlier `main.py`).
Where the script and the SSv1 log disagree, the config follows the logged run
behind the released checkpoint and the comment says so. A value changed in a
config must fail here, with the official line next to it.
"""

from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import diving48, finegym, ssv1, ssv2

SS_FLIP_EXEMPT = (86, 87, 93, 94, 166, 167)   # ops/transforms.py:70-71


def _configs():
    return [pytest.param(name, f, mod.get_config(str(f)), id=f"{name}:{f}")
            for name, mod in (("ssv2", ssv2), ("ssv1", ssv1)) for f in (16, 8)]


@pytest.mark.parametrize("name,frames,c", _configs())
def test_paper_config_values_are_the_official_ones(name, frames, c):
    v1 = name == "ssv1"
    # --- data
    assert c.data.name == ("something_something_v1" if v1 else "something_something_v2")
    assert c.data.num_frames == frames          # v2.sh:35 / v1.sh:35 num_segments=$2; log2:448 16
    assert c.data.image_size == 224             # ops/models.py:67 input_size = 224
    from rsa_jax.data import checks
    builder = checks.builder_classes()[c.data.name]
    stored = checks.builder_config(builder, c.data.builder_config, "")
    assert (stored.height, stored.width) == (240, 320)   # main.py:196 GroupScale((240,320))
    from rsa_jax.data import transforms  # unset: the pipeline's default scales
    scales = tuple(c.data.get("crop_scales") or transforms.SCALES)
    assert scales == (1, .875, .75, .66)        # ops/models.py:371 GroupMultiScaleCrop
    assert c.data.flip is True                  # ops/models.py:371 GroupRandomHorizontalFlip2
    assert tuple(c.data.flip_exempt_classes) == SS_FLIP_EXEMPT   # ops/transforms.py:70-78
    assert c.data.num_workers == 16             # v2.sh:39 / v1.sh:39; log2:479 workers: 16
    assert c.data.uint8_output is True          # /255 + normalise, main.py:199-200 (on device here)
    assert (c.train_split, c.eval_split) == ("train", "validation")   # v2.sh:9-10, v1.sh:9-10
    # --- model
    m = c.model
    assert (m.backbone, m.depth, m.width) == ("rsa", 50, 64)   # ops/models.py:55-58 resnet50;
    # ops/ResNet.py:339 [3, 4, 6, 3] bottlenecks, :218 BatchNorm3d(64) stem
    assert m.num_classes == 174                 # main.py:68-69 'something': 174 (SSv1 and SSv2)
    assert tuple(map(tuple, m.rsa_positions)) == ((2,), (1, 3), (1, 3, 5), (1,))   # v2.sh:21
    rsa = dict(m.rsa)
    assert list(rsa["kernel_size"]) == [5, 7, 7]  # v2.sh:22; log2:502 K: (5, 7, 7)
    assert rsa["num_heads"] == 8                # v2.sh:23; log2:502 nh: 8
    assert rsa["kernel_type"] == "VplusR"       # v2.sh:27 kernel_type="VplusR"
    assert rsa["context_type"] == "VplusR"      # v2.sh:28 feat_type="VplusR"
    assert all(rsa.get(k) is None for k in ("key_dim", "value_dim", "latent_dim"))  # v2.sh:24-26 0
    # log2:453 0.3 (v2.sh:37); log1:453 0.5, the logged run (v1.sh:37 says 0.3)
    assert m.dropout == (0.5 if v1 else 0.3)
    assert m.stochastic_depth == 0.2            # v2.sh:42 / v1.sh:42; log2:455, log1:455
    assert m.dtype == "float32"                 # main.py:247-250, no autocast anywhere
    assert m.bn_momentum == 0.9 and m.bn_eps == 1e-5   # torch BatchNorm3d defaults (momentum 0.1)
    assert m.bn_group_clips == 8                # main.py:113 DataParallel; log2:83 8 GPUs, 64 / 8
    assert m.get("precision") is None           # backend default; 'highest' = V100 fp32 (audit)
    # --- optimiser and schedule
    assert c.global_batch_size == 64            # v2.sh:33 / v1.sh:33; log2:459, log1:459
    assert c.grad_accum_steps == 1              # v2.sh:38 iter_size=1
    assert c.learning_rate == 0.02              # v2.sh:34 / v1.sh:34; log2:462, log1:462
    assert c.num_epochs == 80                   # v2.sh:40; log2:458; log1:458 80 (v1.sh:40: 50)
    assert c.num_train_steps == -1              # epochs decide
    assert c.warmup_epochs == 5                 # v2.sh:90 --warmup 5; log2:469
    assert c.warmup_factor == 1e-3              # ops/CosineAnnealingLR.py:6 warmup_factor=1./1000
    assert c.min_lr_ratio == 1e-3               # main.py:255 min_ratio=1e-3
    assert c.schedule == "epoch"                # main.py:270-274 scheduler stepped once per epoch
    assert c.momentum == 0.9                    # opts.py:41; log2:464
    assert c.nesterov is True                   # v2.sh:89 --nesterov "True"; log2:468
    assert c.weight_decay == 5e-4               # opts.py:43; log2:465
    assert c.label_smoothing == 0.1             # v2.sh:41,91 smooth_nll 0.1; log2:454
    assert c.grad_clip_norm == 100.0            # v2.sh:91 --gd 100; log2:466
    assert c.official_epoch_step is True        # main.py:270-274 optimizer.step() on zero grads
    assert c.from_scratch is False              # ops/models.py:57-58 resnet50(True, ...)
    assert not any("mixup" in k for k in c.keys())   # v2.sh:43 mixup_alpha=0.0: none here
    # --- evaluation
    assert c.eval_every_epochs == (1 if v1 else 5)   # v2.sh:93 --eval-freq 5; v1.sh:95 1; log:474
    assert c.eval_last_epochs == 10             # main.py:279 epoch >= args.epochs - 10


@pytest.mark.parametrize("name,spe,evals", [("ssv2", 2640, 24), ("ssv1", 1345, 80)])
def test_evaluations_happen_where_the_logs_have_them(name, spe, evals):
    """log2 holds 24 'Validation Results' lines (epochs 5, 10, ..., 70, 71-80), log1 80."""
    from rsa_jax.train.train import is_eval_step
    c = {"ssv2": ssv2, "ssv1": ssv1}[name].get_config("16")
    spe = 4                                     # the schedule is in epochs; any size will do
    n = c.num_epochs * spe
    done = [s // spe for s in range(1, n + 1) if is_eval_step(s, n, spe, c)]
    assert len(done) == evals
    assert all(s % spe == 0 for s in range(1, n + 1) if is_eval_step(s, n, spe, c))
    if name == "ssv2":                          # main.py:279
        assert done == list(range(5, 71, 5)) + list(range(71, 81))


@pytest.mark.parametrize("step,logged", [
    (0, 0.00402),                   # log2:952  Epoch: [0][0/2640], lr: 0.00402
    (2620, 0.00402),                # log2:1083 Epoch: [0][2620/2640]: constant within the epoch
    (4 * 2640, 0.02000),            # log2:1484 Epoch: [4][0/2640]
    (5 * 2640, 0.01999),            # log2:1660 Epoch: [5][0/2640]
    (40 * 2640 + 1320, 0.01064),    # log2:6682 Epoch: [40][1320/2640]
    (79 * 2640 + 2620, 0.00002),    # log2:12579 Epoch: [79][2620/2640]
])
def test_ssv2_schedule_gives_the_logged_lr(step, logged):
    from rsa_jax.train import optim
    lr = float(optim.lr_schedule(ssv2.get_config("16"), 2640)(step))
    assert round(lr, 5) == logged                       # the log prints %.5f


def test_ssv1_schedule_gives_the_logged_first_lr():
    from rsa_jax.train import optim
    sched = optim.lr_schedule(ssv1.get_config("16"), 1345)
    assert round(float(sched(0)), 5) == 0.00402          # log1:946 Epoch: [0][0/1345]
    assert round(float(sched(79 * 1345)), 5) == 0.00002  # cosine to 1e-3 x lr at epoch 79


def test_weight_decay_mask_matches_the_logged_parameter_groups():
    """log2:942-949: decayed groups first_conv_weight 1 + normal_weight 87 (convs, RSA
    P1/I) + lr5_weight 1 (new_fc weight) = 89 tensors; not decayed: BN scale/shift 106
    + lr10_bias 1 (new_fc bias) = 107 (ops/models.py:151-220 decay_mult)."""
    from rsa_jax.models import build_model
    from rsa_jax.train import optim
    model = build_model(ssv2.get_config("16").model)
    params = jax.eval_shape(lambda: model.init(
        {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)},
        jnp.zeros((8, 16, 224, 224, 3)), train=False))["params"]
    mask = jax.tree_util.tree_leaves(optim.weight_decay_mask(params))
    assert (sum(mask), len(mask) - sum(mask)) == (89, 107)
    # 22,034,302 parameters in all (log2:937: 22.034M)
    assert sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params)) == 22_034_302


def test_precision_is_a_documented_validated_config_value():
    """`--config.model.precision=highest` parses on the paper and demo configs (None by
    default: the backend's precision) and a misspelt value stops with one message."""
    from rsa_jax import cli, validate
    for spec in ("configs/ssv2.py", "configs/ssv1.py:8", "configs/synthetic.py"):
        cli.check_overrides(["main", f"--config={spec}", "--config.model.precision=highest"])
    c = ssv1.get_config("16")
    c.lock()                                     # as --config.model.x=y sees it
    c.model.precision = "highest"
    validate._check_model(c.model)
    c.model.precision = "hihgest"
    with pytest.raises(validate.ConfigError, match="precision='hihgest'.*did you mean 'highest'"):
        validate._check_model(c.model)
    # the names are jax.lax.Precision's (validate mirrors them without importing JAX)
    assert [str(jax.lax.Precision(p)) for p in validate.PRECISIONS] == ["DEFAULT", "HIGH",
                                                                       "HIGHEST"]


def _precisions(jaxpr, found):
    from jax.extend import core as jax_core
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in ("conv_general_dilated", "dot_general"):
            found.append(eqn.params.get("precision"))
        for sub in jax_core.jaxprs_in_params(eqn.params):
            _precisions(sub, found)
    return found


def test_precision_highest_reaches_every_convolution_and_matmul():
    """model.precision='highest' sets HIGHEST on every convolution and dot of the
    forward and backward pass, as built for a GPU (where the default is TF32); None
    leaves them at the backend default."""
    from configs import synthetic
    from rsa_jax.models import build_model
    x = jnp.zeros((2, 4, 32, 32, 3))
    for precision in (None, "highest"):
        cfg = dict(synthetic.get_config().model.to_dict(), precision=precision)
        model = build_model(cfg, platform="gpu")

        def grads(x, model=model):               # traced only: nothing is computed
            variables = model.init({"params": jax.random.PRNGKey(0)}, x, train=False)

            def loss(params):
                y, _ = model.apply({**variables, "params": params}, x, train=True,
                                   rngs={"dropout": jax.random.PRNGKey(0)},
                                   mutable=["batch_stats"])
                return y.sum()
            return jax.grad(loss)(variables["params"])

        found = _precisions(jax.make_jaxpr(grads)(x).jaxpr, [])
        assert len(found) > 100                  # convs, RSA einsums, classifier; fwd + bwd
        highest = (jax.lax.Precision.HIGHEST,) * 2
        if precision is None:
            assert highest not in found
        else:
            assert all(p == highest for p in found), sorted(set(map(str, found)))


@pytest.mark.parametrize("c", [diving48.get_config(), diving48.get_config("8"),
                               finegym.get_config(), finegym.get_config("8,gym288")],
                         ids=["diving48", "diving48:8", "gym99", "gym288"])
def test_diving48_and_finegym_flip_every_class_as_the_official_code(c, caplog):
    """ops/transforms.py:70-73: exempt ids only for 'something', every other dataset
    flips every class; names that mention left/right do not change that (and are not
    reported as a label-order problem)."""
    from rsa_jax.data import pipeline
    assert tuple(c.data.flip_exempt_classes) == () and c.data.flip is True
    names = ["forward 2.5 soms left", "back 1 som", "turn right on beam"]
    with caplog.at_level(logging.WARNING):
        assert pipeline.flip_exempt_ids(c.data, names) == frozenset()
    assert not caplog.records


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("name", ["ssv2", "ssv1", "diving48", "finegym", "finetune"])
def test_config_docstring_commands_pass_the_start_checks(name, tmp_path, monkeypatch):
    """The training commands in each config's docstring, with their paths pointing at
    files that exist, pass every check `main` makes before starting: none stops with
    FATAL for want of ImageNet weights or raw data."""
    import importlib

    from rsa_jax import validate
    from tests.doc_commands import commands_in_text, parse_main
    monkeypatch.chdir(ROOT)
    module = importlib.import_module(f"configs.{name}")
    commands = [c for c in commands_in_text(module.__doc__, name)
                if c.module == "rsa_jax.main"]
    assert commands
    weights = tmp_path / "resnet50-19c8e357.pth"
    weights.write_bytes(b"")
    (tmp_path / "dir").mkdir()
    paths = {"torchvision_init": weights, "init_from": tmp_path / "dir",
             "data.manual_dir": tmp_path / "dir"}
    for cmd in commands:
        args = [a.strip() for a in cmd.args if a.strip()]
        seen = {k for k in paths for a in args if a.startswith(f"--config.{k}=")}
        args = [next((f"--config.{k}={v}" for k, v in paths.items()
                      if a.startswith(f"--config.{k}=")), a) for a in args]
        cfg = parse_main(args + ["--workdir", str(tmp_path / "w")]).config
        validate.validate(cfg, str(tmp_path / "w"), mode="train")
        assert "data.manual_dir" in seen, cmd   # not built yet: the raw files are needed
