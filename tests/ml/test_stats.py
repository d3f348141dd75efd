"""Bootstrap intervals and the exact McNemar test, checked against scipy and a naive loop."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binomtest
from sklearn.metrics import f1_score, recall_score

from workers.ml.metrics import classification_metrics
from workers.ml.stats import classification_intervals, mcnemar_exact, paired_comparison


def noisy_predictions(n: int, k: int, accuracy: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, k, n)
    wrong = rng.random(n) > accuracy
    y_pred = np.where(wrong, (y_true + rng.integers(1, k, n)) % k, y_true)
    return y_true, y_pred


@given(st.integers(0, 60), st.integers(0, 60))
@settings(max_examples=80, deadline=None)
def test_mcnemar_matches_scipys_exact_binomial_test(b: int, c: int) -> None:
    expected = 1.0 if b + c == 0 else binomtest(b, b + c, 0.5).pvalue
    assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_mcnemar_handles_thousands_of_discordant_pairs() -> None:
    assert mcnemar_exact(5200, 4800) == pytest.approx(binomtest(5200, 10000, 0.5).pvalue, rel=1e-6)
    assert mcnemar_exact(0, 3000) < 1e-300 or mcnemar_exact(0, 3000) == 0.0


def test_point_estimates_equal_the_snapshot_metrics() -> None:
    y_true, y_pred = noisy_predictions(400, 5, 0.8, seed=1)
    intervals = classification_intervals(y_true, y_pred, 5, n_resamples=1000, seed=0)
    probs = np.eye(5)[y_pred]
    metrics = classification_metrics(y_true, probs, list("abcde"))
    assert intervals.accuracy.estimate == pytest.approx(metrics["accuracy"])
    assert intervals.macro_f1.estimate == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    recalls = recall_score(y_true, y_pred, average=None)
    assert [i.estimate for i in intervals.per_class_recall] == pytest.approx(recalls)


def test_bootstrap_matches_a_naive_resampling_loop() -> None:
    """The chunked bincount must resample exactly as a plain loop over the same indices does."""
    y_true, y_pred = noisy_predictions(150, 4, 0.7, seed=2)
    intervals = classification_intervals(y_true, y_pred, 4, n_resamples=1000, seed=7)
    rng = np.random.default_rng(7)
    index = rng.integers(0, 150, size=(1000, 150))
    acc = [(y_true[i] == y_pred[i]).mean() for i in index]
    f1 = [f1_score(y_true[i], y_pred[i], average="macro", labels=np.unique(y_true[i]), zero_division=0)
          for i in index]
    assert intervals.accuracy.lower == pytest.approx(np.percentile(acc, 2.5))
    assert intervals.accuracy.upper == pytest.approx(np.percentile(acc, 97.5))
    assert intervals.macro_f1.lower == pytest.approx(np.percentile(f1, 2.5))
    assert intervals.macro_f1.upper == pytest.approx(np.percentile(f1, 97.5))


def test_intervals_are_seeded_and_narrow_with_more_items() -> None:
    small = noisy_predictions(80, 10, 0.8, seed=3)
    large = noisy_predictions(8000, 10, 0.8, seed=3)
    a = classification_intervals(*small, 10, seed=5)
    assert a == classification_intervals(*small, 10, seed=5)
    b = classification_intervals(*large, 10, seed=5)
    assert a.accuracy.lower <= a.accuracy.estimate <= a.accuracy.upper
    width_small = a.accuracy.upper - a.accuracy.lower
    width_large = b.accuracy.upper - b.accuracy.lower
    # sqrt(100) = 10 times narrower, give or take resampling noise
    assert 6 < width_small / width_large < 14
    # and it covers the truth: 95% of the binomial's mass around 0.8 is about +-1.96 * sd
    sd = np.sqrt(0.8 * 0.2 / 80)
    assert width_small == pytest.approx(2 * 1.96 * sd, rel=0.25)


def test_a_class_missing_from_the_set_has_no_recall_interval() -> None:
    y_true = np.array([0, 0, 1, 1, 0, 1] * 20)
    y_pred = np.array([0, 1, 1, 1, 0, 2] * 20)
    intervals = classification_intervals(y_true, y_pred, 3, n_resamples=1000)
    assert intervals.per_class_recall[2] is None
    assert intervals.per_class_recall[0] is not None


def test_paired_comparison_counts_discordant_pairs_and_brackets_the_difference() -> None:
    rng = np.random.default_rng(4)
    y_true = rng.integers(0, 3, 500)
    production = np.where(rng.random(500) < 0.75, y_true, (y_true + 1) % 3)
    candidate = np.where(rng.random(500) < 0.85, y_true, (y_true + 2) % 3)
    result = paired_comparison(y_true, candidate, production, seed=1)
    b = int(np.sum((candidate == y_true) & (production != y_true)))
    c = int(np.sum((candidate != y_true) & (production == y_true)))
    assert (result.candidate_only_correct, result.production_only_correct) == (b, c)
    assert result.accuracy_difference.estimate == pytest.approx(
        (candidate == y_true).mean() - (production == y_true).mean())
    assert result.accuracy_difference.lower < result.accuracy_difference.estimate < result.accuracy_difference.upper
    assert result.accuracy_difference.lower > 0  # 10 points better on 500 items is not noise
    assert result.mcnemar_p_value == pytest.approx(binomtest(b, b + c, 0.5).pvalue)


def test_identical_models_have_a_zero_difference_and_p_value_one() -> None:
    y_true, y_pred = noisy_predictions(300, 4, 0.6, seed=5)
    result = paired_comparison(y_true, y_pred, y_pred)
    assert result.mcnemar_p_value == 1.0
    assert result.accuracy_difference.as_dict() == {"estimate": 0.0, "lower": 0.0, "upper": 0.0}


@pytest.mark.parametrize("kwargs, message", [
    ({"n_resamples": 999}, "at least 1000"),
    ({"confidence": 1.0}, "confidence"),
])
def test_bad_settings_fail_fast(kwargs: dict, message: str) -> None:
    y_true, y_pred = noisy_predictions(50, 3, 0.5, seed=6)
    with pytest.raises(ValueError, match=message):
        classification_intervals(y_true, y_pred, 3, **kwargs)


def test_bad_labels_fail_fast() -> None:
    with pytest.raises(ValueError, match="outside"):
        classification_intervals(np.array([0, 3]), np.array([0, 1]), 3)
    with pytest.raises(ValueError, match="empty"):
        classification_intervals(np.array([], dtype=int), np.array([], dtype=int), 3)
    with pytest.raises(ValueError, match="integer"):
        classification_intervals(np.array([0.0, 1.0]), np.array([0, 1]), 3)
