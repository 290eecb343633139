"""Metric writers: clu's default writer (TensorBoard + log) plus ``metrics.jsonl``.

Only process 0 writes; the others get a logging-only writer.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

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
    return metric_writers.MultiWriter([default, JsonlWriter(os.path.join(workdir, "metrics.jsonl"))])
