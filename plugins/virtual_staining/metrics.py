"""Classification and agreement metrics (numpy/scipy only, no scikit-learn needed)."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

__all__ = ["best_f1_threshold", "binary_metrics", "dice", "pearson_r", "roc_auc"]


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with tied ranks); NaN with one class only."""
    y = labels.astype(bool).ravel()
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = rankdata(scores.ravel())
    return float((ranks[y].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def binary_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """F1, accuracy, precision, recall and ROC AUC of scores thresholded at ``threshold``.

    Raises ValueError when labels and scores differ in size or are empty.
    """
    y = labels.astype(bool).ravel()
    if y.size == 0 or y.size != scores.size:
        raise ValueError(f"need matching, non-empty labels and scores ({y.size} vs {scores.size})")
    predicted = scores.ravel() >= threshold
    tp = int((predicted & y).sum())
    fp = int((predicted & ~y).sum())
    fn = int((~predicted & y).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "f1": f1,
        "accuracy": float((predicted == y).mean()),
        "precision": precision,
        "recall": recall,
        "roc_auc": roc_auc(y, scores),
    }


def best_f1_threshold(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """The threshold in 0.05..0.95 with the highest F1, and that F1 (ties: closest to 0.5)."""
    candidates = np.round(np.arange(0.05, 0.951, 0.05), 2)
    results = [(binary_metrics(labels, scores, float(t))["f1"], -abs(t - 0.5), float(t)) for t in candidates]
    f1, _, threshold = max(results)
    return threshold, f1


def pearson_r(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; NaN when either side is constant or fewer than 2 values."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.size < 2 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def dice(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Dice overlap of two boolean masks; 1.0 when both are empty."""
    p, t = predicted.astype(bool), truth.astype(bool)
    total = int(p.sum()) + int(t.sum())
    return 1.0 if total == 0 else 2.0 * int((p & t).sum()) / total
