"""A retraining cycle's model work: train the candidate, evaluate candidate and production.

The cycle's state machine, its records and the promotion gate are hitl's services
(``hitl.services.cycles``); this module runs the models between their steps.
"""

from __future__ import annotations

import json
import logging
import shutil
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings
from torch import nn

from hitl.errors import TRANSIENT_DB_ERRORS
from hitl.locks import exclusive
from hitl.media import media_path, model_directory
from hitl.mlspec import PRETRAINED_BY_DEFAULT, gate_rules_clean
from hitl.models import CycleStatus, EvaluationSet, ModelVersion, RetrainingCycle, Split
from hitl.services.cycles import (
    LabeledSet,
    SnapshotRecord,
    TrainingPlan,
    UnlabeledSet,
    cycle_candidate_record,
    cycle_decide,
    cycle_fail,
    cycle_progress_record,
    cycle_training_start,
    labeled_set,
    unlabeled_train_set,
)
from hitl.services.golden import golden_eval_set
from hitl.services.projects import initial_weights_file
from workers.ml.architectures import InputSpec, build_model, input_spec_for
from workers.ml.calibration import calibrate
from workers.ml.checkpoint import (
    ArtifactFile,
    CheckpointMeta,
    load_training_state,
    save_checkpoint,
    save_training_state,
)
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
from workers.ml.inference import predict_logits, predict_proba
from workers.ml.metrics import classification_metrics
from workers.ml.stats import classification_intervals, paired_comparison
from workers.ml.training import EpochStats, TrainConfig, fit
from workers.pipelines.versions import item_images, load_version, loader_workers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainedCandidate:
    directory: str
    files: list[ArtifactFile]
    history: list[EpochStats]
    calibration: dict[str, Any]
    resumed_from_epoch: int
    semi_supervised: dict[str, Any] | None = None  # what the unlabeled pool gave, when used

    @property
    def temperature(self) -> float:
        return float(self.calibration["temperature"])


def resume_state_path(project_slug: str, cycle_number: int) -> Path:
    """Where a cycle's training state is saved after each epoch (one file, replaced each time)."""
    return media_path(f"models/{project_slug}/cycles/{cycle_number}/resume") / "state.pt"


def _resume_key(plan: TrainingPlan, pool: UnlabeledSet | None) -> dict[str, Any]:
    """What a saved state must have been trained from to be resumed: the same base, architecture,
    config, exact label manifest and unlabeled pool (a label added or changed since, or a new
    image, makes the attempt start over)."""
    return {"architecture": plan.architecture, "base": plan.base.pk if plan.base else None,
            "initial_weights": plan.initial_weights, "config": plan.config,
            "labels_sha256": plan.data.digest, "unlabeled_sha256": pool.digest if pool is not None else None}


def _resumable_state(plan: TrainingPlan, pool: UnlabeledSet | None, path: Path) -> dict[str, Any] | None:
    state = load_training_state(path)
    if state is None:
        return None
    if json.loads(state.get("resume_key", "null")) != _resume_key(plan, pool):
        log.info("cycle %s: the saved training state is for other labels or settings; starting over",
                 plan.cycle_id)
        return None
    return state


def _fit_temperature(model: nn.Module, spec: InputSpec, data: LabeledSet) -> dict[str, Any]:
    """Temperature scaling on held-out human labels; T = 1 with the reason when they are too few."""
    base = {"labels": len(data), "labels_sha256": data.digest, "min_labels": settings.HITL_MIN_CALIBRATION_LABELS}
    if len(data) < settings.HITL_MIN_CALIBRATION_LABELS:
        return {**base, "temperature": 1.0, "n": len(data), "fitted": False,
                "reason": f"only {len(data)} held-out human labels; fitting a temperature needs at least "
                          f"{settings.HITL_MIN_CALIBRATION_LABELS} (HITL_MIN_CALIBRATION_LABELS)"}
    logits = predict_logits(model, item_images(data.image_paths, spec), spec).numpy()
    return {**base, **calibrate(logits, np.array(data.targets)).as_dict(), "fitted": True}


def _train(plan: TrainingPlan) -> TrainedCandidate:
    labels = list(plan.project.labels)
    spec = input_spec_for(plan.architecture)
    config = TrainConfig.from_dict(plan.config)
    # the project's initial weights are checked again here: the file may have changed since
    start_from = plan.start_from or (initial_weights_file(plan.initial_weights) if plan.initial_weights else None)
    # a first model with no weights given fine-tunes the architecture's offline ImageNet weights
    pretrained = start_from is None and plan.architecture in PRETRAINED_BY_DEFAULT
    model = build_model(plan.architecture, len(labels), weights_path=start_from, pretrained=pretrained)
    data = item_images(plan.data.image_paths, spec, targets=plan.data.targets)
    pool = _unlabeled_pool(plan, config)
    state_path = resume_state_path(plan.project.slug, plan.cycle_number)
    resume = _resumable_state(plan, pool, state_path)
    resumed_from = resume["epoch"] if resume else 0
    # which attempt ran each epoch: a resumed attempt runs only the epochs after the saved one
    epoch_attempts: list[int] = list(resume["epoch_attempts"]) if resume else []
    key = json.dumps(_resume_key(plan, pool))

    def save(state: dict[str, Any]) -> None:
        epoch_attempts.append(plan.attempt)
        save_training_state({**state, "resume_key": key, "epoch_attempts": list(epoch_attempts),
                             "label_ids": list(plan.data.label_ids)}, state_path)

    def progress(stats: EpochStats) -> bool:
        return cycle_progress_record(
            cycle_id=plan.cycle_id, epoch=stats.epoch, epochs=stats.epochs, train_loss=stats.train_loss,
            train_accuracy=stats.train_accuracy, attempt=plan.attempt, resumed_from_epoch=resumed_from)

    history = fit(model, data, None, spec, config, on_epoch=progress, resume=resume, on_state=save,
                  num_workers=loader_workers(), unlabeled=item_images(pool.image_paths, spec) if pool else None)
    del data
    semi = None if pool is None else {
        "method": config.semi_supervised, "confidence_threshold": config.confidence_threshold,
        "unlabeled_pool": len(pool), "unlabeled_sha256": pool.digest, "pseudo_labeled": history[-1].pseudo_labeled,
    }
    calibration = _fit_temperature(model, spec, plan.calibration)
    directory = model_directory(plan.project.slug, plan.version_name)
    metrics = {"train_loss": history[-1].train_loss, "train_accuracy": history[-1].train_accuracy,
               "epochs_run": len(history), "epoch_attempts": epoch_attempts, "resumed_from_epoch": resumed_from,
               "semi_supervised": semi}
    meta = CheckpointMeta(plan.architecture, labels, spec, config.to_dict(), metrics,
                          temperature=calibration["temperature"])
    files = save_checkpoint(model, meta, media_path(directory))
    return TrainedCandidate(directory, files, history, calibration, resumed_from, semi)


def _unlabeled_pool(plan: TrainingPlan, config: TrainConfig) -> UnlabeledSet | None:
    """The unlabeled train-split images a semi-supervised config learns from (at most the
    project's selection_pool_limit, drawn per cycle), or None: off, or no such image."""
    if config.semi_supervised == "off":
        return None
    pool = unlabeled_train_set(plan.project, limit=plan.project.selection_pool_limit, seed=plan.cycle_number)
    return pool if len(pool) else None


def cycle_train(*, cycle_id: int) -> None:
    """Train the cycle's candidate. Safe to run twice or in parallel: one worker trains,
    a second returns at once; a redelivered task after a worker died starts a new attempt, which
    resumes from the last epoch the dead one saved (same labels and settings) or starts over."""
    with exclusive(f"cycle:{cycle_id}") as mine:
        if not mine:
            log.info("cycle %s is being worked on by another worker", cycle_id)
            return
        plan = cycle_training_start(cycle_id=cycle_id)
        if plan is None:
            return
        try:
            trained = _train(plan)
        except TRANSIENT_DB_ERRORS:
            raise  # the task retries; the next attempt resumes from the saved state
        except Exception as exc:
            log.exception("cycle %s training failed", cycle_id)
            cycle_fail(cycle_id=cycle_id, error=f"training failed: {exc}\n{traceback.format_exc(limit=5)}")
        else:
            cycle_candidate_record(plan=plan, directory=trained.directory, files=trained.files,
                                   epochs_run=len(trained.history), train_loss=trained.history[-1].train_loss,
                                   temperature=trained.temperature, calibration=trained.calibration,
                                   resumed_from_epoch=trained.resumed_from_epoch,
                                   semi_supervised=trained.semi_supervised)
        # recorded, cancelled or failed: the cycle trains no more, its training state can go
        shutil.rmtree(resume_state_path(plan.project.slug, plan.cycle_number).parent, ignore_errors=True)


def _probabilities(version: ModelVersion, data: LabeledSet) -> np.ndarray:
    """The version's calibrated probabilities (its fitted temperature applied): what it would
    report in production, so the gate's ECE is the deployed model's."""
    model, meta = load_version(version)
    return predict_proba(model, item_images(data.image_paths, meta.input_spec), meta.input_spec,
                         temperature=version.temperature, num_workers=loader_workers())


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
