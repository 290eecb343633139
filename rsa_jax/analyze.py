"""Analyse an evaluation's scores file.

    python -m rsa_jax.analyze SCORES.npz [--labels FILE] [--out DIR] [--classes N]

Reads ``<workdir>/eval/*_scores.npz`` (or ``rsa_jax.ensemble --out`` output:
``scores`` (N, C) logits or probabilities, ``labels`` (N,)) and writes to
``--out`` (default ``<SCORES>_analysis/``):

- ``per_class.csv``: accuracy per class, worst first (top-1, top-5, videos,
  the class it is most often mistaken for);
- ``confusions.csv``: the most frequent (true → predicted) mistakes;
- ``confusion_matrix.png``: row-normalised; with more than ``--classes``
  classes (default 30), only the most confused ones;
- ``direction_pairs.csv``: for classes that differ only by left ↔ right
  (Something-Something's direction pairs), how often the model picks the right
  one of the two;
- ``summary.json``; a short text summary is printed.

Class names: ``--labels``, else ``class_names.json`` of the workdir the
scores file sits in, else numbered.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
from collections.abc import Sequence

import numpy as np

from rsa_jax.train.evaluate import accuracy_metrics

_SIDE = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def confusion_matrix(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[true, predicted]."""
    m = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(m, (labels, pred), 1)
    return m


def per_class(scores: np.ndarray, labels: np.ndarray, names: Sequence[str]) -> list[dict]:
    """One row per class present in ``labels``, worst top-1 first."""
    k = min(5, scores.shape[1])
    topk = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    cm = confusion_matrix(topk[:, 0], labels, scores.shape[1])
    rows = []
    for c in np.unique(labels):
        sel = labels == c
        off = cm[c].copy()
        off[c] = 0
        rows.append({"index": int(c), "name": names[c], "videos": int(sel.sum()),
                     "top1": 100.0 * float((topk[sel, 0] == c).mean()),
                     "top5": 100.0 * float((topk[sel] == c).any(1).mean()),
                     "most_confused_with": names[int(off.argmax())] if off.any() else ""})
    return sorted(rows, key=lambda r: (r["top1"], r["index"]))


def top_confusions(cm: np.ndarray, names: Sequence[str], n: int = 20) -> list[dict]:
    """The n largest off-diagonal counts, with their share of the true class."""
    off = cm.copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(-off, axis=None, kind="stable")[:n]
    out = []
    for t, p in zip(*np.unravel_index(flat, off.shape)):
        if off[t, p] == 0:
            break
        out.append({"true": names[t], "predicted": names[p], "count": int(off[t, p]),
                    "share_of_true": float(off[t, p] / cm[t].sum())})
    return out


def direction_pairs(names: Sequence[str]) -> list[tuple[int, int]]:
    """(i, j) pairs of classes whose names differ only by swapping left and right."""
    index = {n.lower(): i for i, n in enumerate(names)}
    pairs = []
    for i, n in enumerate(names):
        if not _SIDE.search(n):
            continue
        swapped = _SIDE.sub(lambda m: {"left": "right", "right": "left"}[m.group(1).lower()],
                            n.lower())
        j = index.get(swapped)
        if j is not None and j > i:
            pairs.append((i, j))
    return pairs


def direction_accuracy(scores: np.ndarray, labels: np.ndarray, names: Sequence[str]
                       ) -> list[dict]:
    """Per left/right pair: share of its videos whose higher score of the two is right."""
    out = []
    for i, j in direction_pairs(names):
        sel = (labels == i) | (labels == j)
        if not sel.any():
            continue
        pick = np.where(scores[sel, i] >= scores[sel, j], i, j)
        out.append({"class_a": names[i], "class_b": names[j], "videos": int(sel.sum()),
                    "direction_acc": 100.0 * float((pick == labels[sel]).mean())})
    return out


def most_confused_classes(cm: np.ndarray, n: int) -> np.ndarray:
    """The n classes with the most mistakes made on them or into them, by index."""
    off = cm.copy()
    np.fill_diagonal(off, 0)
    return np.sort(np.argsort(-(off.sum(0) + off.sum(1)), kind="stable")[:n])


def plot_confusion(cm: np.ndarray, names: Sequence[str], path: str, max_classes: int = 30,
                   title: str = "") -> str:
    """Row-normalised confusion matrix PNG (the most confused classes if many)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    keep = np.arange(len(cm)) if len(cm) <= max_classes else most_confused_classes(
        cm, max_classes)
    rows = cm[keep].astype(np.float64)
    norm = rows / np.maximum(rows.sum(1, keepdims=True), 1)
    sub = norm[:, keep]
    n = len(keep)
    size = max(5.0, 0.32 * n + 3)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(sub, cmap="Blues", vmin=0, vmax=1)
    labels = [names[i][:38] for i in keep]
    ax.set_xticks(range(n), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    if n <= 12:
        for r in range(n):
            for c in range(n):
                if sub[r, c] >= 0.005:
                    ax.text(c, r, f"{sub[r, c]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if sub[r, c] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true class")
    what = "" if n == len(cm) else f" ({n} most confused of {len(cm)} classes)"
    ax.set_title((title or "confusion matrix, row-normalised") + what, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _write_csv(path: str, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        if not rows:
            return
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _names(scores_path: str, labels: str | None, num_classes: int) -> list[str]:
    from rsa_jax.labels import CLASS_NAMES_FILE, read_labels
    if labels:
        names = read_labels(labels)
    else:
        workdir = os.path.dirname(os.path.dirname(os.path.abspath(scores_path)))
        path = os.path.join(workdir, CLASS_NAMES_FILE)
        names = read_labels(path) if os.path.isfile(path) else [
            f"class_{i}" for i in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"{labels or 'class_names.json'}: {len(names)} class names for "
                         f"{num_classes} score columns")
    return names


def _read_scores(path: str) -> tuple[np.ndarray, np.ndarray, float | None]:
    """(scores, labels, label smoothing ε of the run or None) of a scores file.

    ε (for ``loss_smoothed``, the run's validation loss) is the file's
    ``label_smoothing`` entry if it has one, else that of the run's
    ``config.json`` when the file sits in ``<workdir>/eval/``.

    Raises:
      ValueError: not an .npz scores file (one line, not NumPy's pickle advice).
    """
    what = ("not a score file: expected an .npz with 'scores' and 'labels' arrays "
            "(<workdir>/eval/*_scores.npz or rsa_jax.ensemble --out)")
    try:
        f = np.load(path, allow_pickle=False)
    except ValueError:   # not .npy / .npz: NumPy suggests allow_pickle
        raise ValueError(f"{path}: {what}") from None
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise ValueError(f"{path}: {what}")
    with f:
        if not {"scores", "labels"} <= set(f.files):
            raise ValueError(f"{path}: {what}; it has {f.files}")
        scores, y = f["scores"].astype(np.float64), f["labels"].astype(np.int64)
        smoothing = float(f["label_smoothing"]) if "label_smoothing" in f.files else None
    if smoothing is None:
        config = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(path))),
                              "config.json")
        try:
            with open(config) as c:
                smoothing = json.load(c).get("label_smoothing")
        except (OSError, ValueError):
            smoothing = None
    return scores, y, None if smoothing is None else float(smoothing)


def analyze(scores_path: str, labels: str | None = None, out: str | None = None,
            max_classes: int = 30) -> dict:
    """Writes the analysis files (see module doc); returns the summary dict."""
    scores, y, smoothing = _read_scores(scores_path)
    names = _names(scores_path, labels, scores.shape[1])
    out = out or os.path.splitext(scores_path)[0] + "_analysis"
    os.makedirs(out, exist_ok=True)
    cm = confusion_matrix(scores.argmax(1), y, scores.shape[1])
    classes = per_class(scores, y, names)
    conf = top_confusions(cm, names)
    pairs = direction_accuracy(scores, y, names)
    _write_csv(os.path.join(out, "per_class.csv"), classes)
    _write_csv(os.path.join(out, "confusions.csv"), conf)
    _write_csv(os.path.join(out, "direction_pairs.csv"), pairs)
    png = plot_confusion(cm, names, os.path.join(out, "confusion_matrix.png"), max_classes,
                         os.path.basename(scores_path))
    metrics = accuracy_metrics(scores, y, smoothing or 0.0)
    if smoothing is None:   # the run's ε is unknown: no smoothed loss rather than a wrong one
        metrics.pop("loss_smoothed")
    else:
        metrics["label_smoothing"] = smoothing
    summary = {"scores": os.path.abspath(scores_path), "out": os.path.abspath(out),
               **metrics, "worst_classes": classes[:5],
               "top_confusions": conf[:5], "confusion_matrix": png}
    if pairs:
        summary["direction_acc_mean"] = float(np.mean([p["direction_acc"] for p in pairs]))
        summary["direction_pairs"] = len(pairs)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def _print_summary(s: dict) -> None:
    print(f"{s['num_videos']} videos: top-1 {s['top1']:.2f} %  top-5 {s['top5']:.2f} %  "
          f"mean class {s['mean_class_acc']:.2f} %")
    print("worst classes: " + "; ".join(f"{c['name']} {c['top1']:.1f} %"
                                        for c in s["worst_classes"]))
    for c in s["top_confusions"]:
        print(f"  {c['count']:5d} × {c['true']} -> {c['predicted']} "
              f"({100 * c['share_of_true']:.1f} % of the class)")
    if "direction_pairs" in s:
        print(f"left/right pairs: {s['direction_pairs']}, mean direction accuracy "
              f"{s['direction_acc_mean']:.2f} %")
    print(f"files in {s['out']}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rsa_jax.analyze",
                                description="Per-class accuracy, confusions and direction "
                                "pairs of an evaluation scores file.")
    p.add_argument("scores", help="<workdir>/eval/*_scores.npz or rsa_jax.ensemble output")
    p.add_argument("--labels", default=None, help="class names: JSON list or one per line")
    p.add_argument("--out", default=None, help="output folder (default: <SCORES>_analysis)")
    p.add_argument("--classes", type=int, default=30,
                   help="at most this many classes in the confusion-matrix picture")
    args = p.parse_args(argv)
    try:
        summary = analyze(args.scores, args.labels, args.out, args.classes)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    _print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
