"""Ensemble per-video score files, e.g. the paper's 8+16-frame rows (docs/training.md#evaluation).

    python -m rsa_jax.ensemble RUN8/eval/validation_scores.npz RUN16/eval/validation_scores.npz \
        [--average softmax|logits] [--weights 1,1] [--allow_missing] [--out ensemble_scores.npz]

Files are ``eval/<split>_scores.npz`` written by ``--mode eval|test``: 'scores'
(N, C) logits, 'labels' (N,), 'index' (N,). Videos are aligned by record index;
files that do not hold the same videos are refused unless ``--allow_missing``,
which keeps the shared videos and reports how many each file lost.

Whether the paper averaged logits or softmax probabilities is unverified
(docs/training.md#evaluation); the default averages softmax probabilities,
``--average logits`` the raw scores. The output's 'scores' are logits either
way: after softmax averaging they are the log of the averaged probabilities (a
softmax gives those probabilities back, so the reported loss is the ensemble's NLL).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import numpy as np


def _log_softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def load_scores(path: str) -> dict[str, np.ndarray]:
    """Arrays of a score file; ValueError naming the file if one is missing."""
    with np.load(path) as f:
        missing = {"scores", "labels", "index"} - set(f.files)
        if missing:
            raise ValueError(f"{path}: missing arrays {sorted(missing)}; expected a file "
                             "written by `python -m rsa_jax.main --mode eval`")
        return {k: f[k] for k in f.files}


def _positions(index: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    if np.all(np.diff(index) > 0):
        return np.searchsorted(index, wanted)
    return np.array([np.flatnonzero(index == i)[0] for i in wanted], np.int64)


def ensemble(files: Sequence[dict[str, np.ndarray]], *, average: str = "softmax",
             weights: Sequence[float] | None = None, allow_missing: bool = False,
             names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Weighted mean of the files' scores over the videos they all hold.

    Returns:
      {'scores' (N, C) float32 logits (log of the mean probabilities for
      ``average='softmax'``), 'labels', 'index', 'dropped' (per file, how many
      of its videos are missing from some other file)}.
    Raises:
      ValueError: if the files hold different videos (unless ``allow_missing``),
        or disagree on a video's label or on the class count.
    """
    if average not in ("softmax", "logits"):
        raise ValueError(f"average must be 'softmax' or 'logits', got {average!r}")
    weights = list(weights or [1.0] * len(files))
    if len(weights) != len(files):
        raise ValueError(f"{len(weights)} weights for {len(files)} score files")
    names = list(names or [f"file {i}" for i in range(len(files))])
    common = files[0]["index"]
    for f in files[1:]:
        common = np.intersect1d(common, f["index"])
    dropped = np.array([len(f["index"]) - len(common) for f in files], np.int64)
    if dropped.any() and not allow_missing:
        detail = ", ".join(f"{n}: {d} of {len(f['index'])}"
                           for n, d, f in zip(names, dropped, files) if d)
        raise ValueError(f"score files hold different videos ({len(common)} in all of them; "
                         f"not shared: {detail}); pass --allow_missing to ensemble the "
                         "shared ones")
    total, labels = 0.0, None
    for f, w in zip(files, weights):
        pos = _positions(f["index"], common)
        s = f["scores"][pos].astype(np.float64)
        if labels is not None and (s.shape[1] != total.shape[1]
                                   or np.any(f["labels"][pos] != labels)):
            raise ValueError("score files disagree on labels or number of classes: "
                             "are they for the same dataset split?")
        labels = f["labels"][pos]
        total = total + w * (np.exp(_log_softmax(s)) if average == "softmax" else s)
    mean = total / sum(weights)
    if average == "softmax":   # log p: logits whose softmax is the averaged distribution
        mean = np.log(np.maximum(mean, np.finfo(np.float64).tiny))
    return {"scores": mean.astype(np.float32), "labels": labels, "index": common,
            "dropped": dropped}


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """CLI: prints (and returns) the ensemble's metrics, with each file's own."""
    from rsa_jax.train.evaluate import accuracy_metrics
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("files", nargs="+", help="score .npz files")
    p.add_argument("--average", default="softmax", choices=("softmax", "logits"))
    p.add_argument("--weights", default=None, help="comma-separated, one per file")
    p.add_argument("--allow_missing", action="store_true",
                   help="ensemble only the videos every file holds (counts are reported)")
    p.add_argument("--out", default=None, help="write the ensembled scores here")
    args = p.parse_args(argv)
    files = [load_scores(f) for f in args.files]
    weights = [float(w) for w in args.weights.split(",")] if args.weights else None
    result = ensemble(files, average=args.average, weights=weights,
                      allow_missing=args.allow_missing, names=args.files)
    report = {"ensemble": accuracy_metrics(result["scores"], result["labels"])}
    for name, f, dropped in zip(args.files, files, result["dropped"]):
        report[name] = accuracy_metrics(f["scores"].astype(np.float64), f["labels"]) | {
            "dropped_videos": int(dropped)}
    if args.out:
        np.savez(args.out, **result)
    print(json.dumps(report, indent=1))
    return report["ensemble"]


if __name__ == "__main__":
    main(sys.argv[1:])
