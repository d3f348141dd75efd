"""The promotion gate as rules: each rule sees recorded evidence, says pass or fail and why, and
the verdict follows from all of them. Pure code over numbers, so a verdict can be recomputed and
shown from what a cycle stored.

Evidence comes from candidate and production on the same golden-set items (``gate_evidence``):
a paired bootstrap interval of the accuracy difference with exact McNemar, the candidate's
per-class recall with intervals, and its ECE after temperature scaling.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from workers.ml.metrics import expected_calibration_error
from workers.ml.stats import DEFAULT_RESAMPLES, classification_intervals, paired_comparison

PROMOTED = "promoted"
REJECTED = "rejected"
AWAITING_APPROVAL = "awaiting_approval"


@dataclass(frozen=True)
class GateRules:
    """A project's gate. Defaults suit golden sets of a few hundred items."""

    min_golden_size: int = 100
    non_inferiority_margin: float = 0.01  # the difference's lower bound must stay above -margin
    require_superiority: bool = False  # also demand a significant improvement (McNemar)
    superiority_alpha: float = 0.05
    critical_recall: dict[str, float] = field(default_factory=dict)  # class name -> recall floor
    max_ece: float | None = None  # bound on the candidate's calibrated ECE
    first_model_needs_golden_set: bool = True
    require_approval: bool = False  # passing candidates wait for a person
    confidence: float = 0.95
    n_resamples: int = DEFAULT_RESAMPLES
    seed: int = 0

    def __post_init__(self) -> None:
        if self.min_golden_size < 1:
            raise ValueError("min_golden_size must be at least 1")
        if not 0 <= self.non_inferiority_margin <= 0.5:
            raise ValueError("non_inferiority_margin must be in [0, 0.5]")
        if not 0 < self.superiority_alpha < 0.5:
            raise ValueError("superiority_alpha must be in (0, 0.5)")
        for name, floor in self.critical_recall.items():
            if not 0 <= floor <= 1:
                raise ValueError(f"critical_recall[{name!r}] must be in [0, 1]")
        if self.max_ece is not None and not 0 <= self.max_ece <= 1:
            raise ValueError("max_ece must be in [0, 1]")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GateRules:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown gate settings: {', '.join(sorted(unknown))}")
        return cls(**values)


@dataclass(frozen=True)
class GateEvidence:
    n: int
    labels: list[str]
    first_model: bool
    candidate_accuracy: dict[str, float]  # estimate, lower, upper
    production_accuracy: dict[str, float] | None
    accuracy_difference: dict[str, float] | None  # candidate minus production
    mcnemar_p_value: float | None
    discordant: dict[str, int] | None
    candidate_recall: dict[str, dict[str, float] | None]
    candidate_ece: float


@dataclass(frozen=True)
class RuleResult:
    rule: str
    passed: bool
    inputs: dict[str, Any]
    detail: str


@dataclass(frozen=True)
class GateVerdict:
    outcome: str
    rules: list[RuleResult]
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "reason": self.reason, "rules": [asdict(r) for r in self.rules]}


def gate_evidence(
    y_true: np.ndarray, candidate_probs: np.ndarray, production_probs: np.ndarray | None,
    labels: list[str], *, rules: GateRules, candidate_ece: float | None = None,
) -> GateEvidence:
    """What the rules decide on, from both models' probabilities on the same golden-set items.
    ``candidate_ece`` is the calibrated ECE when the caller fitted a temperature."""
    y_true = np.asarray(y_true, dtype=np.int64)
    candidate_pred = np.asarray(candidate_probs).argmax(axis=1)
    options = {"n_resamples": rules.n_resamples, "confidence": rules.confidence, "seed": rules.seed}
    intervals = classification_intervals(y_true, candidate_pred, len(labels), **options)
    if candidate_ece is None:
        confidence = np.asarray(candidate_probs).max(axis=1)
        candidate_ece, _ = expected_calibration_error(confidence, candidate_pred == y_true)
    recall = {label: (i.as_dict() if i else None) for label, i in zip(labels, intervals.per_class_recall, strict=True)}
    paired = production_acc = discordant = None
    if production_probs is not None:
        production_pred = np.asarray(production_probs).argmax(axis=1)
        paired = paired_comparison(y_true, candidate_pred, production_pred, **options)
        production_acc = classification_intervals(y_true, production_pred, len(labels), **options).accuracy.as_dict()
        discordant = {"candidate_only_correct": paired.candidate_only_correct,
                      "production_only_correct": paired.production_only_correct}
    return GateEvidence(
        n=len(y_true), labels=list(labels), first_model=production_probs is None,
        candidate_accuracy=intervals.accuracy.as_dict(), production_accuracy=production_acc,
        accuracy_difference=paired.accuracy_difference.as_dict() if paired else None,
        mcnemar_p_value=paired.mcnemar_p_value if paired else None, discordant=discordant,
        candidate_recall=recall, candidate_ece=float(candidate_ece),
    )


def _golden_size(rules: GateRules, e: GateEvidence) -> RuleResult | None:
    if e.first_model and not rules.first_model_needs_golden_set:
        return None
    ok = e.n >= rules.min_golden_size
    return RuleResult("min_golden_size", ok, {"n": e.n, "minimum": rules.min_golden_size},
                      f"{e.n} golden-set items{'' if ok else f', fewer than the {rules.min_golden_size} required'}")


def _non_inferiority(rules: GateRules, e: GateEvidence) -> RuleResult | None:
    if e.accuracy_difference is None:
        return None
    lower = e.accuracy_difference["lower"]
    ok = lower > -rules.non_inferiority_margin
    return RuleResult(
        "non_inferiority", ok, {"difference": e.accuracy_difference, "margin": rules.non_inferiority_margin},
        f"accuracy difference {e.accuracy_difference['estimate']:+.3f}, {rules.confidence:.0%} interval "
        f"[{lower:+.3f}, {e.accuracy_difference['upper']:+.3f}]; lower bound "
        f"{'above' if ok else 'not above'} -{rules.non_inferiority_margin:.3f}",
    )


def _superiority(rules: GateRules, e: GateEvidence) -> RuleResult | None:
    if not rules.require_superiority or e.accuracy_difference is None or e.mcnemar_p_value is None:
        return None
    ok = e.accuracy_difference["estimate"] > 0 and e.mcnemar_p_value < rules.superiority_alpha
    return RuleResult(
        "superiority", ok, {"mcnemar_p_value": e.mcnemar_p_value, "alpha": rules.superiority_alpha,
                            "discordant": e.discordant},
        f"McNemar exact p = {e.mcnemar_p_value:.4f} on {e.discordant}; "
        f"{'significant improvement' if ok else 'no significant improvement'} at alpha {rules.superiority_alpha}",
    )


def _critical_recall(rules: GateRules, e: GateEvidence) -> list[RuleResult]:
    results = []
    for name, floor in sorted(rules.critical_recall.items()):
        recall = e.candidate_recall.get(name)
        if recall is None:
            results.append(RuleResult(f"recall_floor:{name}", False, {"floor": floor, "recall": None},
                                      f"no golden-set item of class {name!r}: its recall cannot be checked"))
            continue
        ok = recall["estimate"] >= floor
        results.append(RuleResult(
            f"recall_floor:{name}", ok, {"floor": floor, "recall": recall},
            f"recall of {name!r} {recall['estimate']:.3f} [{recall['lower']:.3f}, {recall['upper']:.3f}] "
            f"{'meets' if ok else 'is below'} the floor {floor:.3f}",
        ))
    return results


def _calibration(rules: GateRules, e: GateEvidence) -> RuleResult | None:
    if rules.max_ece is None:
        return None
    ok = e.candidate_ece <= rules.max_ece
    return RuleResult("calibration", ok, {"ece": e.candidate_ece, "max_ece": rules.max_ece},
                      f"ECE {e.candidate_ece:.3f} {'within' if ok else 'over'} the bound {rules.max_ece:.3f}")


def evaluate_gate(rules: GateRules, evidence: GateEvidence) -> GateVerdict:
    """Every rule's result, and the outcome: rejected if any fails, else promoted (or awaiting
    approval when the project wants a person to decide)."""
    results = [r for r in (_golden_size(rules, evidence), _non_inferiority(rules, evidence),
                           _superiority(rules, evidence), _calibration(rules, evidence)) if r is not None]
    results.extend(_critical_recall(rules, evidence))
    failed = [r for r in results if not r.passed]
    if failed:
        return GateVerdict(REJECTED, results, "; ".join(f"{r.rule}: {r.detail}" for r in failed))
    if rules.require_approval:
        return GateVerdict(AWAITING_APPROVAL, results, "every rule passed; the project asks a person to approve")
    return GateVerdict(PROMOTED, results, "every rule passed")
