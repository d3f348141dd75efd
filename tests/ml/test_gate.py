"""The promotion gate's rules on synthetic predictions with known differences."""

import numpy as np
import pytest

from workers.ml.gate import (
    AWAITING_APPROVAL,
    PROMOTED,
    REJECTED,
    GateRules,
    evaluate_gate,
    gate_evidence,
)

LABELS = ["cat", "dog", "bird"]


def one_hot_predictions(y_true: np.ndarray, accuracy: float, seed: int, *, fail_class: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    wrong = rng.random(len(y_true)) > accuracy
    if fail_class is not None:
        wrong |= y_true == fail_class
    pred = np.where(wrong, (y_true + 1) % 3, y_true)
    probs = np.full((len(y_true), 3), 0.05)
    probs[np.arange(len(y_true)), pred] = 0.9
    return probs


def y(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 3, n)


def verdict(rules: GateRules, y_true, candidate, production):
    return evaluate_gate(rules, gate_evidence(y_true, candidate, production, LABELS, rules=rules))


def test_a_clearly_better_candidate_is_promoted_with_every_rule_recorded() -> None:
    truth = y(600)
    rules = GateRules(min_golden_size=100, require_superiority=True, critical_recall={"cat": 0.5}, max_ece=0.5)
    result = verdict(rules, truth, one_hot_predictions(truth, 0.9, 1), one_hot_predictions(truth, 0.75, 2))
    assert result.outcome == PROMOTED, result.reason
    assert [r.rule for r in result.rules] == ["min_golden_size", "non_inferiority", "superiority", "calibration",
                                              "recall_floor:cat"]
    assert all(r.passed for r in result.rules)
    assert result.rules[1].inputs["difference"]["lower"] > 0


def test_a_small_difference_on_few_items_is_not_called_an_improvement() -> None:
    truth = y(80, seed=3)
    production = one_hot_predictions(truth, 0.8, 4)
    candidate = production.copy()
    flip = np.flatnonzero(candidate.argmax(1) != truth)[:2]  # two more right answers: +2.5 points
    candidate[flip] = np.eye(3)[truth[flip]]
    result = verdict(GateRules(min_golden_size=50, require_superiority=True), truth, candidate, production)
    assert result.outcome == REJECTED
    superiority = next(r for r in result.rules if r.rule == "superiority")
    assert not superiority.passed and superiority.inputs["mcnemar_p_value"] == pytest.approx(0.5)


def test_a_worse_candidate_fails_non_inferiority() -> None:
    truth = y(800, seed=5)
    result = verdict(GateRules(), truth, one_hot_predictions(truth, 0.7, 6), one_hot_predictions(truth, 0.85, 7))
    assert result.outcome == REJECTED
    assert "non_inferiority" in result.reason
    assert result.rules[1].inputs["difference"]["upper"] < 0


def test_too_small_a_golden_set_rejects_even_the_first_model_unless_the_project_says_otherwise() -> None:
    truth = y(30, seed=8)
    candidate = one_hot_predictions(truth, 0.9, 9)
    assert verdict(GateRules(min_golden_size=50), truth, candidate, None).outcome == REJECTED
    relaxed = GateRules(min_golden_size=50, first_model_needs_golden_set=False)
    assert verdict(relaxed, truth, candidate, None).outcome == PROMOTED


def test_a_critical_class_below_its_floor_rejects() -> None:
    truth = y(600, seed=10)
    candidate = one_hot_predictions(truth, 0.95, 11, fail_class=2)  # never right on bird
    result = verdict(GateRules(critical_recall={"bird": 0.6}), truth, candidate, one_hot_predictions(truth, 0.6, 12))
    assert result.outcome == REJECTED
    floor = next(r for r in result.rules if r.rule == "recall_floor:bird")
    assert not floor.passed and floor.inputs["recall"]["estimate"] == 0.0


def test_a_poorly_calibrated_candidate_fails_the_ece_bound() -> None:
    truth = y(500, seed=13)
    candidate = one_hot_predictions(truth, 0.6, 14)  # 0.9 confident, 60% right
    result = verdict(GateRules(max_ece=0.1), truth, candidate, one_hot_predictions(truth, 0.6, 15))
    calibration = next(r for r in result.rules if r.rule == "calibration")
    assert not calibration.passed and calibration.inputs["ece"] == pytest.approx(0.3, abs=0.06)


def test_a_passing_candidate_waits_for_approval_when_the_project_asks() -> None:
    truth = y(400, seed=16)
    result = verdict(GateRules(require_approval=True), truth, one_hot_predictions(truth, 0.9, 17),
                     one_hot_predictions(truth, 0.8, 18))
    assert result.outcome == AWAITING_APPROVAL


def test_bad_rules_fail_fast() -> None:
    with pytest.raises(ValueError, match="unknown gate settings: nonsense"):
        GateRules.from_dict({"nonsense": 1})
    with pytest.raises(ValueError, match="margin"):
        GateRules(non_inferiority_margin=-0.1)
    with pytest.raises(ValueError, match="critical_recall"):
        GateRules(critical_recall={"cat": 1.5})
