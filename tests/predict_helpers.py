"""A tiny trained-looking workdir for the predict / explain / export / analyze tests.

``make_workdir`` builds the tiny synthetic dataset, initialises a small RSA
network (configs/synthetic.py:tiny with a second RSA layer, in stage 2) and
saves it exactly as training does: ``config.json``, ``class_names.json`` and
an orbax step under ``checkpoints/`` with a validation metric. No training:
the tools under test only need *a* model and the files training writes.
"""

from __future__ import annotations

import os

import jax
import ml_collections

from tests import train_helpers


def tiny_config(data_dir: str) -> ml_collections.ConfigDict:
    """configs/synthetic.py:tiny with a second RSA layer, ``layer2_1`` (explain's tests
    draw its kernels)."""
    c = train_helpers.tiny_config(data_dir)
    c.model.rsa_positions = ((), (1,), (), (1,))
    return c


def make_workdir(root: str, seed: int = 0) -> tuple[str, ml_collections.ConfigDict]:
    """Writes the workdir; returns (workdir, config)."""
    from rsa_jax import parallel
    from rsa_jax.data import pipeline
    from rsa_jax.labels import write_class_names
    from rsa_jax.train import train
    from rsa_jax.train.checkpoint import Checkpointer

    data_dir = os.path.join(root, "tfds")
    config = tiny_config(data_dir)
    config.seed = seed
    pipeline.prepare(config.data)
    workdir = os.path.join(root, "workdir")
    train._save_config(config, workdir)
    write_class_names(workdir, pipeline.class_names(config.data))
    mesh = parallel.create_mesh({"data": 1}, jax.devices()[:1])
    state, _, _, _ = train.setup(config, mesh, steps_per_epoch=1)
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    ckpt.save(1, state, metrics={"top1": 12.5})
    ckpt.close()
    return workdir, config


def make_converted_dir(root: str, num_classes: int = 5,
                       model_overrides: dict | None = None) -> tuple[str, dict]:
    """A directory laid out as ``python -m rsa_jax.convert`` writes it (orbax arrays,
    model_config.json, conversion.json with num_segments) for the tiny model
    (``model_overrides``: model config fields changed, e.g. ``rsa_positions``)."""
    from rsa_jax.convert import official as convert_official
    from rsa_jax.models import build_model
    cfg = tiny_config(os.path.join(root, "unused")).model.to_dict()
    cfg["num_classes"] = num_classes
    cfg.update(model_overrides or {})
    model = build_model(cfg)
    x = jax.numpy.zeros((1, 4, 28, 28, 3))
    variables = jax.jit(lambda k: model.init(k, x, train=False))(jax.random.PRNGKey(3))
    out = convert_official.save_orbax(os.path.join(root, "converted"), dict(variables), cfg,
                              {"kind": "test", "num_segments": 4}, overwrite=False)
    return out, cfg
