"""analyze: per-class accuracy, confusions, direction pairs and the confusion matrix,
on a hand-built scores file whose every count is known."""

import csv
import json

import numpy as np
import pytest

from rsa_jax import analyze
from rsa_jax.labels import write_class_names

NAMES = ["Pushing something from left to right", "Pushing something from right to left",
         "Holding something", "Moving something up"]


def _scores() -> tuple[np.ndarray, np.ndarray]:
    """10 videos per class. Class 0: 6 right, 3 -> class 1, 1 -> class 2 (but
    scored above class 1, so its direction is right); class 1: all right;
    class 2: 5 right, 5 -> class 3; class 3: all right."""
    rows, labels = [], []

    def add(label, pred, order=None):
        s = np.zeros(4)
        for rank, c in enumerate(order or [pred]):
            s[c] = 3.0 - rank
        rows.append(s)
        labels.append(label)

    for _ in range(6):
        add(0, 0)
    for _ in range(3):
        add(0, 1)
    add(0, 2, [2, 0, 1])
    for _ in range(10):
        add(1, 1)
    for i in range(10):
        add(2, 2 if i < 5 else 3)
    for _ in range(10):
        add(3, 3)
    return np.array(rows, np.float32), np.array(labels, np.int32)


def test_tables_and_direction_pairs():
    s, y = _scores()
    rows = analyze.per_class(s, y, NAMES)
    assert [(r["index"], r["top1"]) for r in rows] == [(2, 50.0), (0, 60.0), (1, 100.0),
                                                        (3, 100.0)]
    assert rows[0]["most_confused_with"] == NAMES[3] and rows[1]["most_confused_with"] == NAMES[1]
    cm = analyze.confusion_matrix(s.argmax(1), y, 4)
    assert cm.sum() == 40 and np.trace(cm) == 31
    conf = analyze.top_confusions(cm, NAMES)
    assert [(c["true"], c["predicted"], c["count"]) for c in conf] == [
        (NAMES[2], NAMES[3], 5), (NAMES[0], NAMES[1], 3), (NAMES[0], NAMES[2], 1)]
    assert conf[0]["share_of_true"] == 0.5
    assert analyze.direction_pairs(NAMES) == [(0, 1)]
    (pair,) = analyze.direction_accuracy(s, y, NAMES)
    assert pair["videos"] == 20 and pair["direction_acc"] == 85.0
    # Mistakes made on or into: class 2 (5 + 1), class 3 (5), class 0 (4), class 1 (3).
    assert list(analyze.most_confused_classes(cm, 2)) == [2, 3]


def test_cli_on_a_workdir_scores_file(tmp_path, capsys):
    s, y = _scores()
    wd = tmp_path / "wd"
    (wd / "eval").mkdir(parents=True)
    write_class_names(str(wd), NAMES)
    path = wd / "eval" / "validation_scores.npz"
    np.savez(path, scores=s, labels=y, index=np.arange(len(y)))
    assert analyze.main([str(path), "--classes", "3"]) == 0
    out = capsys.readouterr().out
    assert "40 videos: top-1 77.50 %" in out and "mean direction accuracy 85.00 %" in out
    folder = tmp_path / "wd" / "eval" / "validation_scores_analysis"
    with open(folder / "per_class.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["name"] for r in table] == [NAMES[2], NAMES[0], NAMES[1], NAMES[3]]
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["top1"] == 77.5 and summary["direction_pairs"] == 1
    import matplotlib.image as mpimg
    img = mpimg.imread(folder / "confusion_matrix.png")
    assert img.shape[0] > 300 and img[..., :3].std() > 0.05


def test_label_count_mismatch_is_one_clear_error(tmp_path, capsys):
    s, y = _scores()
    path = tmp_path / "s.npz"
    np.savez(path, scores=s, labels=y)
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\n")
    assert analyze.main([str(path), "--labels", str(labels)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "2 class names for 4 score columns" in err


def test_not_a_score_file_says_so(tmp_path, capsys):
    """A PNG (or any non-.npz file) is 'not a score file', not NumPy's allow_pickle advice."""
    png = tmp_path / "some.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(64)))
    npy = tmp_path / "array.npy"
    np.save(npy, np.zeros(3))
    for path in (png, npy):
        assert analyze.main([str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {path}: not a score file"), err
        assert "allow_pickle" not in err and "\n" not in err


def test_smoothed_loss_uses_the_runs_label_smoothing(tmp_path):
    """summary.json's loss_smoothed is the run's validation loss: cross-entropy against
    (1 - ε)·one-hot + ε/K with the run's ε (config.json), not the plain loss."""
    s, y = _scores()
    wd = tmp_path / "wd"
    (wd / "eval").mkdir(parents=True)
    eps = 0.3
    (wd / "config.json").write_text(json.dumps({"label_smoothing": eps}))
    path = wd / "eval" / "validation_scores.npz"
    np.savez(path, scores=s, labels=y)
    summary = analyze.analyze(str(path))
    z = s.astype(np.float64) - s.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    target = np.full(s.shape, eps / s.shape[1])
    target[np.arange(len(y)), y] += 1 - eps
    assert summary["loss_smoothed"] == pytest.approx(-(target * logp).sum(1).mean())
    assert summary["loss"] == pytest.approx(-logp[np.arange(len(y)), y].mean())
    assert summary["loss_smoothed"] != pytest.approx(summary["loss"])
    (wd / "config.json").unlink()   # ε unknown: no smoothed figure rather than a wrong one
    assert "loss_smoothed" not in analyze.analyze(str(path))
