"""Classification metrics as plain numpy: accuracy, per-class P/R/F1, confusion, calibration."""

from __future__ import annotations

from typing import Any

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, n_bins: int = 10
) -> tuple[float, list[dict[str, float]]]:
    """ECE over equal-width confidence bins, and the bins for a reliability diagram."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bin_index = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    ece = 0.0
    bins: list[dict[str, float]] = []
    for b in range(n_bins):
        mask = bin_index == b
        count = int(mask.sum())
        if count == 0:
            continue
        mean_conf = float(confidence[mask].mean())
        accuracy = float(correct[mask].mean())
        ece += count / len(confidence) * abs(mean_conf - accuracy)
        bins.append(
            {"lower": float(edges[b]), "upper": float(edges[b + 1]), "count": count,
             "confidence": mean_conf, "accuracy": accuracy}
        )
    return float(ece), bins


def classification_metrics(
    y_true: np.ndarray, probs: np.ndarray, labels: list[str]
) -> dict[str, Any]:
    """Everything an evaluation snapshot stores, as JSON-ready values.

    ``y_true`` holds class indices [n]; ``probs`` the model's probabilities [n, k].
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    k = len(labels)
    if probs.ndim != 2 or probs.shape != (len(y_true), k):
        raise ValueError(f"probs must be [{len(y_true)}, {k}], got {probs.shape}")
    if len(y_true) == 0:
        raise ValueError("cannot compute metrics on an empty set")
    if y_true.min() < 0 or y_true.max() >= k:
        raise ValueError(f"y_true holds class indices outside 0..{k - 1}")
    y_pred = probs.argmax(axis=1)
    matrix = confusion_matrix(y_true, y_pred, k)
    true_positive = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0).astype(np.float64)
    actual = matrix.sum(axis=1).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, true_positive / predicted, 0.0)
        recall = np.where(actual > 0, true_positive / actual, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = actual > 0
    confidence = probs.max(axis=1)
    ece, reliability = expected_calibration_error(confidence, y_pred == y_true)
    return {
        "n": int(len(y_true)),
        "accuracy": float((y_pred == y_true).mean()),
        "macro_precision": float(precision[present].mean()),
        "macro_recall": float(recall[present].mean()),
        "macro_f1": float(f1[present].mean()),
        "per_class": {
            label: {"precision": float(precision[i]), "recall": float(recall[i]),
                    "f1": float(f1[i]), "support": int(actual[i])}
            for i, label in enumerate(labels)
        },
        "confusion_matrix": matrix.tolist(),
        "labels": list(labels),
        "ece": ece,
        "reliability": reliability,
        "mean_confidence": float(confidence.mean()),
    }
