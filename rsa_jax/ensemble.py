"""Ensemble per-video score files, e.g. the paper's 8+16-frame rows (rsa-method.md §5).

    python -m rsa_jax.ensemble RUN8/eval/validation_scores.npz RUN16/eval/validation_scores.npz \
        [--average softmax|logits] [--weights 1,1] [--out ensemble_scores.npz]

Files are ``eval/<split>_scores.npz`` written by ``--mode eval|test``: 'scores'
(N, C) logits, 'labels' (N,), 'index' (N,). Videos are aligned by record index.
Whether the paper averaged logits or softmax probabilities is unverified (§5);
the default averages softmax probabilities, ``--average logits`` the raw scores.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

import numpy as np


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def load_scores(path: str) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        missing = {"scores", "labels", "index"} - set(f.files)
        if missing:
            raise ValueError(f"{path}: missing arrays {sorted(missing)}; expected a file "
                             "written by `python -m rsa_jax.main --mode eval`")
        return {k: f[k] for k in f.files}


def ensemble(files: Sequence[dict[str, np.ndarray]], *, average: str = "softmax",
             weights: Sequence[float] | None = None) -> dict[str, np.ndarray]:
    """Weighted mean of the files' scores over the videos they all share.

    Raises:
      ValueError: if the files disagree on a video's label or on the class count.
    """
    if average not in ("softmax", "logits"):
        raise ValueError(f"average must be 'softmax' or 'logits', got {average!r}")
    weights = list(weights or [1.0] * len(files))
    if len(weights) != len(files):
        raise ValueError(f"{len(weights)} weights for {len(files)} score files")
    common = files[0]["index"]
    for f in files[1:]:
        common = np.intersect1d(common, f["index"])
    total, labels = 0.0, None
    for f, w in zip(files, weights):
        pos = np.searchsorted(f["index"], common) if np.all(np.diff(f["index"]) > 0) else \
            np.array([np.flatnonzero(f["index"] == i)[0] for i in common])
        s = f["scores"][pos].astype(np.float64)
        if labels is not None and (s.shape[1] != total.shape[1]
                                   or np.any(f["labels"][pos] != labels)):
            raise ValueError("score files disagree on labels or number of classes: "
                             "are they for the same dataset split?")
        labels = f["labels"][pos]
        total = total + w * (_softmax(s) if average == "softmax" else s)
    return {"scores": (total / sum(weights)).astype(np.float32), "labels": labels,
            "index": common}


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    from rsa_jax.train.evaluate import accuracy_metrics
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("files", nargs="+", help="score .npz files")
    p.add_argument("--average", default="softmax", choices=("softmax", "logits"))
    p.add_argument("--weights", default=None, help="comma-separated, one per file")
    p.add_argument("--out", default=None, help="write the ensembled scores here")
    args = p.parse_args(argv)
    files = [load_scores(f) for f in args.files]
    weights = [float(w) for w in args.weights.split(",")] if args.weights else None
    result = ensemble(files, average=args.average, weights=weights)
    report = {"ensemble": accuracy_metrics(result["scores"], result["labels"])}
    for name, f in zip(args.files, files):
        report[name] = accuracy_metrics(f["scores"].astype(np.float64), f["labels"])
    if args.out:
        np.savez(args.out, **result)
    print(json.dumps(report, indent=1))
    return report["ensemble"]


if __name__ == "__main__":
    main(sys.argv[1:])
