"""Converter strictness and file handling, on a tiny official-layout model.

The one-line error messages of damaged files are pinned in test_convert_messages.py.

The state dicts here (tests/convert_helpers.py) come from a width-16 RSA-R50 (the
official key layout at a fraction of the size), saved with torch exactly as the
official `main.py` does.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax.numpy as jnp  # noqa: E402

from rsa_jax.convert import (  # noqa: E402
    CheckpointError,
    infer_model_config,
    load_official_checkpoint,
    merge_pretrained,
    state_dict_to_variables,
    variables_to_state_dict,
)
from rsa_jax.convert.keys import flatten  # noqa: E402
from rsa_jax.models import build_model  # noqa: E402
from tests.convert_helpers import TINY, official_dict, random_variables, save  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    model, variables = random_variables(TINY)
    return model, variables, official_dict(model, variables)


def assert_trees_equal(a, b):
    fa, fb = flatten(a), flatten(b)
    assert set(fa) == set(fb)
    for k in fa:
        np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=str(k))


def test_round_trip_and_inference(tiny, tmp_path):
    model, variables, sd = tiny
    cfg = infer_model_config({k: v.numpy() for k, v in sd.items()})
    assert (cfg["depth"], cfg["width"], cfg["num_classes"]) == (50, 16, 7)
    assert cfg["rsa_positions"] == [[1], [1, 3], [2], [1]]
    assert cfg["rsa"]["num_heads"] == 4 and cfg["rsa"]["kernel_size"] == [3, 5, 5]
    assert cfg["rsa"]["key_dim"] is None  # default sizes recognised
    m2, v2 = load_official_checkpoint(save(tmp_path / "c.pth.tar", sd), num_segments=2)
    assert m2.block_specs() == model.block_specs()
    assert_trees_equal(v2, variables)


@pytest.mark.parametrize("kt,ct", [("R", "R"), ("V", "V"), ("VplusR", "V")])
def test_inference_of_rsa_types(kt, ct):
    cfg = dict(TINY, rsa=dict(num_heads=2, kernel_size=[1, 3, 3], kernel_type=kt,
                              context_type=ct))
    model, variables = random_variables(cfg)
    sd = variables_to_state_dict(variables, model)
    got = infer_model_config(sd)["rsa"]
    assert (got["kernel_type"], got["context_type"], got["num_heads"]) == (kt, ct, 2)
    assert_trees_equal(state_dict_to_variables(sd, build_model(infer_model_config(sd))),
                       variables)


def test_legacy_module_names(tiny):
    model, variables, sd = tiny
    legacy = OrderedDict()
    for k, v in sd.items():
        for new, old in (("H1.", "E_conv."), ("H2.", "E_feat."), ("G.", "E_feat_2.")):
            k = k.replace(f".conv2.{new}", f".conv2.{old}")
        legacy[k] = v
    assert any("E_feat_2" in k for k in legacy)
    assert_trees_equal(state_dict_to_variables(legacy, model), variables)


def _fc1_classifier(sd):
    """The same model as the official TSN builds it with dropout 0: the Conv1d
    classifier sits in place of the dropout, as `base_model.fc1`."""
    return OrderedDict((k.replace("module.new_fc.", "module.base_model.fc1."), v)
                       for k, v in sd.items())


def test_dropout0_fc1_classifier(tiny, tmp_path):
    model, variables, sd = tiny
    fc1 = _fc1_classifier(sd)
    assert "module.base_model.fc1.weight" in fc1 and "module.new_fc.weight" not in fc1
    m2, v2 = load_official_checkpoint(save(tmp_path / "fc1.pth.tar", fc1))
    assert_trees_equal(v2, variables)
    assert m2.dropout == 0.0  # fc1 is the classifier only when dropout == 0
    assert infer_model_config({k: v.numpy() for k, v in sd.items()})["dropout"] == 0.3
    both = OrderedDict(sd, **{"module.base_model.fc1.bias": sd["module.new_fc.bias"]})
    with pytest.raises(CheckpointError, match=r"base_model\.fc1\.bias.*collides"):
        state_dict_to_variables(both, model)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_official_checkpoint(tmp_path / "nope.pth.tar")


def test_npz_state_dict_without_torch(tiny, tmp_path):
    model, variables, sd = tiny
    np.savez(tmp_path / "sd.npz", **{k: v.numpy() for k, v in sd.items()})
    _, v2 = load_official_checkpoint(tmp_path / "sd.npz")
    assert_trees_equal(v2, variables)


def test_merge_pretrained_rejects_mismatch(tiny):
    model, variables, _ = tiny
    fresh = {"params": {"a": jnp.zeros(3), "b": {"c": jnp.ones((2, 2))}}}
    merged = merge_pretrained(fresh, {"params": {"b": {"c": np.full((2, 2), 5.0)}}})
    np.testing.assert_array_equal(merged["params"]["b"]["c"], 5.0)
    np.testing.assert_array_equal(merged["params"]["a"], 0.0)
    with pytest.raises(CheckpointError, match="mis-shaped"):
        merge_pretrained(fresh, {"params": {"a": np.zeros(4)}})
    with pytest.raises(CheckpointError, match="unknown"):
        merge_pretrained(fresh, {"params": {"z": np.zeros(4)}})
