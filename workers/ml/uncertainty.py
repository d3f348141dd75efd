"""Uncertainty scores over class probabilities.

Single-model scorers take ``probs`` of shape ``[n, k]`` (rows are distributions over k classes);
sample scorers take ``[n, k, T]``: T MC-dropout passes, or T members of a committee. All return
``[n]`` float64 scores where **higher means more uncertain**, so every strategy ranks the same
way. Inputs are validated once at the entry (`score_uncertainty`, `score_samples`).
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
    return _entropy_along(probs, axis=1)


def _entropy_along(probs: np.ndarray, axis: int) -> np.ndarray:
    clipped = np.clip(probs, 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(clipped > 0, clipped * np.log(clipped), 0.0).sum(axis=axis)


def bald(samples: np.ndarray) -> np.ndarray:
    """Mutual information between prediction and model, from MC-dropout samples [n, k, T]:
    H(mean_t p_t) - mean_t H(p_t) (Houlsby et al. 2011; Gal et al. 2017)."""
    return _entropy_along(samples.mean(axis=2), axis=1) - _entropy_along(samples, axis=1).mean(axis=1)


def vote_entropy(samples: np.ndarray) -> np.ndarray:
    """Entropy of the committee's votes [n, k, M]: how split the members' top classes are."""
    n, k, m = samples.shape
    votes = samples.argmax(axis=1)  # [n, M]
    counts = np.zeros((n, k))
    np.add.at(counts, (np.repeat(np.arange(n), m), votes.ravel()), 1.0)
    return _entropy_along(counts / m, axis=1)


def consensus_kl(samples: np.ndarray) -> np.ndarray:
    """Mean KL divergence of each member [n, k, M] from the consensus: soft disagreement."""
    consensus = samples.mean(axis=2, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(samples > 0, samples * (np.log(samples) - np.log(consensus)), 0.0)
    return terms.sum(axis=1).mean(axis=1)


def validate_samples(samples: np.ndarray, *, atol: float = 1e-3) -> np.ndarray:
    """Return ``samples`` as float64 ``[n, k, T]`` (T >= 2) or raise ValueError."""
    array = np.asarray(samples, dtype=np.float64)
    if array.ndim != 3:
        raise ValueError(f"samples must be a 3-D array [n, k, T], got shape {array.shape}")
    if array.shape[2] < 2:
        raise ValueError(f"samples need at least 2 passes or members, got {array.shape[2]}")
    n, k, t = array.shape
    validate_probabilities(array.transpose(0, 2, 1).reshape(n * t, k), atol=atol)
    return array


SAMPLE_SCORERS: dict[str, ArrayScorer] = {
    "bald": bald,
    "vote_entropy": vote_entropy,
    "consensus_kl": consensus_kl,
}


def _scorer(table: dict[str, ArrayScorer], kind: str, method: str) -> ArrayScorer:
    try:
        return table[method]
    except KeyError:
        raise ValueError(f"unknown {kind} method {method!r}: use one of {', '.join(sorted(table))}") from None


def score_samples(method: str, samples: np.ndarray) -> np.ndarray:
    """Score MC or committee samples [n, k, T] with the named method; higher is more uncertain."""
    return _scorer(SAMPLE_SCORERS, "sample", method)(validate_samples(samples))


SCORERS: dict[str, ArrayScorer] = {
    "least_confidence": least_confidence,
    "margin": margin,
    "entropy": entropy,
}


def score_uncertainty(method: str, probs: np.ndarray) -> np.ndarray:
    """Score ``probs`` [n, k] with the named method; higher is more uncertain."""
    return _scorer(SCORERS, "uncertainty", method)(validate_probabilities(probs))
