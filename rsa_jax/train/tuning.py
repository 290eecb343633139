"""`conv_strategy='autotune'` for a whole run: times the model's RSA layer shapes
once on this device (`rsa_jax.layers.autotune`) and writes the choices into the
model config (docs/benchmarks.md). Lives with training because it builds the model;
the layers only decode the choices."""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from absl import logging

from rsa_jax.layers import autotune
from rsa_jax.models import build_model


def resolve_config(config: Any, workdir: str | None,
                   timer: autotune.Timer | None = None) -> Any:
    """`config` unchanged unless ``model.rsa.conv_strategy == 'autotune'``; then a copy
    with the per-shape choices encoded in it (timed on this device, cached in
    ``<workdir>/autotune.json``; process 0's choices are used by every process)."""
    rsa = config.model.get("rsa") or {}
    if rsa.get("conv_strategy") != "autotune" or config.model.get("backbone", "rsa") != "rsa":
        return config
    model = build_model(config.model)
    batch = max(1, config.global_batch_size // max(1, jax.device_count()))
    path = os.path.join(workdir, autotune.CACHE_FILE) if workdir else None
    if path and jax.process_index() != 0:
        path = None                     # one writer; the others time without the file
    table = autotune.tune(model, (batch, config.data.num_frames, config.data.image_size,
                         config.data.image_size, 3), path, timer)
    choices = {k: e["choice"] for k, e in table.items()}
    if jax.process_count() > 1:         # one program on every host: process 0's choices
        from jax.experimental import multihost_utils
        names = autotune.candidates()
        idx = multihost_utils.broadcast_one_to_all(
            np.array([names.index(choices[k]) for k in sorted(choices)], np.int32))
        choices = {k: names[int(i)] for k, i in zip(sorted(choices), idx, strict=True)}
    logging.info("%s", autotune.format_table(table))
    if jax.process_index() == 0:
        print(autotune.format_table(table), flush=True)
    out = config.copy_and_resolve_references()
    out.model.rsa.conv_strategy = autotune.encode(choices)
    return out
