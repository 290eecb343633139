"""Validation metrics of the official loop and the ensemble tool (numpy only, fast).

docs/training.md#evaluation: the official validation loss is its label-smoothed
training criterion; its "Class Accuracy" divides each class's hits by
``count + 1e-4`` over the classes of sklearn's confusion matrix (labels ∪ predictions).
"""

import numpy as np
import optax
import pytest

from rsa_jax import ensemble
from rsa_jax.train.evaluate import accuracy_metrics


def _logits_predicting(pred, num_classes=4):
    s = np.zeros((len(pred), num_classes), np.float32)
    s[np.arange(len(pred)), pred] = 5.0
    return s


def test_official_class_accuracy_denominator_counts_predicted_only_classes():
    # labels 0,0,1 predicted 0,1,2: class 0 has 1 hit of 2, class 1 none of 1, class 2
    # is only predicted, so it counts as 0 in the official mean over 3 classes.
    m = accuracy_metrics(_logits_predicting([0, 1, 2]), np.array([0, 0, 1]))
    assert m["mean_class_acc"] == pytest.approx(100 * (0.5 + 0.0) / 2)
    assert m["mean_class_acc_official"] == pytest.approx(100 * (1 / 2.0001) / 3, rel=1e-9)
    assert m["top1"] == pytest.approx(100 / 3)


def test_official_class_accuracy_equals_confusion_matrix_formula():
    r = np.random.RandomState(0)
    scores, labels = r.randn(50, 7), r.randint(0, 5, 50)   # classes 5, 6 never labels
    pred = scores.argmax(1)
    classes = np.union1d(labels, pred)
    cf = np.zeros((len(classes), len(classes)))
    np.add.at(cf, (np.searchsorted(classes, labels), np.searchsorted(classes, pred)), 1)
    official = np.mean(np.diag(cf) / (cf.sum(1) + 0.0001))
    m = accuracy_metrics(scores, labels)
    assert m["mean_class_acc_official"] == pytest.approx(100 * official, rel=1e-9)


def test_validation_losses_plain_and_label_smoothed():
    r = np.random.RandomState(1)
    scores, labels = r.randn(6, 5).astype(np.float32), r.randint(0, 5, 6)
    onehot = np.eye(5)[labels]
    m = accuracy_metrics(scores, labels, label_smoothing=0.1)
    plain = optax.softmax_cross_entropy(scores, onehot).mean()
    smooth = optax.softmax_cross_entropy(scores, optax.smooth_labels(onehot, 0.1)).mean()
    assert m["loss"] == pytest.approx(float(plain), rel=1e-5)
    assert m["loss_smoothed"] == pytest.approx(float(smooth), rel=1e-5)
    assert m["loss_smoothed"] != pytest.approx(m["loss"], rel=1e-3)


def _file(scores, labels, index):
    return {"scores": np.asarray(scores, np.float32), "labels": np.asarray(labels),
            "index": np.asarray(index)}


def test_softmax_ensemble_reports_the_true_nll(tmp_path):
    r = np.random.RandomState(2)
    a, b = r.randn(8, 5) * 3, r.randn(8, 5) * 3
    labels = r.randint(0, 5, 8)
    paths = []
    for name, s in (("a", a), ("b", b)):
        paths.append(str(tmp_path / f"{name}.npz"))
        np.savez(paths[-1], **_file(s, labels, np.arange(8)))
    out = str(tmp_path / "ens.npz")
    m = ensemble.main(paths + ["--out", out])
    probs = (np.exp(a) / np.exp(a).sum(1, keepdims=True)
             + np.exp(b) / np.exp(b).sum(1, keepdims=True)) / 2
    assert m["loss"] == pytest.approx(-np.log(probs[np.arange(8), labels]).mean(), rel=1e-5)
    saved = np.load(out)["scores"]                          # logits: softmax gives probs back
    back = np.exp(saved) / np.exp(saved).sum(1, keepdims=True)
    np.testing.assert_allclose(back, probs, rtol=1e-5)
    assert m["top1"] == pytest.approx(100 * np.mean(probs.argmax(1) == labels))


def test_ensemble_refuses_or_counts_videos_missing_from_a_file():
    r = np.random.RandomState(3)
    full = _file(r.randn(6, 3), [0, 1, 2, 0, 1, 2], np.arange(6))
    part = _file(r.randn(4, 3), [0, 1, 0, 1], [0, 1, 3, 4])
    with pytest.raises(ValueError, match=r"4 in all of them.*b.npz: 2 of 6"):
        ensemble.ensemble([part, full], names=["a.npz", "b.npz"])
    out = ensemble.ensemble([part, full], allow_missing=True, average="logits")
    np.testing.assert_array_equal(out["index"], [0, 1, 3, 4])
    np.testing.assert_array_equal(out["dropped"], [0, 2])
    np.testing.assert_allclose(out["scores"], (part["scores"] + full["scores"][[0, 1, 3, 4]]) / 2,
                               rtol=1e-6)
