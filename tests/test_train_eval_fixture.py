"""Evaluation of a model converted from the official-format fixture weights.

The fixture state dict (tests/fixtures/official_weights.py) is written as an
.npz, converted with ``rsa_jax.convert.official_to_orbax`` and loaded through
``config.init_from`` exactly as ``--mode eval`` does; the jitted eval step on a
mesh must reproduce the official logits, and the accuracy over the fixture's
two clips (labels chosen so one is a top-1 hit, one a top-5-only hit) must be
exactly 50 % top-1 and 100 % top-5.
"""

import json
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from rsa_jax import convert, parallel
from rsa_jax.train import evaluate as eval_lib, train

FIXTURES = Path(__file__).parent / "fixtures"
pytestmark = pytest.mark.slow


def test_eval_of_converted_fixture_model(tmp_path):
    sys.path.insert(0, str(FIXTURES))
    import official_weights
    z = np.load(FIXTURES / "model_tsn_r50_rsa.npz", allow_pickle=False)
    fcfg = json.loads(str(z["config"]))
    keys = json.loads((FIXTURES / "official_checkpoint_keys.json").read_text())
    sd = official_weights.make_weights([(k, s) for k, s, _ in keys], fcfg["weight_salt"])
    np.savez(tmp_path / "official.npz", **sd)
    model_cfg = convert.official_to_orbax(str(tmp_path / "official.npz"), str(tmp_path / "orbax"))

    import configs.ssv2 as ssv2
    c = ssv2.get_config(str(fcfg["num_segments"]))
    c.model.update(model_cfg)
    c.data.image_size = fcfg["input_shape"][-1]
    c.init_from = str(tmp_path / "orbax")
    mesh = parallel.create_mesh({"data": 2}, jax.devices()[:2])
    state, shardings, _, eval_fn = train.setup(c, mesh, steps_per_epoch=1)
    state = train.load_pretrained(c, state, shardings)

    x = z["input"]                                        # (N, T·3, H, W), channel t·3 + c
    n, tc, h, w = x.shape
    video = x.reshape(n, tc // 3, 3, h, w).transpose(0, 1, 3, 4, 2)
    logits = np.asarray(eval_fn(state, parallel.shard_batch({"video": video}, mesh)["video"]))
    ref = z["logits"]
    np.testing.assert_allclose(logits, ref, atol=3e-5 * np.abs(ref).max())

    order = np.argsort(-ref, axis=1)
    labels = np.array([order[0, 0], order[1, 3]])         # hit; top-5 but not top-1
    m = eval_lib.accuracy_metrics(logits, labels)
    assert m["top1"] == 50.0 and m["top5"] == 100.0 and m["num_videos"] == 2
