"""torchvision ImageNet ResNet state dict -> inflated backbone (docs/method.md#imagenet-init)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402

from rsa_jax.convert import (  # noqa: E402
    CheckpointError,
    backbone_to_torchvision,
    merge_pretrained,
    torchvision_to_backbone,
)
from rsa_jax.models import build_model  # noqa: E402
from tests.convert_helpers import torchvision_state_dict  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RSA_BLOCKS = ("layer1_2", "layer2_1", "layer2_3", "layer3_1", "layer3_3", "layer3_5",
              "layer4_1")


def fresh(cfg):
    model = build_model(cfg)
    abstract = jax.eval_shape(lambda: model.init(
        jax.random.PRNGKey(0), jnp.zeros((1, 1, 32, 32, 3)), train=False))
    return jax.tree_util.tree_map(lambda a: jnp.full(a.shape, -7.0, a.dtype), abstract)


@pytest.fixture(scope="module")
def tv_file(tmp_path_factory):
    sd = torchvision_state_dict()
    path = tmp_path_factory.mktemp("tv") / "resnet50.pth"
    torch.save(sd, path)
    return path, {k: v.numpy() for k, v in sd.items()}


def test_rsa_backbone_round_trip(tv_file):
    path, sd = tv_file
    cfg = {"depth": 50, "backbone": "rsa", "num_classes": 174}
    pre = torchvision_to_backbone(path, cfg)
    assert not set(RSA_BLOCKS) & set(pre["params"])  # whole RSA bottlenecks skipped
    assert "new_fc" not in pre["params"]
    merged = merge_pretrained(fresh(cfg), pre)
    # Inflation: (O, I, kh, kw) -> (1, kh, kw, I, O).
    np.testing.assert_array_equal(merged["params"]["layer1_0"]["conv2"]["kernel"][0],
                                  sd["layer1.0.conv2.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(merged["batch_stats"]["layer2_0"]["downsample_bn"]["var"],
                                  sd["layer2.0.downsample.1.running_var"])
    for blk in RSA_BLOCKS:  # fresh init kept (here: the sentinel -7)
        assert all(np.all(np.asarray(a) == -7.0) for a in
                   jax.tree_util.tree_leaves(merged["params"][blk]))
    back = backbone_to_torchvision(merged, cfg)
    rsa_keys = {b.replace("_", ".") for b in RSA_BLOCKS}
    expected = {k: v for k, v in sd.items() if not k.startswith("fc.")
                and not k.endswith("num_batches_tracked")
                and ".".join(k.split(".")[:2]) not in rsa_keys}
    assert set(back) == set(expected)
    for k, v in expected.items():
        np.testing.assert_array_equal(back[k], v, err_msg=k)


def test_tsn2d_full_round_trip_and_tsn3d_inflation(tv_file):
    path, sd = tv_file
    back = backbone_to_torchvision(
        merge_pretrained(fresh({"backbone": "tsn2d"}),
                         torchvision_to_backbone(path, {"backbone": "tsn2d"})),
        {"backbone": "tsn2d"})
    assert set(back) == {k for k in sd if not k.startswith("fc.")
                         and not k.endswith("num_batches_tracked")}
    pre3 = torchvision_to_backbone(path, {"backbone": "tsn3d"})
    k3 = np.asarray(pre3["params"]["layer3_2"]["conv2"]["kernel"])  # (3,3,3,I,O)
    assert k3.shape[0] == 3
    np.testing.assert_allclose(k3.sum(0), sd["layer3.2.conv2.weight"].transpose(2, 3, 1, 0),
                               rtol=1e-6)


def test_strict_errors(tv_file, tmp_path):
    _, sd = tv_file
    bad = dict(sd)
    del bad["layer4.2.bn3.weight"]
    bad["layer5.0.conv1.weight"] = np.zeros((3, 3, 1, 1), np.float32)
    bad["conv1.weight"] = np.zeros((64, 3, 5, 5), np.float32)
    with pytest.raises(CheckpointError) as err:
        torchvision_to_backbone(bad, {"depth": 50})
    msg = str(err.value)
    assert "missing: layer4.2.bn3.weight" in msg and "unexpected: layer5.0.conv1.weight" in msg
    assert "conv1.weight: (64, 3, 5, 5) (expected (64, 3, 7, 7))" in msg
    with pytest.raises(CheckpointError, match="missing"):  # a ResNet-50 file for depth 101
        torchvision_to_backbone(sd, {"depth": 101})
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(CheckpointError, match="not a readable"):
        torchvision_to_backbone(junk, {"depth": 50})


def test_cli_torchvision(tv_file, tmp_path):
    path, sd = tv_file
    out = tmp_path / "tv_orbax"
    proc = subprocess.run([sys.executable, "-m", "rsa_jax.convert", "torchvision", str(path),
                           str(out)], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    restored = ocp.StandardCheckpointer().restore(out)
    np.testing.assert_array_equal(restored["params"]["conv1"]["kernel"][0],
                                  sd["conv1.weight"].transpose(2, 3, 1, 0))
    assert json.loads((out / "model_config.json").read_text())["backbone"] == "rsa"
    assert "layer1_2" not in restored["params"]


def test_weights_of_blocks_rsa_replaces_are_not_required(tv_file):
    """Those blocks keep their fresh init, so a file without (some of) their weights
    converts to the same backbone; for a model without RSA there the key is required."""
    _, sd = tv_file
    cfg = {"depth": 50, "backbone": "rsa", "num_classes": 174}
    block = next(s["name"] for s in build_model(cfg).block_specs() if s["rsa"])
    prefix = block.replace("_", ".") + "."
    dropped = [k for k in sd if k.startswith(prefix)]
    partial = {k: v for k, v in sd.items() if k not in dropped[:2]}
    full = torchvision_to_backbone(sd, cfg)
    got = torchvision_to_backbone(partial, cfg)
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(full)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(full)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(CheckpointError, match=f"missing: {dropped[0]}"):
        torchvision_to_backbone(partial, dict(cfg, backbone="tsn2d"))


def test_cli_refuses_unknown_model_config_fields(tv_file, tmp_path, capsys):
    """A typo in --model_config must not be saved and ignored (main refuses them too)."""
    from rsa_jax.convert.__main__ import main
    path, _ = tv_file
    out = tmp_path / "typo"
    assert main(["torchvision", str(path), str(out), "--model_config", '{"widht": 64}']) == 2
    err = capsys.readouterr().err
    assert "unknown model config field 'widht'; did you mean 'width'?" in err, err
    assert not out.exists()
