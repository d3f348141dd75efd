"""Temperature scaling: recovers a known temperature, matches torch's optimiser, lowers ECE."""

import numpy as np
import pytest
import torch

from workers.ml.calibration import (
    calibrate,
    fit_temperature,
    logits_from_probabilities,
    softmax_with_temperature,
)


def sampled_set(n: int, k: int, true_temperature: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(logits / T): the temperature that calibrates them is T."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, size=(n, k))
    probs = softmax_with_temperature(logits, true_temperature)
    y = np.array([rng.choice(k, p=p) for p in probs])
    return logits, y


def torch_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    x = torch.from_numpy(logits)
    target = torch.from_numpy(y)
    optimiser = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(x / log_t.exp(), target)
        loss.backward()
        return loss

    optimiser.step(closure)
    return float(log_t.detach().exp())


@pytest.mark.parametrize("true_temperature", [0.5, 1.0, 2.5])
def test_recovers_the_temperature_the_labels_were_drawn_with(true_temperature: float) -> None:
    logits, y = sampled_set(6000, 5, true_temperature, seed=int(true_temperature * 10))
    assert fit_temperature(logits, y) == pytest.approx(true_temperature, rel=0.08)


def test_agrees_with_torch_lbfgs_on_the_same_nll() -> None:
    logits, y = sampled_set(2000, 10, 1.7, seed=3)
    assert fit_temperature(logits, y) == pytest.approx(torch_temperature(logits, y), rel=1e-4)


def test_overconfident_model_gets_lower_ece_and_nll_after_scaling() -> None:
    logits, y = sampled_set(4000, 4, 3.0, seed=4)  # raw logits are 3x too sharp
    fit = calibrate(logits, y)
    assert fit.temperature > 2
    assert fit.nll_after < fit.nll_before
    assert fit.ece_after < fit.ece_before / 2
    assert sum(b["count"] for b in fit.reliability_after) == 4000


def test_works_from_stored_probabilities() -> None:
    logits, y = sampled_set(3000, 3, 2.0, seed=5)
    probs = softmax_with_temperature(logits, 1.0)
    assert fit_temperature(logits_from_probabilities(probs), y) == pytest.approx(fit_temperature(logits, y), rel=1e-3)


def test_bad_input_fails_fast() -> None:
    with pytest.raises(ValueError, match="non-finite"):
        fit_temperature(np.array([[np.nan, 1.0]]), np.array([0]))
    with pytest.raises(ValueError, match="class indices"):
        fit_temperature(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match="empty"):
        fit_temperature(np.zeros((0, 3)), np.array([], dtype=int))
    with pytest.raises(ValueError, match="temperature must be"):
        softmax_with_temperature(np.zeros((1, 2)), 0.0)
