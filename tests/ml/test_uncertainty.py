import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from workers.ml.uncertainty import (
    SCORERS,
    entropy,
    least_confidence,
    margin,
    score_uncertainty,
    validate_probabilities,
)


def test_known_values() -> None:
    probs = np.array([[1.0, 0.0, 0.0], [0.5, 0.3, 0.2], [1 / 3, 1 / 3, 1 / 3]])
    np.testing.assert_allclose(least_confidence(probs), [0.0, 0.5, 2 / 3])
    np.testing.assert_allclose(margin(probs), [0.0, 0.8, 1.0])
    np.testing.assert_allclose(entropy(probs), [0.0, -(0.5 * np.log(0.5) + 0.3 * np.log(0.3) + 0.2 * np.log(0.2)), np.log(3)])


@pytest.mark.parametrize(
    ("probs", "message"),
    [
        (np.ones(3) / 3, "2-D"),
        (np.array([[1.0]]), "at least 2 classes"),
        (np.array([[0.5, np.nan]]), "non-finite"),
        (np.array([[1.5, -0.5]]), "lie in"),
        (np.array([[0.5, 0.2]]), "sum to 1"),
    ],
)
def test_validation_rejects_bad_arrays(probs: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_probabilities(probs)


def test_unknown_method_is_named() -> None:
    with pytest.raises(ValueError, match="unknown uncertainty method 'nope'"):
        score_uncertainty("nope", np.array([[0.5, 0.5]]))


def distributions(k: int) -> st.SearchStrategy[np.ndarray]:
    return arrays(np.float64, (5, k), elements=st.floats(0.001, 1.0)).map(lambda a: a / a.sum(axis=1, keepdims=True))


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 12).flatmap(distributions))
def test_one_hot_is_never_more_uncertain_than_uniform(probs: np.ndarray) -> None:
    n, k = probs.shape
    one_hot = np.eye(k)[np.zeros(n, dtype=int)]
    uniform = np.full((n, k), 1 / k)
    for name in SCORERS:
        scores = score_uncertainty(name, probs)
        assert (score_uncertainty(name, one_hot) <= scores + 1e-12).all(), name
        assert (scores <= score_uncertainty(name, uniform) + 1e-9).all(), name


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 8).flatmap(distributions))
def test_scores_ignore_class_order(probs: np.ndarray) -> None:
    shuffled = probs[:, ::-1]
    for name in SCORERS:
        np.testing.assert_allclose(score_uncertainty(name, probs), score_uncertainty(name, shuffled), atol=1e-12)
