from __future__ import annotations

import math

import numpy as np
import pytest

from acqflow.plugins.virtual_staining.metrics import (
    best_f1_threshold,
    binary_metrics,
    dice,
    pearson_r,
    roc_auc,
)


def test_binary_metrics_by_hand() -> None:
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    scores = np.array([0.9, 0.8, 0.3, 0.7, 0.2, 0.1, 0.1, 0.0])
    m = binary_metrics(labels, scores, 0.5)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3) and m["accuracy"] == pytest.approx(6 / 8)
    # 15 positive/negative pairs; only (0.3, 0.7) is ordered wrongly, none tied.
    assert m["roc_auc"] == pytest.approx(14 / 15)


def test_auc_ties_and_degenerate_cases() -> None:
    assert roc_auc(np.array([1, 0]), np.array([0.5, 0.5])) == pytest.approx(0.5)
    assert math.isnan(roc_auc(np.array([1, 1]), np.array([0.1, 0.2])))
    with pytest.raises(ValueError, match="matching"):
        binary_metrics(np.array([1, 0]), np.array([0.1]), 0.5)


def test_best_threshold_pearson_and_dice() -> None:
    labels = np.array([1, 1, 0, 0])
    threshold, f1 = best_f1_threshold(labels, np.array([0.35, 0.3, 0.2, 0.1]))
    assert f1 == 1.0 and 0.2 < threshold <= 0.3
    assert pearson_r(np.array([1, 2, 3]), np.array([2, 4, 6.5])) > 0.99
    assert math.isnan(pearson_r(np.array([1, 1]), np.array([1, 2])))
    assert dice(np.array([1, 1, 0], bool), np.array([1, 0, 0], bool)) == pytest.approx(2 / 3)
    assert dice(np.zeros(3, bool), np.zeros(3, bool)) == 1.0
