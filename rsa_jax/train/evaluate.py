"""Evaluation over a split: top-1 / top-5 / mean per-class accuracy, losses and per-video scores.

``mode='eval'`` is the official protocol (1 centre clip, 1 centre crop,
docs/training.md#evaluation);
``mode='test'`` uses ``data.test_num_clips`` × ``data.test_num_crops`` views per
video, whose logits are averaged. Scores are raw logits (like the official
``score_240c1.pt``), written to ``<workdir>/eval/<split>_scores.npz`` with the
labels and record indices, sorted by record index so two runs' files align.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

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


def _log_softmax(scores: np.ndarray) -> np.ndarray:
    z = scores.astype(np.float64) - scores.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def accuracy_metrics(scores: np.ndarray, labels: np.ndarray, label_smoothing: float = 0.0
                     ) -> dict[str, float]:
    """Metrics of per-video logits against labels (docs/training.md#evaluation).

    top1/top5 (%, over videos); ``loss``: plain cross-entropy; ``loss_smoothed``:
    the official validation loss (its training criterion, CE against
    ``(1 − ε)·one-hot + ε/K``); ``mean_class_acc``: mean top-1 over the classes
    present in ``labels`` (FineGym's metric); ``mean_class_acc_official``: the
    official log's figure, ``mean(hit_c / (count_c + 1e-4))`` over the classes that
    occur as a label *or* a prediction (sklearn's confusion-matrix classes), so a
    class only ever predicted counts as 0.
    """
    k = min(5, scores.shape[1])
    topk = np.argsort(-scores, axis=1)[:, :k]
    pred = topk[:, 0]
    top1 = pred == labels
    per_class = [top1[labels == c].mean() for c in np.unique(labels)]
    classes = np.union1d(labels, pred)
    hits = np.array([np.sum(top1 & (labels == c)) for c in classes], np.float64)
    counts = np.array([np.sum(labels == c) for c in classes], np.float64)
    logp = _log_softmax(scores)
    nll = -logp[np.arange(len(labels)), labels]
    smoothed = (1.0 - label_smoothing) * nll + label_smoothing * -logp.mean(1)
    return {"top1": 100.0 * float(top1.mean()),
            "top5": 100.0 * float((topk == labels[:, None]).any(1).mean()),
            "mean_class_acc": 100.0 * float(np.mean(per_class)),
            "mean_class_acc_official": 100.0 * float(np.mean(hits / (counts + 1e-4))),
            "loss": float(nll.mean()),
            "loss_smoothed": float(smoothed.mean()),
            "num_videos": int(len(labels))}


def evaluate(eval_fn: Callable, state: Any, data_cfg: Any, mesh, *, split: str,
             mode: str = "eval", global_batch_size: int, seed: int = 0,
             label_smoothing: float = 0.0
             ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Runs ``eval_fn(state, video)`` over every video of ``split`` once.

    ``label_smoothing`` is the ε of the reported ``loss_smoothed`` (the run's own).

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
    return accuracy_metrics(scores["scores"], scores["labels"], label_smoothing), scores


def scores_path(workdir: str, split: str) -> str:
    """``<workdir>/eval/<split>_scores.npz`` (split sanitised, e.g. 'validation[:10%]')."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", split).strip("_")
    return os.path.join(workdir, "eval", f"{safe}_scores.npz")


def write_scores(path: str, scores: dict[str, np.ndarray], **meta: Any) -> None:
    if jax.process_index() != 0:
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.savez(path, **scores, **{k: np.asarray(v) for k, v in meta.items()})
