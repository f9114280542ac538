"""Classification scores from predicted log-probabilities: loss, top-k accuracy, the confusion
matrix, per-class precision, recall and F1, and their macro and weighted averages.

Undefined ratios follow scikit-learn: a class never predicted has no precision, a class with
no images no recall (NaN here); both count as 0 in the averages, which (as scikit-learn's
default) run over the classes that occur among the labels or the predictions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TOP_K = 5


def sample_losses(log_probs: np.ndarray, labels: np.ndarray, smoothing: float = 0.0) -> np.ndarray:
    """Each image's cross-entropy with label smoothing, as torch's cross_entropy computes it."""
    log_probs = log_probs.astype(np.float64)
    hit = log_probs[np.arange(len(labels)), labels]
    return -(1 - smoothing) * hit - smoothing * log_probs.mean(axis=1)


def top_k_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """The fraction of rows whose label is among their `k` highest scores (ties: lower index)."""
    if not len(labels):
        return 0.0
    best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float((best == labels[:, None]).any(axis=1).mean())


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts of (true class, predicted class): rows are true classes, columns predictions."""
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    return confusion


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, NaN where the denominator is 0."""
    out = np.full(numerator.shape, np.nan)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


@dataclass(frozen=True)
class ClassScores:
    """Per-class figures, indexed by label; NaN where a ratio is undefined."""

    images: np.ndarray  # how many images of the class (support)
    predicted: np.ndarray  # how many images were predicted as the class
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray

    @classmethod
    def from_confusion(cls, confusion: np.ndarray) -> ClassScores:
        hits = np.diag(confusion).astype(np.float64)
        images, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
        return cls(
            images=images,
            predicted=predicted,
            precision=_ratio(hits, predicted),
            recall=_ratio(hits, images),
            f1=_ratio(2 * hits, images + predicted),
        )

    def averages(self) -> dict[str, dict[str, float]]:
        """{"macro": ..., "weighted": ...}, each with precision, recall and f1."""
        present = (self.images + self.predicted) > 0
        weights = self.images / max(int(self.images.sum()), 1)
        result: dict[str, dict[str, float]] = {"macro": {}, "weighted": {}}
        for name in ("precision", "recall", "f1"):
            values = np.nan_to_num(getattr(self, name))
            result["macro"][name] = float(values[present].mean()) if present.any() else 0.0
            result["weighted"][name] = float((values * weights).sum())
        return result


@dataclass(frozen=True)
class Scores:
    """Everything `finetune evaluate` reports about predictions on one split."""

    images: int
    loss: float
    accuracy: float
    top_k: int  # the k of top_k_accuracy: 5, or the number of classes when fewer
    top_k_accuracy: float
    confusion: np.ndarray
    classes: ClassScores

    @classmethod
    def compute(cls, log_probs: np.ndarray, labels: np.ndarray, smoothing: float = 0.0) -> Scores:
        """Scores of (images, classes) log-probabilities against the true labels."""
        num_classes = log_probs.shape[1]
        confusion = confusion_matrix(labels, log_probs.argmax(axis=1), num_classes)
        k = min(TOP_K, num_classes)
        return cls(
            images=len(labels),
            loss=float(sample_losses(log_probs, labels, smoothing).mean()) if len(labels) else 0.0,
            accuracy=float(np.trace(confusion) / max(len(labels), 1)),
            top_k=k,
            top_k_accuracy=top_k_accuracy(log_probs, labels, k),
            confusion=confusion,
            classes=ClassScores.from_confusion(confusion),
        )
