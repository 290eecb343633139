"""Metric writers: clu's default writer (TensorBoard + log) plus ``metrics.jsonl``;
flattened hparams; console filters for library noise.

Only process 0 writes; the others get a logging-only writer.
"""

from __future__ import annotations

import json
import logging as std_logging
import os
from collections.abc import Mapping
from typing import Any

from clu import metric_writers
from clu.metric_writers import interface

from rsa_jax import parallel


class JsonlWriter(interface.MetricWriter):
    """Appends one JSON object per ``write_scalars`` call: {"step": s, name: value, ...}."""

    def __init__(self, path: str):
        self._path = path

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        row = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
        with open(self._path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def write_summaries(self, step, values, metadata=None):
        pass

    def write_images(self, step, images):
        pass

    def write_videos(self, step, videos):
        pass

    def write_audios(self, step, audios, *, sample_rate):
        pass

    def write_texts(self, step, texts):
        pass

    def write_histograms(self, step, arrays, num_buckets=None):
        pass

    def write_hparams(self, hparams):
        pass

    def flush(self):
        pass

    def close(self):
        pass


def create_writer(workdir: str) -> metric_writers.MetricWriter:
    """TensorBoard event files + logging + ``<workdir>/metrics.jsonl`` (process 0)."""
    main = parallel.is_main_process()
    default = metric_writers.create_default_writer(workdir, just_logging=not main)
    if not main:
        return default
    os.makedirs(workdir, exist_ok=True)
    jsonl = JsonlWriter(os.path.join(workdir, "metrics.jsonl"))
    return metric_writers.MultiWriter([default, jsonl])


def flat_hparams(config: Any) -> dict[str, Any]:
    """The whole config as TensorBoard hparams: nested fields become
    ``model.depth``, ``data.num_frames``, ...; lists and None become strings."""
    def walk(tree: Mapping[str, Any], prefix: str) -> dict[str, Any]:
        out = {}
        for k, v in tree.items():
            if isinstance(v, Mapping):
                out.update(walk(v, f"{prefix}{k}."))
            elif isinstance(v, (bool, int, float, str)):
                out[f"{prefix}{k}"] = v
            else:
                out[f"{prefix}{k}"] = json.dumps(v, default=str)
        return out
    return walk(config.to_dict(), "")


# Messages that say nothing about the run: JAX probing for a TPU on a GPU/CPU
# machine, orbax noting that an eval-time (read-only) manager will not save.
NOISE = ("Unable to initialize backend", "is read only")


class DropNoise(std_logging.Filter):
    """Drops the records of ``NOISE`` (oneDNN's notice is C++: TF_CPP_MIN_LOG_LEVEL)."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            return True
        return not any(n in message for n in NOISE)


def quiet_console() -> None:
    """Installs ``DropNoise`` on absl's handler and on the loggers that emit it."""
    from absl import logging as absl_logging
    noise = DropNoise()
    absl_logging.get_absl_handler().addFilter(noise)
    for name in ("jax._src.xla_bridge", "absl"):
        std_logging.getLogger(name).addFilter(noise)
