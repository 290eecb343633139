"""Evaluation over a split: top-1 / top-5 / mean per-class accuracy and per-video scores.

``mode='eval'`` is the official protocol (1 centre clip, 1 centre crop, §5);
``mode='test'`` uses ``data.test_num_clips`` × ``data.test_num_crops`` views per
video, whose logits are averaged. Scores are raw logits (like the official
``score_240c1.pt``), written to ``<workdir>/eval/<split>_scores.npz`` with the
labels and record indices, sorted by record index so two runs' files align.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable

import jax
import numpy as np

from rsa_jax import parallel
from rsa_jax.data import pipeline


def _gather(x: np.ndarray) -> np.ndarray:
    """Host-local numpy rows of every process, concatenated (multi-host)."""
    if jax.process_count() == 1:
        return np.asarray(x)
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def accuracy_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """top1/top5 (%, over videos), mean per-class top-1 (%, FineGym's metric), CE loss."""
    k = min(5, scores.shape[1])
    topk = np.argsort(-scores, axis=1)[:, :k]
    top1 = topk[:, 0] == labels
    per_class = [top1[labels == c].mean() for c in np.unique(labels)]
    logp = scores - scores.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    return {"top1": 100.0 * float(top1.mean()),
            "top5": 100.0 * float((topk == labels[:, None]).any(1).mean()),
            "mean_class_acc": 100.0 * float(np.mean(per_class)),
            "loss": float(-logp[np.arange(len(labels)), labels].mean()),
            "num_videos": int(len(labels))}


def evaluate(eval_fn: Callable, state: Any, data_cfg: Any, mesh, *, split: str,
             mode: str = "eval", global_batch_size: int, seed: int = 0
             ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Runs ``eval_fn(state, video)`` over every video of ``split`` once.

    Returns:
      (metrics, scores) with scores = {'scores' (N, C) float32 logits,
      'labels' (N,), 'index' (N,)} for the N real (unpadded) videos.
    """
    it = pipeline.create_iterator(data_cfg, split=split, mode=mode,
                                  global_batch_size=global_batch_size,
                                  process_index=jax.process_index(),
                                  process_count=jax.process_count(), seed=seed, num_epochs=1)
    logits, labels, index, mask = [], [], [], []
    for batch in it:
        video = parallel.shard_batch(batch, mesh, keys=("video",))["video"]
        logits.append(np.asarray(parallel.to_host(eval_fn(state, video))))
        labels.append(_gather(batch["label"]))
        index.append(_gather(batch["index"]))
        mask.append(_gather(batch["mask"]))
    keep = np.concatenate(mask) > 0
    index = np.concatenate(index)[keep]
    order = np.argsort(index, kind="stable")
    scores = {"scores": np.concatenate(logits)[keep][order].astype(np.float32),
              "labels": np.concatenate(labels)[keep][order].astype(np.int32),
              "index": index[order].astype(np.int64)}
    return accuracy_metrics(scores["scores"], scores["labels"]), scores


def scores_path(workdir: str, split: str) -> str:
    """``<workdir>/eval/<split>_scores.npz`` (split sanitised, e.g. 'validation[:10%]')."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", split).strip("_")
    return os.path.join(workdir, "eval", f"{safe}_scores.npz")


def write_scores(path: str, scores: dict[str, np.ndarray], **meta: Any) -> None:
    if jax.process_index() != 0:
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.savez(path, **scores, **{k: np.asarray(v) for k, v in meta.items()})
