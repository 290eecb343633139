"""Runs an artefact of ``python -m rsa_jax.export`` without the model code.

Needs only JAX and NumPy: the network is the serialized StableHLO
(``jax.export``), the weights are ``weights.npz``. Example::

    from rsa_jax import serving
    model = serving.load("export_dir")               # normalised float32 input
    logits = model(video)                            # (B, T, S, S, 3) -> (B, C)
    raw = serving.load("export_dir", variant="uint8")  # raw RGB pixels in
    print(model.class_names[logits[0].argmax()])

The input is the centre crop the evaluation pipeline makes (``serving.json``
gives T and S); see docs/using.md#export.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

VARIANTS = ("float32", "uint8")
META_FILE = "serving.json"
WEIGHTS_FILE = "weights.npz"


def artefact_name(variant: str) -> str:
    """File name of one StableHLO variant."""
    return f"model_{variant}.jax_exported"


class ServedModel:
    """A deserialized ``jax.export.Exported`` bound to its weights."""

    def __init__(self, exported: Any, weights: list, meta: dict, variant: str):
        self.exported = exported
        self.weights = weights
        self.meta = meta
        self.variant = variant
        self.class_names: list[str] = meta["class_names"]

    @property
    def input_shape(self) -> tuple:
        """(batch or None for any, T, S, S, 3)."""
        return tuple(self.meta["input_shape"])

    def __call__(self, video: Any) -> np.ndarray:
        """(B, T, S, S, 3) frames (float32 normalised or uint8) -> (B, C) float32 logits."""
        video = np.asarray(video, dtype=self.variant)
        want = self.input_shape
        if video.ndim != 5 or any(w is not None and w != v for w, v in zip(want, video.shape)):
            raise ValueError(f"input shape {video.shape} does not fit the exported {want} "
                             "(None = any batch)")
        return np.asarray(self.exported.call(self.weights, video))


def load(directory: str, variant: str = "float32") -> ServedModel:
    """Loads one variant of an export directory.

    Raises:
      FileNotFoundError: a file of the export is missing (names it).
      ValueError: unknown variant.
    """
    from jax import export
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    paths = {k: os.path.join(directory, f) for k, f in (
        ("meta", META_FILE), ("weights", WEIGHTS_FILE), ("hlo", artefact_name(variant)))}
    for p in paths.values():
        if not os.path.isfile(p):
            raise FileNotFoundError(f"{p}: missing; is {directory} a rsa_jax.export directory?")
    with open(paths["meta"]) as f:
        meta = json.load(f)
    with open(paths["hlo"], "rb") as f:
        exported = export.deserialize(bytearray(f.read()))
    with np.load(paths["weights"]) as z:
        weights = [z[f"w{i}"] for i in range(len(z.files))]
    return ServedModel(exported, weights, meta, variant)
