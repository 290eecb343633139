"""Official checkpoint -> orbax -> ResNetTSN, against the network fixture.

The fixture's 22M weights are regenerated from their documented rule
(fixtures/README.md, "Weights"): reimplemented in tests/convert_helpers.py, not
imported from the fixture generator.  A real
official-format `.pth.tar` is written with torch, converted with the CLI, and
the restored model must reproduce the official float64 oracle's logits and
per-stage features.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402

from rsa_jax.convert import load_official_checkpoint  # noqa: E402
from rsa_jax.models import build_model  # noqa: E402
from tests.convert_helpers import official_state_dict, save_official  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[1]
TOL = 3e-5  # fixtures/README.md: float32 network features and logits


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.fixture(scope="module")
def fixture():
    z = np.load(FIXTURES / "model_tsn_r50_rsa.npz", allow_pickle=False)
    return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def converted(tmp_path_factory, fixture):
    """Writes the official .pth.tar and converts it through the CLI."""
    cfg = json.loads(str(fixture["config"]))
    tmp = tmp_path_factory.mktemp("official")
    pth = save_official(tmp / "resnet_rgb_model_best.pth.tar",
                        official_state_dict(cfg["weight_salt"]))
    out = tmp / "orbax"
    labels = tmp / "labels.txt"
    labels.write_text("".join(f"action {i}\n" for i in range(174)))
    proc = subprocess.run(
        [sys.executable, "-m", "rsa_jax.convert", "official", str(pth), str(out),
         "--num_segments", str(cfg["num_segments"]), "--labels", str(labels)],
        cwd=REPO, capture_output=True, text=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 0, proc.stderr
    return pth, out


@pytest.fixture(scope="module")
def apply_fn():
    cache = {}

    def run(model, variables, x):
        if model not in cache:
            cache[model] = jax.jit(lambda v, x: model.apply(
                v, x, train=False, return_features=True, mutable=["intermediates"]))
        return cache[model](variables, x)
    return run


def clip_input(fixture) -> jnp.ndarray:
    """(N, T·3, H, W), channel t·3 + c  ->  (N, T, H, W, 3)."""
    x = fixture["input"]
    n, tc, h, w = x.shape
    return jnp.asarray(x.reshape(n, tc // 3, 3, h, w).transpose(0, 1, 3, 4, 2))


def test_cli_output_layout(converted, fixture):
    _, out = converted
    cfg = json.loads((out / "model_config.json").read_text())
    assert cfg["depth"] == 50 and cfg["num_classes"] == 174 and cfg["backbone"] == "rsa"
    assert cfg["rsa_positions"] == [[2], [1, 3], [1, 3, 5], [1]]
    assert cfg["rsa"]["num_heads"] == 8 and cfg["rsa"]["kernel_size"] == [5, 7, 7]
    assert cfg["rsa"]["kernel_type"] == "VplusR" and cfg["rsa"]["context_type"] == "VplusR"
    info = json.loads((out / "conversion.json").read_text())
    assert info["epoch"] == 80 and info["num_segments"] == 4
    # --labels: the names travel with the checkpoint (predict/analyze read them).
    names = json.loads((out / "class_names.json").read_text())
    assert len(names) == 174 and names[0] == "action 0" and names[173] == "action 173"


def test_cli_checkpoint_matches_fixture(converted, fixture, apply_fn):
    _, out = converted
    variables = ocp.StandardCheckpointer().restore(out)
    assert set(variables) == {"params", "batch_stats"}
    model = build_model(json.loads((out / "model_config.json").read_text()))
    n_params = sum(np.prod(v.shape) for v in jax.tree_util.tree_leaves(variables["params"]))
    assert n_params == 22_034_302
    (logits, feats), state = apply_fn(model, variables, clip_input(fixture))
    errs = {"logits": rel_err(logits, fixture["logits"]),
            "frame_logits": rel_err(feats["frame_logits"], fixture["frame_logits"]),
            "pooled": rel_err(feats["pooled"], fixture["pooled"])}
    for stage in ("stem", "layer1", "layer2", "layer3", "layer4"):
        f = np.asarray(feats[stage])  # (N, T, H, W, C)
        assert f.transpose(0, 4, 1, 2, 3).shape == tuple(fixture[f"feature/{stage}/shape"])
        head = fixture[f"feature/{stage}/head"]
        errs[f"{stage}/head"] = rel_err(f[..., :head.shape[1]].transpose(0, 4, 1, 2, 3), head)
        errs[f"{stage}/mean"] = rel_err(f.mean(axis=(1, 2, 3)), fixture[f"feature/{stage}/mean"])
    for name, value in jax.tree_util.tree_flatten_with_path(state["intermediates"])[0]:
        block = name[0].key  # layerS_B
        official = block.replace("_", ".") + ".conv2"
        y = np.asarray(value)
        errs[official] = rel_err(y.mean(axis=(1, 2, 3)), fixture[f"feature/{official}/mean"])
    assert sum(k.endswith(".conv2") for k in errs) == 7
    print(json.dumps(errs, indent=1))
    bad = {k: v for k, v in errs.items() if not v <= TOL}
    assert not bad, bad
    np.testing.assert_allclose(np.asarray(logits), fixture["logits"], rtol=1e-4,
                               atol=1e-5 * np.abs(fixture["logits"]).max())


def test_python_api_matches_fixture(converted, fixture, apply_fn):
    pth, _ = converted
    model, variables = load_official_checkpoint(pth, num_segments=4)
    (logits, _), _ = apply_fn(model, variables, clip_input(fixture))
    assert logits.shape == (2, 174) and logits.dtype == jnp.float32
    assert rel_err(logits, fixture["logits"]) <= TOL
    # The plain call of the interface contract gives the same logits.
    plain = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, clip_input(fixture))
    np.testing.assert_allclose(np.asarray(plain), np.asarray(logits), rtol=0, atol=1e-6)
