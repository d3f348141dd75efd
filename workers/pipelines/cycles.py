"""A retraining cycle's model work: train the candidate, evaluate candidate and production.

The cycle's state machine, its records and the promotion gate are hitl's services
(``hitl.services.cycles``); this module runs the models between their steps.
"""

from __future__ import annotations

import logging
import traceback
from dataclasses import asdict

import numpy as np
import torch

from hitl.errors import TRANSIENT_DB_ERRORS
from hitl.locks import exclusive
from hitl.media import media_path, model_directory
from hitl.mlspec import gate_rules_clean
from hitl.models import CycleStatus, EvaluationSet, ModelVersion, RetrainingCycle, Split
from hitl.services.cycles import (
    LabeledSet,
    SnapshotRecord,
    TrainingPlan,
    cycle_candidate_record,
    cycle_decide,
    cycle_fail,
    cycle_progress_record,
    cycle_training_start,
    labeled_set,
)
from hitl.services.golden import golden_eval_set
from hitl.services.projects import initial_weights_file
from workers.ml.architectures import build_model, input_spec_for
from workers.ml.checkpoint import ArtifactFile, CheckpointMeta, save_checkpoint
from workers.ml.gate import (
    AWAITING_APPROVAL,
    PROMOTED,
    REJECTED,
    GateRules,
    GateVerdict,
    RuleResult,
    evaluate_gate,
    gate_evidence,
)
from workers.ml.inference import predict_proba
from workers.ml.metrics import classification_metrics
from workers.ml.stats import classification_intervals, paired_comparison
from workers.ml.training import EpochStats, TrainConfig, fit
from workers.pipelines.versions import item_images, load_version

log = logging.getLogger(__name__)


def _progress(cycle_id: int, stats: EpochStats) -> bool:
    return cycle_progress_record(cycle_id=cycle_id, epoch=stats.epoch, epochs=stats.epochs,
                                 train_loss=stats.train_loss, train_accuracy=stats.train_accuracy)


def _train(plan: TrainingPlan) -> tuple[str, list[ArtifactFile], list[EpochStats]]:
    labels = list(plan.project.labels)
    spec = input_spec_for(plan.architecture)
    config = TrainConfig.from_dict(plan.config)
    # the project's initial weights are checked again here: the file may have changed since
    start_from = plan.start_from or (initial_weights_file(plan.initial_weights) if plan.initial_weights else None)
    model = build_model(plan.architecture, len(labels), weights_path=start_from)
    images = item_images(plan.data.image_paths, spec)
    targets = torch.tensor(plan.data.targets, dtype=torch.int64)
    history = fit(model, images, targets, spec, config, on_epoch=lambda s: _progress(plan.cycle_id, s))
    directory = model_directory(plan.project.slug, plan.version_name)
    metrics = {"train_loss": history[-1].train_loss, "train_accuracy": history[-1].train_accuracy,
               "epochs_run": len(history)}
    meta = CheckpointMeta(plan.architecture, labels, spec, config.to_dict(), metrics)
    files = save_checkpoint(model, meta, media_path(directory))
    return directory, files, history


def cycle_train(*, cycle_id: int) -> None:
    """Train the cycle's candidate. Safe to run twice or in parallel: one worker trains,
    a second returns at once; a redelivered task after a worker died starts a new attempt."""
    with exclusive(f"cycle:{cycle_id}") as mine:
        if not mine:
            log.info("cycle %s is being worked on by another worker", cycle_id)
            return
        plan = cycle_training_start(cycle_id=cycle_id)
        if plan is None:
            return
        try:
            directory, files, history = _train(plan)
        except TRANSIENT_DB_ERRORS:
            raise  # the task retries; the next attempt starts over
        except Exception as exc:
            log.exception("cycle %s training failed", cycle_id)
            cycle_fail(cycle_id=cycle_id, error=f"training failed: {exc}\n{traceback.format_exc(limit=5)}")
            return
        cycle_candidate_record(plan=plan, directory=directory, files=files, epochs_run=len(history),
                               train_loss=history[-1].train_loss)


def _probabilities(version: ModelVersion, data: LabeledSet) -> np.ndarray:
    model, meta = load_version(version)
    return predict_proba(model, item_images(data.image_paths, meta.input_spec), meta.input_spec)


def _evaluate_version(probs: np.ndarray, data: LabeledSet, labels: list[str], rules: GateRules,
                      production_probs: np.ndarray | None = None) -> tuple[dict, dict]:
    """Metrics and bootstrap intervals of one model on one set; for a candidate, also the paired
    comparison with production on the same items."""
    y_true = np.array(data.targets, dtype=np.int64)
    predicted = probs.argmax(axis=1)
    options = {"n_resamples": rules.n_resamples, "confidence": rules.confidence, "seed": rules.seed}
    found = classification_intervals(y_true, predicted, len(labels), **options)
    intervals: dict = {
        "confidence": found.confidence, "n_resamples": found.n_resamples, "seed": found.seed,
        "method": "percentile bootstrap", "accuracy": found.accuracy.as_dict(), "macro_f1": found.macro_f1.as_dict(),
        "per_class_recall": {label: (i.as_dict() if i else None)
                             for label, i in zip(labels, found.per_class_recall, strict=True)},
    }
    if production_probs is not None:
        paired = paired_comparison(y_true, predicted, production_probs.argmax(axis=1), **options)
        intervals["versus_production"] = {
            "accuracy_difference": paired.accuracy_difference.as_dict(), "mcnemar_p_value": paired.mcnemar_p_value,
            "candidate_only_correct": paired.candidate_only_correct,
            "production_only_correct": paired.production_only_correct,
        }
    return classification_metrics(y_true, probs, labels), intervals


def _evaluate_set(eval_set: str, data: LabeledSet, versions: dict[str, ModelVersion], labels: list[str],
                  rules: GateRules) -> tuple[list[SnapshotRecord], dict[str, np.ndarray]]:
    if not len(data):
        return [], {}
    probs = {role: _probabilities(version, data) for role, version in versions.items()}
    records = []
    for role, version in versions.items():
        against = probs.get("production") if role == "candidate" else None
        metrics, intervals = _evaluate_version(probs[role], data, labels, rules, against)
        records.append(SnapshotRecord(eval_set, role, version, data, metrics, intervals))
    return records, probs


def _verdict(rules: GateRules, data: LabeledSet, probs: dict[str, np.ndarray], labels: list[str],
             first_model: bool) -> GateVerdict:
    """The gate on the golden set; with no golden-set item at all only a first model that the
    project lets through without one passes."""
    if len(data):
        evidence = gate_evidence(np.array(data.targets), probs["candidate"], probs.get("production"), labels,
                                 rules=rules)
        return evaluate_gate(rules, evidence)
    if first_model and not rules.first_model_needs_golden_set:
        outcome = AWAITING_APPROVAL if rules.require_approval else PROMOTED
        return GateVerdict(outcome, [], "first model: the project lets it through without a golden set")
    size = RuleResult("min_golden_size", False, {"n": 0, "minimum": rules.min_golden_size},
                      "no labeled golden-set items: propose a golden set, label it and freeze a version")
    return GateVerdict(REJECTED, [size], f"min_golden_size: {size.detail}")


def cycle_evaluate(*, cycle_id: int) -> None:
    """Evaluate candidate and production on the newest golden-set version (the gate decides on
    it) and on the hard cases (reported apart), store the snapshots, decide. Safe to run twice:
    snapshots are unique per cycle, model and set, decisions made once."""
    with exclusive(f"cycle:{cycle_id}") as mine:
        if not mine:
            return
        cycle = RetrainingCycle.objects.select_related("project", "candidate_version", "base_version").get(pk=cycle_id)
        if cycle.status != CycleStatus.EVALUATING:
            return
        project = cycle.project
        versions = {"candidate": cycle.candidate_version}
        if cycle.base_version is not None:
            versions["production"] = cycle.base_version
        try:
            rules = GateRules.from_dict(gate_rules_clean(project.gate_rules))
            labels = list(project.labels)
            golden, gold = golden_eval_set(project)
            records, probs = _evaluate_set(EvaluationSet.GOLDEN, gold, versions, labels, rules)
            hard_records, _ = _evaluate_set(EvaluationSet.HARD_CASES, labeled_set(project, Split.HOLDOUT),
                                            versions, labels, rules)
            verdict = _verdict(rules, gold, probs, labels, first_model=cycle.base_version is None)
            cycle_decide(cycle_id=cycle_id, versions=versions, records=records + hard_records, golden=golden,
                         verdict=verdict.as_dict(), rules=asdict(rules))
        except TRANSIENT_DB_ERRORS:
            raise
        except Exception as exc:
            log.exception("cycle %s evaluation failed", cycle_id)
            cycle_fail(cycle_id=cycle_id, error=f"evaluation failed: {exc}")
