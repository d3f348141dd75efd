"""Drift statistics for monitoring deployed models: plain numpy, no Django, no torch.

* PSI (population stability index) between a reference and a current distribution, over the
  predicted classes or over binned confidences: ``sum((c - r) * ln(c / r))`` over bins, with
  empty bins floored at ``PSI_FLOOR`` so one class that never appeared does not make it infinite.
  Rules of thumb: under 0.1 stable, 0.1-0.25 moderate shift, over 0.25 a major shift.
* The two-sample Kolmogorov-Smirnov test on confidences: the largest gap between the two
  empirical CDFs, and its asymptotic p-value (Kolmogorov's distribution with Stephens' small
  sample correction, as in Numerical Recipes' ``probks``). scipy is not a dependency of hitl;
  the tests check these numbers against ``scipy.stats`` where it is installed.

Inputs are validated at the entry (shapes, finite values, ranges); each function is small and
pure, so the monitor (``hitl.services.monitoring``) records what they return.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

PSI_FLOOR = 1e-4  # the share an empty bin counts as
CONFIDENCE_BINS = 10  # equal-width bins of [0, 1]


@dataclass(frozen=True)
class KSResult:
    statistic: float  # the largest gap between the two empirical CDFs, in [0, 1]
    p_value: float  # asymptotic two-sided p-value
    n_reference: int
    n_current: int


def _counts(values: object, name: str) -> np.ndarray:
    counts = np.asarray(values, dtype=np.float64)
    if counts.ndim != 1 or len(counts) < 2:
        raise ValueError(f"{name} must be a 1-D array of at least two bin counts, got shape {counts.shape}")
    if not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise ValueError(f"{name} must hold finite, non-negative counts")
    if counts.sum() <= 0:
        raise ValueError(f"{name} is empty: no observation in any bin")
    return counts


def psi(reference_counts: object, current_counts: object, *, floor: float = PSI_FLOOR) -> float:
    """Population stability index of ``current`` against ``reference`` (counts per bin, same bins)."""
    reference = _counts(reference_counts, "reference_counts")
    current = _counts(current_counts, "current_counts")
    if reference.shape != current.shape:
        raise ValueError(f"the two distributions have different bins: {reference.shape} and {current.shape}")
    if not 0 < floor < 1:
        raise ValueError("floor must lie in (0, 1)")
    r = np.maximum(reference / reference.sum(), floor)
    c = np.maximum(current / current.sum(), floor)
    return float(np.sum((c - r) * np.log(c / r)))


def class_counts(predicted: object, num_classes: int) -> np.ndarray:
    """How many predictions fell in each class (``predicted``: class indices)."""
    indices = np.asarray(predicted)
    if indices.ndim != 1 or (len(indices) and not np.issubdtype(indices.dtype, np.integer)):
        raise ValueError("predicted must be a 1-D array of class indices")
    if num_classes < 2:
        raise ValueError("num_classes must be at least 2")
    if len(indices) and (indices.min() < 0 or indices.max() >= num_classes):
        raise ValueError(f"predicted holds class indices outside 0..{num_classes - 1}")
    return np.bincount(indices.astype(np.int64), minlength=num_classes)


def _confidences(values: object, name: str) -> np.ndarray:
    confidences = np.asarray(values, dtype=np.float64)
    if confidences.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of confidences")
    if not np.all(np.isfinite(confidences)) or np.any((confidences < 0) | (confidences > 1)):
        raise ValueError(f"{name} must hold finite confidences in [0, 1]")
    return confidences


def confidence_histogram(confidences: object, *, bins: int = CONFIDENCE_BINS) -> np.ndarray:
    """Counts of confidences in ``bins`` equal-width bins of [0, 1] (1.0 falls in the last)."""
    values = _confidences(confidences, "confidences")
    if bins < 2:
        raise ValueError("bins must be at least 2")
    return np.histogram(values, bins=bins, range=(0.0, 1.0))[0]


def kolmogorov_survival(x: float) -> float:
    """P(K > x) for Kolmogorov's distribution: ``2 sum_{j>=1} (-1)^(j-1) exp(-2 j^2 x^2)``; for
    small x the series converges slowly, so the equivalent theta-function form is used there."""
    if x <= 0:
        return 1.0
    if x < 1.18:
        y = math.exp(-(math.pi**2) / (8 * x * x))
        cdf = math.sqrt(2 * math.pi) / x * sum(y ** ((2 * j - 1) ** 2) for j in range(1, 6))
        return min(1.0, max(0.0, 1.0 - cdf))
    total = sum((-1) ** (j - 1) * math.exp(-2 * j * j * x * x) for j in range(1, 101))
    return min(1.0, max(0.0, 2 * total))


def ks_two_sample(reference: object, current: object) -> KSResult:
    """Two-sample Kolmogorov-Smirnov test of ``current`` confidences against ``reference``."""
    a = np.sort(_confidences(reference, "reference"))
    b = np.sort(_confidences(current, "current"))
    if len(a) == 0 or len(b) == 0:
        raise ValueError("both samples need at least one value")
    grid = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, grid, side="right") / len(a)
    cdf_b = np.searchsorted(b, grid, side="right") / len(b)
    statistic = float(np.max(np.abs(cdf_a - cdf_b)))
    effective = math.sqrt(len(a) * len(b) / (len(a) + len(b)))
    p_value = kolmogorov_survival((effective + 0.12 + 0.11 / effective) * statistic)
    return KSResult(statistic=statistic, p_value=p_value, n_reference=len(a), n_current=len(b))


def sample_evenly(values: object, size: int) -> np.ndarray:
    """At most ``size`` values that keep the distribution of sorted ``values``: its quantiles at
    evenly spaced ranks (deterministic, so a recorded reference is the same each time)."""
    ordered = np.sort(np.asarray(values, dtype=np.float64))
    if size < 1:
        raise ValueError("size must be at least 1")
    if len(ordered) <= size:
        return ordered
    ranks = np.round(np.linspace(0, len(ordered) - 1, size)).astype(np.int64)
    return ordered[ranks]
