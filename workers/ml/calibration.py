"""Temperature scaling (Guo et al., 2017): one scalar T that divides the logits, fitted by
minimising the negative log-likelihood on labels the model was not trained on.

Written against logits; stored probabilities work too, since softmax(log p) = p. With
beta = 1/T the NLL is convex in beta (log-sum-exp of a linear function minus a linear term), so a
safeguarded Newton iteration on beta finds the one minimum in a handful of steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from workers.ml.metrics import expected_calibration_error

MIN_TEMPERATURE = 0.05
MAX_TEMPERATURE = 20.0


@dataclass(frozen=True)
class TemperatureFit:
    temperature: float
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float
    reliability_before: list[dict[str, float]]
    reliability_after: list[dict[str, float]]
    n: int

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def _check(logits: np.ndarray, y_true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    logits = np.asarray(logits, dtype=np.float64)
    y_true = np.asarray(y_true)
    if logits.ndim != 2 or logits.shape[0] != len(y_true) or logits.shape[1] < 2:
        raise ValueError(f"logits must be [n, k>=2] matching {len(y_true)} labels, got {logits.shape}")
    if len(y_true) == 0:
        raise ValueError("cannot fit a temperature on an empty set")
    if not np.isfinite(logits).all():
        raise ValueError("logits hold non-finite values")
    if not np.issubdtype(y_true.dtype, np.integer) or y_true.min() < 0 or y_true.max() >= logits.shape[1]:
        raise ValueError(f"y_true must hold class indices in 0..{logits.shape[1] - 1}")
    return logits, y_true.astype(np.int64)


def logits_from_probabilities(probs: np.ndarray, floor: float = 1e-12) -> np.ndarray:
    """Log-probabilities: logits up to a per-row constant, which softmax ignores."""
    return np.log(np.clip(np.asarray(probs, dtype=np.float64), floor, None))


def softmax_with_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    if not MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE:
        raise ValueError(f"temperature must be in [{MIN_TEMPERATURE}, {MAX_TEMPERATURE}], got {temperature}")
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)


def _nll_and_derivatives(beta: float, logits: np.ndarray, y_true: np.ndarray) -> tuple[float, float, float]:
    """Mean NLL at inverse temperature beta, and its first and second derivative in beta."""
    scaled = beta * logits
    shift = scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled - shift)
    total = exp.sum(axis=1)
    p = exp / total[:, None]
    true_logit = logits[np.arange(len(y_true)), y_true]
    nll = float(np.mean(np.log(total) + shift[:, 0] - beta * true_logit))
    mean_logit = (p * logits).sum(axis=1)
    grad = float(np.mean(mean_logit - true_logit))
    hess = float(np.mean((p * logits**2).sum(axis=1) - mean_logit**2))
    return nll, grad, hess


def fit_temperature(logits: np.ndarray, y_true: np.ndarray, *, max_steps: int = 100) -> float:
    """The temperature in [MIN_TEMPERATURE, MAX_TEMPERATURE] that minimises the NLL."""
    logits, y_true = _check(logits, y_true)
    low, high = 1 / MAX_TEMPERATURE, 1 / MIN_TEMPERATURE  # bracket on beta
    beta = 1.0
    for _ in range(max_steps):
        _, grad, hess = _nll_and_derivatives(beta, logits, y_true)
        if grad > 0:
            high = beta
        else:
            low = beta
        step = beta - grad / hess if hess > 1e-12 else (low + high) / 2
        beta = step if low < step < high else (low + high) / 2  # Newton, else bisect the bracket
        if high - low < 1e-9 or abs(grad) < 1e-10:
            break
    return float(np.clip(1 / beta, MIN_TEMPERATURE, MAX_TEMPERATURE))


def calibrate(logits: np.ndarray, y_true: np.ndarray, n_bins: int = 10) -> TemperatureFit:
    """Fit a temperature and report NLL, ECE and reliability bins before and after it."""
    logits, y_true = _check(logits, y_true)
    temperature = fit_temperature(logits, y_true)
    before = softmax_with_temperature(logits, 1.0)
    after = softmax_with_temperature(logits, temperature)
    ece_before, bins_before = expected_calibration_error(before.max(axis=1), before.argmax(axis=1) == y_true, n_bins)
    ece_after, bins_after = expected_calibration_error(after.max(axis=1), after.argmax(axis=1) == y_true, n_bins)
    rows = np.arange(len(y_true))
    return TemperatureFit(
        temperature=temperature,
        nll_before=float(-np.mean(np.log(np.clip(before[rows, y_true], 1e-300, None)))),
        nll_after=float(-np.mean(np.log(np.clip(after[rows, y_true], 1e-300, None)))),
        ece_before=ece_before, ece_after=ece_after,
        reliability_before=bins_before, reliability_after=bins_after, n=len(y_true),
    )
