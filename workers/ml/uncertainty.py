"""Uncertainty scores over class probabilities.

Every scorer takes ``probs`` of shape ``[n, k]`` (rows are distributions over k classes) and
returns ``[n]`` float64 scores where **higher means more uncertain**, so every strategy can be
ranked the same way. Inputs are validated once at the entry (`score_uncertainty`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

ArrayScorer = Callable[[np.ndarray], np.ndarray]


def validate_probabilities(probs: np.ndarray, *, atol: float = 1e-3) -> np.ndarray:
    """Return ``probs`` as float64 ``[n, k]`` or raise ValueError saying what is wrong."""
    array = np.asarray(probs, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"probabilities must be a 2-D array [n, k], got shape {array.shape}")
    if array.shape[1] < 2:
        raise ValueError(f"probabilities need at least 2 classes, got {array.shape[1]}")
    if not np.isfinite(array).all():
        row = int(np.argwhere(~np.isfinite(array))[0, 0])
        raise ValueError(f"probabilities contain non-finite values (first in row {row})")
    if (array < -atol).any() or (array > 1 + atol).any():
        row = int(np.argwhere((array < -atol) | (array > 1 + atol))[0, 0])
        raise ValueError(f"probabilities must lie in [0, 1] (row {row} does not)")
    sums = array.sum(axis=1)
    bad = np.abs(sums - 1.0) > atol
    if bad.any():
        row = int(np.argmax(bad))
        raise ValueError(f"probabilities must sum to 1 (row {row} sums to {sums[row]:.6f})")
    return array


def least_confidence(probs: np.ndarray) -> np.ndarray:
    """1 - max_c p(c): how far the top class is from certainty."""
    return 1.0 - probs.max(axis=1)


def margin(probs: np.ndarray) -> np.ndarray:
    """1 - (p(top1) - p(top2)): a small gap between the two best classes is uncertain."""
    top2 = np.partition(probs, -2, axis=1)[:, -2:]
    return 1.0 - (top2[:, 1] - top2[:, 0])


def entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy in nats, -sum_c p(c) log p(c), with 0 log 0 = 0."""
    clipped = np.clip(probs, 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(clipped > 0, clipped * np.log(clipped), 0.0)
    return -terms.sum(axis=1)


SCORERS: dict[str, ArrayScorer] = {
    "least_confidence": least_confidence,
    "margin": margin,
    "entropy": entropy,
}


def score_uncertainty(method: str, probs: np.ndarray) -> np.ndarray:
    """Score ``probs`` [n, k] with the named method; higher is more uncertain."""
    try:
        scorer = SCORERS[method]
    except KeyError:
        raise ValueError(
            f"unknown uncertainty method {method!r}: use one of {', '.join(sorted(SCORERS))}"
        ) from None
    return scorer(validate_probabilities(probs))
