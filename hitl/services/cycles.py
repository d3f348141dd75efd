"""Retraining cycles: a state machine that trains a candidate from the production model on the
human labels of the training split, evaluates candidate and production on the same held-out
human-labeled set, and promotes the candidate only if the gate passes.

    pending -> training -> evaluating -> succeeded (promoted | rejected)
       any active state -> failed | cancelled

This module records and decides; the model work (training, evaluation) is done by
``workers.pipelines.cycles``, which calls the services here at each step.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from hitl.errors import Conflict
from hitl.mlspec import train_config_clean
from hitl.models import (
    CycleDecision,
    CycleStatus,
    EvaluationSnapshot,
    Label,
    LabelStatus,
    ModelStage,
    ModelVersion,
    Project,
    RetrainingCycle,
    Split,
)
from hitl.selectors import model_weights_file, production_version
from hitl.services.projects import (
    ArtifactFile,
    ensure_unique_version_name,
    model_version_create,
    model_version_promote,
)
from hitl.services.queue import enqueue
from hitl.services.trust import trust_record

ACTIVE = (CycleStatus.PENDING, CycleStatus.TRAINING, CycleStatus.EVALUATING)
MAX_TRAINING_ATTEMPTS = 3
TRANSITIONS: dict[str, set[str]] = {
    CycleStatus.PENDING: {CycleStatus.TRAINING, CycleStatus.FAILED, CycleStatus.CANCELLED},
    # training -> training: a redelivered task restarts the attempt of a worker that died
    CycleStatus.TRAINING: {CycleStatus.TRAINING, CycleStatus.EVALUATING, CycleStatus.FAILED, CycleStatus.CANCELLED},
    CycleStatus.EVALUATING: {CycleStatus.SUCCEEDED, CycleStatus.FAILED, CycleStatus.CANCELLED},
}


def _transition(cycle: RetrainingCycle, status: str, **fields: object) -> None:
    if status not in TRANSITIONS.get(cycle.status, set()):
        raise Conflict(f"cycle {cycle.number} cannot go from {cycle.status} to {status}")
    cycle.status = status
    for name, value in fields.items():
        setattr(cycle, name, value)
    cycle.heartbeat_at = timezone.now()
    if status in (CycleStatus.SUCCEEDED, CycleStatus.FAILED, CycleStatus.CANCELLED):
        cycle.finished_at = cycle.heartbeat_at
    cycle.save()


@transaction.atomic
def cycle_request(*, project: Project, requested_by: str, train_config: dict | None = None) -> RetrainingCycle:
    """Queue a retraining cycle. One active cycle per project at a time."""
    Project.objects.select_for_update().get(pk=project.pk)
    active = RetrainingCycle.objects.filter(project=project, status__in=ACTIVE).first()
    if active is not None:
        raise Conflict(f"cycle {active.number} is still {active.status}; wait for it or cancel it")
    number = (RetrainingCycle.objects.filter(project=project).aggregate(n=Max("number"))["n"] or 0) + 1
    if train_config is not None:
        train_config_clean(train_config)  # refuses a non-object before it is merged below
    config = train_config_clean({"seed": number, **project.train_config, **(train_config or {})})
    cycle = RetrainingCycle.objects.create(
        project=project, number=number, train_config=config, requested_by=requested_by,
    )
    enqueue("workers.tasks.retrain", cycle.id)
    return cycle


@transaction.atomic
def cycle_cancel(*, cycle_id: int, actor: str) -> RetrainingCycle:
    cycle = RetrainingCycle.objects.select_for_update().get(pk=cycle_id)
    if cycle.is_finished:
        raise Conflict(f"cycle {cycle.number} already {cycle.status}")
    _transition(cycle, CycleStatus.CANCELLED, decision_reason=f"cancelled by {actor}")
    return cycle


@transaction.atomic
def cycle_fail(*, cycle_id: int, error: str) -> None:
    cycle = RetrainingCycle.objects.select_for_update().get(pk=cycle_id)
    if not cycle.is_finished:
        _transition(cycle, CycleStatus.FAILED, error=error[:10_000])


@dataclass(frozen=True)
class LabeledSet:
    label_ids: list[int]
    image_paths: list[str]
    targets: list[int]
    digest: str

    def __len__(self) -> int:
        return len(self.label_ids)


def labeled_set_digest(rows: Sequence[tuple[int, str, str]]) -> str:
    """A digest of (label id, item sha256, value) rows: names an exact labeled set."""
    digest = hashlib.sha256()
    for label_id, sha256, value in sorted(rows):
        digest.update(f"{label_id}:{sha256}:{value}\n".encode())
    return digest.hexdigest()


def calibration_set(project: Project) -> LabeledSet:
    """The labels a candidate's temperature is fitted on: held-out human labels, which no model
    of the project is trained on. Golden-set items, once the project has them, belong to
    evaluation alone and are to be left out here as well."""
    return labeled_set(project, Split.HOLDOUT)


def labeled_set(project: Project, split: str) -> LabeledSet:
    """Current human labels on the project's items of one split, in label-id order."""
    rows = list(
        Label.objects.filter(item__project=project, item__split=split, status=LabelStatus.CURRENT)
        .order_by("id").values_list("id", "item__image", "value", "item__sha256")
    )
    index = project.label_index
    return LabeledSet(
        label_ids=[r[0] for r in rows], image_paths=[r[1] for r in rows],
        targets=[index[r[2]] for r in rows],
        digest=labeled_set_digest([(r[0], r[3], r[2]) for r in rows]),
    )


@dataclass(frozen=True)
class TrainingPlan:
    cycle_id: int
    project: Project
    base: ModelVersion | None
    architecture: str
    start_from: Path | None  # the production model's weights the candidate starts from
    initial_weights: str  # else the project's initial weights (projects.initial_weights_file)
    version_name: str
    config: dict
    data: LabeledSet  # the training label manifest: a resumed attempt must train on the same one
    calibration: LabeledSet  # held-out labels the temperature is fitted on
    cycle_number: int
    attempt: int


@transaction.atomic
def cycle_training_start(*, cycle_id: int) -> TrainingPlan | None:
    """Start (or restart, after a worker died) a cycle's training: what to train, from what, on
    which labels. None when there is nothing to train (finished, cancelled, no labels, gave up).

    Every start counts as an attempt; the pipeline resumes the training state a dead attempt saved
    when it was for the same base model, config and label manifest (``TrainingPlan.data``)."""
    cycle = RetrainingCycle.objects.select_for_update().select_related("project").get(pk=cycle_id)
    if cycle.status not in (CycleStatus.PENDING, CycleStatus.TRAINING):
        return None
    if cycle.attempts >= MAX_TRAINING_ATTEMPTS:
        _transition(cycle, CycleStatus.FAILED, error=f"gave up after {cycle.attempts} attempts: the worker died "
                                                     "or hit its time limit each time (see the worker logs)")
        return None
    project = cycle.project
    base = production_version(project.id)
    data = labeled_set(project, Split.TRAIN)
    _transition(cycle, CycleStatus.TRAINING, base_version=base, attempts=cycle.attempts + 1,
                started_at=timezone.now(), progress={"stage": "loading", "labels": len(data)})
    if len(data) == 0:
        _transition(cycle, CycleStatus.FAILED, error="no human labels on training-split items yet: label some items first")
        return None
    if base is not None and base.architecture == project.architecture:
        architecture, start_from, initial = base.architecture, model_weights_file(base)[0], ""
    else:  # first model, or the project moved to another architecture
        architecture, start_from, initial = project.architecture, None, project.initial_weights
    return TrainingPlan(cycle.id, project, base, architecture, start_from, initial,
                        ensure_unique_version_name(project=project, wanted=f"v{cycle.number}"),
                        dict(cycle.train_config), data, calibration_set(project), cycle.number,
                        cycle.attempts)


def cycle_progress_record(*, cycle_id: int, epoch: int, epochs: int, train_loss: float,
                          train_accuracy: float, attempt: int = 1, resumed_from_epoch: int = 0) -> bool:
    """Record an epoch; returns False when the cycle was cancelled meanwhile (stops training)."""
    RetrainingCycle.objects.filter(pk=cycle_id).update(heartbeat_at=timezone.now(), progress={
        "stage": "training", "epoch": epoch, "epochs": epochs,
        "train_loss": round(train_loss, 4), "train_accuracy": round(train_accuracy, 4),
        "attempt": attempt, "resumed_from_epoch": resumed_from_epoch,
    })
    return RetrainingCycle.objects.filter(pk=cycle_id, status=CycleStatus.TRAINING).exists()


@transaction.atomic
def cycle_candidate_record(*, plan: TrainingPlan, directory: str, files: Sequence[ArtifactFile],
                           epochs_run: int, train_loss: float, temperature: float = 1.0,
                           calibration: dict | None = None, resumed_from_epoch: int = 0) -> None:
    """Record the trained candidate with its temperature and hand the cycle to evaluation
    (unless it was cancelled)."""
    cycle = RetrainingCycle.objects.select_for_update().get(pk=plan.cycle_id)
    if cycle.status != CycleStatus.TRAINING:
        return  # cancelled while training: the candidate is not recorded
    version = model_version_create(
        project=plan.project, name=plan.version_name, architecture=plan.architecture,
        labels=list(plan.project.labels), parent=plan.base, directory=directory, files=files,
    )
    version.temperature, version.calibration = temperature, calibration or {}
    version.save(update_fields=["temperature", "calibration"])
    version.training_labels.set(plan.data.label_ids)
    _transition(cycle, CycleStatus.EVALUATING, candidate_version=version, progress={
        "stage": "evaluating", "epochs_run": epochs_run, "train_loss": round(train_loss, 4),
    })
    trust_record(project_id=plan.project.id, kind="model_trained", actor=f"cycle {cycle.number}", payload={
        "model_version": version.name, "parent": plan.base.name if plan.base else None,
        "training_labels": len(plan.data), "training_set_sha256": plan.data.digest,
        "artifacts": {f.name: f.sha256 for f in files}, "train_config": plan.config,
        "temperature": temperature, "calibration_labels": (calibration or {}).get("n", 0),
        "calibration_set_sha256": plan.calibration.digest, "attempt": plan.attempt,
        "resumed_from_epoch": resumed_from_epoch,
    })
    enqueue("workers.tasks.evaluate", cycle.id)


def promotion_decision(
    *, candidate_accuracy: float | None, production_accuracy: float | None, has_production: bool,
    n_eval: int, min_eval_labels: int, min_delta: float,
) -> tuple[bool, str]:
    """The first promotion gate: promote only a candidate that is not worse than production."""
    if not has_production:
        return True, "first model of the project: nothing to compare against"
    if n_eval < max(1, min_eval_labels):
        return False, f"only {n_eval} held-out human labels; the gate needs at least {min_eval_labels}"
    assert candidate_accuracy is not None and production_accuracy is not None
    if candidate_accuracy >= production_accuracy + min_delta:
        return True, (f"candidate accuracy {candidate_accuracy:.4f} >= production {production_accuracy:.4f}"
                      f" + {min_delta:g} on {n_eval} held-out labels")
    return False, (f"candidate accuracy {candidate_accuracy:.4f} < production {production_accuracy:.4f}"
                   f" + {min_delta:g} on {n_eval} held-out labels")


@transaction.atomic
def cycle_decide(*, cycle_id: int, versions: dict[str, ModelVersion], data: LabeledSet,
                 results: dict[str, dict]) -> None:
    """Store each version's evaluation snapshot and apply the promotion gate, once per cycle."""
    cycle = RetrainingCycle.objects.select_for_update().select_related("project").get(pk=cycle_id)
    if cycle.status != CycleStatus.EVALUATING:
        return
    project = cycle.project
    for role, metrics in results.items():
        snapshot, _ = EvaluationSnapshot.objects.get_or_create(
            cycle=cycle, model_version=versions[role],
            defaults={"role": role, "label_ids": data.label_ids, "eval_set_sha256": data.digest,
                      "n_items": len(data), "accuracy": metrics["accuracy"], "metrics": metrics},
        )
        trust_record(project_id=project.id, kind="model_evaluated", actor=f"cycle {cycle.number}", payload={
            "model_version": versions[role].name, "role": role, "snapshot": snapshot.id,
            "eval_set_sha256": data.digest, "n_items": len(data), "accuracy": metrics["accuracy"],
            "macro_f1": metrics["macro_f1"],
        })
    promote, reason = promotion_decision(
        candidate_accuracy=results.get("candidate", {}).get("accuracy"),
        production_accuracy=results.get("production", {}).get("accuracy"),
        has_production="production" in versions, n_eval=len(data),
        min_eval_labels=project.min_eval_labels, min_delta=project.promotion_min_delta,
    )
    current = production_version(project.id)
    if promote and current is not None and current.pk != getattr(versions.get("production"), "pk", None):
        promote, reason = False, (f"production changed to {current.name} while this cycle ran; the candidate was "
                                  "not compared with it (start a new cycle)")
    candidate = versions["candidate"]
    if promote:
        model_version_promote(model_version_id=candidate.id, actor=f"promotion gate (cycle {cycle.number})", reason=reason)
        enqueue("workers.tasks.predict_items", candidate.id)
    else:
        ModelVersion.objects.filter(pk=candidate.id).update(stage=ModelStage.ARCHIVED)
        trust_record(project_id=project.id, kind="model_rejected", actor=f"promotion gate (cycle {cycle.number})",
                     payload={"model_version": candidate.name, "reason": reason})
    _transition(cycle, CycleStatus.SUCCEEDED, decision=CycleDecision.PROMOTED if promote else CycleDecision.REJECTED,
                decision_reason=reason, progress={"stage": "done"})
