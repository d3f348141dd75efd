"""hitl.drift: PSI, the two-sample KS test and its p-value, on small synthetic arrays, with
scipy.stats (installed with the test tools, not a dependency of hitl) as the oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hitl import drift

stats = pytest.importorskip("scipy.stats")


def test_psi_by_hand() -> None:
    # (0.9 - 0.5) ln(0.9 / 0.5) + (0.1 - 0.5) ln(0.1 / 0.5)
    expected = 0.4 * math.log(1.8) + 0.4 * math.log(5)
    assert drift.psi([50, 50], [90, 10]) == pytest.approx(expected, rel=1e-12)
    assert drift.psi([5, 5], [9, 1]) == pytest.approx(expected, rel=1e-12)  # shares, not counts


def test_psi_is_zero_for_the_same_mix_and_symmetric() -> None:
    assert drift.psi([10, 20, 70], [1, 2, 7]) == pytest.approx(0.0, abs=1e-15)
    assert drift.psi([10, 20, 70], [30, 30, 40]) == pytest.approx(drift.psi([30, 30, 40], [10, 20, 70]))


def test_an_empty_bin_counts_as_the_floor_not_infinity() -> None:
    value = drift.psi([100, 0], [50, 50])
    expected = (0.5 - 1.0) * math.log(0.5 / 1.0) + (0.5 - drift.PSI_FLOOR) * math.log(0.5 / drift.PSI_FLOOR)
    assert math.isfinite(value) and value == pytest.approx(expected)


def test_psi_grows_with_the_shift() -> None:
    reference = [100] * 10
    shifted = [drift.psi(reference, [100 + 10 * s] + [100] * 9) for s in range(0, 50, 10)]
    assert shifted == sorted(shifted) and shifted[0] == pytest.approx(0) and shifted[-1] > 0.1


@pytest.mark.parametrize(("reference", "current", "match"), [
    ([1, 2], [1, 2, 3], "different bins"),
    ([1, -1], [1, 1], "non-negative"),
    ([1, float("nan")], [1, 1], "finite"),
    ([0, 0], [1, 1], "empty"),
    ([[1, 2]], [1, 2], "1-D"),
    ([3], [3], "at least two"),
])
def test_psi_refuses_bad_counts(reference, current, match) -> None:
    with pytest.raises(ValueError, match=match):
        drift.psi(reference, current)


def test_class_counts_and_its_checks() -> None:
    assert drift.class_counts(np.array([0, 2, 2, 1, 2]), 4).tolist() == [1, 1, 3, 0]
    with pytest.raises(ValueError, match="outside 0..3"):
        drift.class_counts(np.array([0, 4]), 4)
    with pytest.raises(ValueError, match="class indices"):
        drift.class_counts(np.array([0.5]), 4)


def test_confidence_histogram_puts_one_in_the_last_bin() -> None:
    counts = drift.confidence_histogram([0.0, 0.05, 0.1, 0.95, 1.0])
    assert counts.tolist() == [2, 1, 0, 0, 0, 0, 0, 0, 0, 2]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        drift.confidence_histogram([0.5, 1.2])


@pytest.mark.parametrize("x", [0.05, 0.3, 0.6, 0.9, 1.1, 1.17, 1.18, 1.19, 1.358, 1.63, 2.0, 3.0])
def test_kolmogorov_survival_matches_scipy(x: float) -> None:
    assert drift.kolmogorov_survival(x) == pytest.approx(stats.kstwobign.sf(x), abs=1e-9)


def test_kolmogorov_critical_values() -> None:
    assert drift.kolmogorov_survival(1.3581) == pytest.approx(0.05, abs=2e-4)
    assert drift.kolmogorov_survival(1.6276) == pytest.approx(0.01, abs=1e-4)
    assert drift.kolmogorov_survival(0) == 1.0


def test_ks_statistic_by_hand() -> None:
    result = drift.ks_two_sample([0.1, 0.2, 0.3, 0.4], [0.35, 0.45, 0.5, 0.6])
    assert result.statistic == pytest.approx(0.75)  # at 0.3: 3/4 of the first, none of the second
    assert (result.n_reference, result.n_current) == (4, 4)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=60), st.lists(st.floats(0, 1), min_size=1, max_size=60))
def test_ks_statistic_equals_scipys(a: list[float], b: list[float]) -> None:
    assert drift.ks_two_sample(a, b).statistic == pytest.approx(stats.ks_2samp(a, b).statistic, abs=1e-12)


def test_ks_p_value_against_scipy_on_large_samples() -> None:
    rng = np.random.default_rng(7)
    # samples of one distribution: p < 0.05 about 5% of the time (a calibrated test)
    false_alarms = np.mean([drift.ks_two_sample(rng.beta(8, 2, 1000), rng.beta(8, 2, 300)).p_value < 0.05
                            for _ in range(400)])
    assert 0.02 <= false_alarms <= 0.09
    darker = drift.ks_two_sample(rng.beta(8, 2, 2000), rng.beta(4, 3, 500))
    assert darker.p_value < 1e-10 and darker.statistic > 0.3
    a, b = rng.beta(8, 2, 2000), rng.beta(7.5, 2, 500)  # a small shift: p in the middle
    ours = drift.ks_two_sample(a, b)
    theirs = stats.ks_2samp(a, b, method="asymp")
    assert ours.p_value == pytest.approx(theirs.pvalue, rel=0.15, abs=0.01)


def test_ks_refuses_empty_and_out_of_range() -> None:
    with pytest.raises(ValueError, match="at least one"):
        drift.ks_two_sample([], [0.5])
    with pytest.raises(ValueError, match="finite"):
        drift.ks_two_sample([0.5, float("inf")], [0.5])


def test_sample_evenly_keeps_the_extremes_and_is_deterministic() -> None:
    values = np.random.default_rng(3).random(10_000)
    sample = drift.sample_evenly(values, 101)
    assert len(sample) == 101 and sample[0] == values.min() and sample[-1] == values.max()
    assert np.all(np.diff(sample) >= 0) and np.array_equal(sample, drift.sample_evenly(values[::-1], 101))
    assert abs(np.median(sample) - np.median(values)) < 0.01
    assert drift.sample_evenly([0.3, 0.1], 5).tolist() == [0.1, 0.3]
