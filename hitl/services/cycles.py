"""Retraining cycles: a state machine that trains a candidate from the production model on the
human labels of the training split, evaluates candidate and production on the same held-out
human-labeled golden set, and promotes the candidate only if the gate's rules pass (and, when
the project asks for it, a person approves).

    pending -> training -> evaluating -> succeeded (promoted | rejected)
                                      -> awaiting_approval -> succeeded (approved | rejected)
       any active state -> failed | cancelled

This module records and decides; the model work (training, evaluation) is done by
``workers.pipelines.cycles``, which calls the services here at each step.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from hitl.errors import Conflict, InvalidInput
from hitl.mlspec import train_config_clean
from hitl.models import (
    CycleDecision,
    CycleStatus,
    EvaluationSet,
    EvaluationSnapshot,
    GoldenSet,
    Item,
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

ACTIVE = (CycleStatus.PENDING, CycleStatus.TRAINING, CycleStatus.EVALUATING, CycleStatus.AWAITING_APPROVAL)
MAX_TRAINING_ATTEMPTS = 3
TRANSITIONS: dict[str, set[str]] = {
    CycleStatus.PENDING: {CycleStatus.TRAINING, CycleStatus.FAILED, CycleStatus.CANCELLED},
    # training -> training: a redelivered task restarts the attempt of a worker that died
    CycleStatus.TRAINING: {CycleStatus.TRAINING, CycleStatus.EVALUATING, CycleStatus.FAILED, CycleStatus.CANCELLED},
    CycleStatus.EVALUATING: {CycleStatus.SUCCEEDED, CycleStatus.AWAITING_APPROVAL, CycleStatus.FAILED,
                             CycleStatus.CANCELLED},
    CycleStatus.AWAITING_APPROVAL: {CycleStatus.SUCCEEDED, CycleStatus.FAILED, CycleStatus.CANCELLED},
}


def _transition(cycle: RetrainingCycle, status: str, **fields: object) -> None:
    if status not in TRANSITIONS.get(cycle.status, set()):
        raise Conflict(f"cycle {cycle.number} cannot go from {cycle.status} to {status}")
    cycle.status = status
    if "progress" in fields:  # the per-epoch history outlives the stage (a resumed attempt goes on after it)
        fields["progress"] = {"history": cycle.progress.get("history", []), **fields["progress"]}
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
    if cycle.status == CycleStatus.AWAITING_APPROVAL:  # its candidate will never be decided on
        ModelVersion.objects.filter(pk=cycle.candidate_version_id).update(stage=ModelStage.ARCHIVED)
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
    of the project is trained on, golden-set items left out (labeled_set never holds them): they
    belong to evaluation alone."""
    return labeled_set(project, Split.HOLDOUT)


def labeled_set(project: Project, split: str) -> LabeledSet:
    """Current human labels on the project's items of one split, in label-id order. Golden-set
    items are never in it: they are neither trained on nor counted as hard cases."""
    rows = list(
        Label.objects.filter(project=project, item__split=split, status=LabelStatus.CURRENT)
        .exclude(item__golden__isnull=False).order_by("id").values_list("id", "item__image", "value", "item__sha256")
    )
    index = project.label_index
    return LabeledSet(
        label_ids=[r[0] for r in rows], image_paths=[r[1] for r in rows],
        targets=[index[r[2]] for r in rows],
        digest=labeled_set_digest([(r[0], r[3], r[2]) for r in rows]),
    )


@dataclass(frozen=True)
class UnlabeledSet:
    image_paths: list[str]
    digest: str  # of the items' sha256s: names the exact pool

    def __len__(self) -> int:
        return len(self.image_paths)


def unlabeled_train_set(project: Project, *, limit: int, seed: int) -> UnlabeledSet:
    """The train-split items no human has labeled (no current label), golden-set items left out:
    what semi-supervised training may learn from. Held-out items never are. At most ``limit``
    items, a ``seed``ed random sample when there are more. Their pseudo-labels stay inside the
    training run: nothing here or there writes a Label."""
    rows = list(
        Item.objects.filter(project=project, split=Split.TRAIN, golden__isnull=True)
        .exclude(labels__status=LabelStatus.CURRENT).order_by("id").values_list("sha256", "image")
    )
    if len(rows) > limit:
        rows = sorted(random.Random(seed).sample(rows, limit))
    digest = hashlib.sha256("".join(f"{sha}\n" for sha, _ in rows).encode()).hexdigest()
    return UnlabeledSet(image_paths=[image for _, image in rows], digest=digest)


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
    """Record an epoch, and append it to the per-epoch history the cycle page draws (an attempt
    that starts over replaces the epochs from its own on); returns False when the cycle was
    cancelled meanwhile (stops training). Only the training worker writes progress."""
    now = timezone.now()
    previous = RetrainingCycle.objects.filter(pk=cycle_id).values_list("progress", flat=True).first() or {}
    history = [row for row in previous.get("history", []) if row["epoch"] < epoch]
    history.append({"epoch": epoch, "train_loss": round(train_loss, 4), "train_accuracy": round(train_accuracy, 4),
                    "attempt": attempt, "at": now.isoformat()})
    RetrainingCycle.objects.filter(pk=cycle_id).update(heartbeat_at=now, progress={
        "stage": "training", "epoch": epoch, "epochs": epochs,
        "train_loss": round(train_loss, 4), "train_accuracy": round(train_accuracy, 4),
        "attempt": attempt, "resumed_from_epoch": resumed_from_epoch, "history": history,
    })
    return RetrainingCycle.objects.filter(pk=cycle_id, status=CycleStatus.TRAINING).exists()


@transaction.atomic
def cycle_candidate_record(*, plan: TrainingPlan, directory: str, files: Sequence[ArtifactFile],
                           epochs_run: int, train_loss: float, temperature: float = 1.0,
                           calibration: dict | None = None, resumed_from_epoch: int = 0,
                           semi_supervised: dict | None = None) -> None:
    """Record the trained candidate with its temperature and hand the cycle to evaluation
    (unless it was cancelled). ``semi_supervised``: the method, threshold, unlabeled pool size and
    how many pool images got a pseudo-label, when training used the unlabeled pool."""
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
        **({"semi_supervised": semi_supervised} if semi_supervised else {}),
    })
    trust_record(project_id=plan.project.id, kind="model_trained", actor=f"cycle {cycle.number}", payload={
        "model_version": version.name, "parent": plan.base.name if plan.base else None,
        "training_labels": len(plan.data), "training_set_sha256": plan.data.digest,
        "artifacts": {f.name: f.sha256 for f in files}, "train_config": plan.config,
        "temperature": temperature, "calibration_labels": (calibration or {}).get("n", 0),
        "calibration_set_sha256": plan.calibration.digest, "attempt": plan.attempt,
        "resumed_from_epoch": resumed_from_epoch, "semi_supervised": semi_supervised,
    })
    enqueue("workers.tasks.evaluate", cycle.id)


@dataclass(frozen=True)
class SnapshotRecord:
    """One model's evaluation on one set, as the worker measured it."""

    eval_set: str  # EvaluationSet
    role: str  # candidate or production
    version: ModelVersion
    data: LabeledSet
    metrics: dict
    intervals: dict


def _snapshot_store(cycle: RetrainingCycle, record: SnapshotRecord, golden: GoldenSet | None) -> EvaluationSnapshot:
    snapshot, _ = EvaluationSnapshot.objects.get_or_create(
        cycle=cycle, model_version=record.version, eval_set=record.eval_set,
        defaults={"role": record.role, "label_ids": record.data.label_ids, "eval_set_sha256": record.data.digest,
                  "n_items": len(record.data), "accuracy": record.metrics["accuracy"], "metrics": record.metrics,
                  "intervals": record.intervals,
                  "golden_set": golden if record.eval_set == EvaluationSet.GOLDEN else None},
    )
    trust_record(project_id=cycle.project_id, kind="model_evaluated", actor=f"cycle {cycle.number}", payload={
        "model_version": record.version.name, "role": record.role, "snapshot": snapshot.id,
        "eval_set": record.eval_set, "golden_set_version": snapshot.golden_set.version if snapshot.golden_set else None,
        "eval_set_sha256": record.data.digest, "n_items": len(record.data), "accuracy": record.metrics["accuracy"],
        "accuracy_interval": record.intervals["accuracy"], "macro_f1": record.metrics["macro_f1"],
        "versus_production": record.intervals.get("versus_production"),
    })
    return snapshot


def _promote(cycle: RetrainingCycle, candidate: ModelVersion, *, actor: str, reason: str) -> None:
    model_version_promote(model_version_id=candidate.id, actor=actor, reason=reason)
    enqueue("workers.tasks.predict_items", candidate.id)


def _production_moved(cycle: RetrainingCycle) -> ModelVersion | None:
    """The production model, when it is no longer the one this cycle compared against."""
    current = production_version(cycle.project_id)
    if current is not None and current.pk != cycle.base_version_id:
        return current
    return None


@transaction.atomic
def cycle_decide(*, cycle_id: int, versions: dict[str, ModelVersion], records: Sequence[SnapshotRecord],
                 golden: GoldenSet | None, verdict: dict, rules: dict) -> None:
    """Store the snapshots and apply the gate's verdict (computed on the golden set by
    workers.pipelines.cycles with workers.ml.gate), once per cycle. The verdict, every rule's
    inputs and result, the golden-set version and the label manifest digest go on the cycle and
    into the trust history."""
    cycle = RetrainingCycle.objects.select_for_update().select_related("project").get(pk=cycle_id)
    if cycle.status != CycleStatus.EVALUATING:
        return
    for record in records:
        _snapshot_store(cycle, record, golden)
    gold = next((r.data for r in records if r.eval_set == EvaluationSet.GOLDEN), None)
    outcome, reason = verdict["outcome"], verdict["reason"]
    moved = _production_moved(cycle)
    if outcome != CycleDecision.REJECTED and moved is not None:
        outcome, reason = CycleDecision.REJECTED, (f"production changed to {moved.name} while this cycle ran; the "
                                                   "candidate was not compared with it (start a new cycle)")
    candidate = versions["candidate"]
    gate = {**verdict, "outcome": outcome, "reason": reason, "settings": rules,
            "golden_set_version": golden.version if golden else None,
            "golden_set_items_sha256": golden.items_sha256 if golden else None,
            "label_manifest_sha256": gold.digest if gold else None, "n_golden": len(gold) if gold else 0,
            "candidate": candidate.name, "production": versions["production"].name if "production" in versions else None}
    actor = f"promotion gate (cycle {cycle.number})"
    trust_record(project_id=cycle.project_id, kind="gate_evaluated", actor=actor, payload={
        "cycle": cycle.number, **gate, "approver": None,
    })
    if outcome == CycleDecision.PROMOTED:
        _promote(cycle, candidate, actor=actor, reason=reason)
        _transition(cycle, CycleStatus.SUCCEEDED, decision=CycleDecision.PROMOTED, decision_reason=reason,
                    gate=gate, progress={"stage": "done"})
    elif outcome == CycleDecision.AWAITING_APPROVAL:
        _transition(cycle, CycleStatus.AWAITING_APPROVAL, decision=CycleDecision.AWAITING_APPROVAL,
                    decision_reason=reason, gate=gate, progress={"stage": "awaiting approval"})
    else:
        ModelVersion.objects.filter(pk=candidate.id).update(stage=ModelStage.ARCHIVED)
        trust_record(project_id=cycle.project_id, kind="model_rejected", actor=actor,
                     payload={"model_version": candidate.name, "reason": reason})
        _transition(cycle, CycleStatus.SUCCEEDED, decision=CycleDecision.REJECTED, decision_reason=reason,
                    gate=gate, progress={"stage": "done"})


def _awaiting(cycle_id: int, reason: str) -> RetrainingCycle:
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidInput.single("reason", "say why (it goes into the trust history)")
    cycle = RetrainingCycle.objects.select_for_update(of=("self",)).select_related("project", "candidate_version").get(
        pk=cycle_id)
    if cycle.status != CycleStatus.AWAITING_APPROVAL:
        raise Conflict(f"cycle {cycle.number} is {cycle.status}, not awaiting approval")
    return cycle


@transaction.atomic
def cycle_approve(*, cycle_id: int, actor: str, reason: str) -> RetrainingCycle:
    """A person (Action.APPROVE) promotes a candidate that passed the gate and waits."""
    cycle = _awaiting(cycle_id, reason)
    moved = _production_moved(cycle)
    if moved is not None:
        raise Conflict(f"production changed to {moved.name} since cycle {cycle.number} compared against "
                       f"{cycle.base_version.name if cycle.base_version else 'none'}: reject it and start a new cycle")
    candidate = cycle.candidate_version
    trust_record(project_id=cycle.project_id, kind="cycle_approved", actor=actor, payload={
        "cycle": cycle.number, "model_version": candidate.name, "approver": actor, "reason": reason.strip(),
        "golden_set_version": cycle.gate.get("golden_set_version"),
        "label_manifest_sha256": cycle.gate.get("label_manifest_sha256"),
    })
    _promote(cycle, candidate, actor=actor, reason=f"approved cycle {cycle.number}: {reason.strip()}")
    _transition(cycle, CycleStatus.SUCCEEDED, decision=CycleDecision.PROMOTED, decided_by=actor,
                decision_reason=f"approved by {actor}: {reason.strip()}", progress={"stage": "done"})
    return cycle


@transaction.atomic
def cycle_reject(*, cycle_id: int, actor: str, reason: str) -> RetrainingCycle:
    """A person (Action.APPROVE) turns down a candidate that waits for approval."""
    cycle = _awaiting(cycle_id, reason)
    candidate = cycle.candidate_version
    ModelVersion.objects.filter(pk=candidate.id).update(stage=ModelStage.ARCHIVED)
    trust_record(project_id=cycle.project_id, kind="model_rejected", actor=actor, payload={
        "cycle": cycle.number, "model_version": candidate.name, "approver": actor, "reason": reason.strip(),
        "golden_set_version": cycle.gate.get("golden_set_version"),
        "label_manifest_sha256": cycle.gate.get("label_manifest_sha256"),
    })
    _transition(cycle, CycleStatus.SUCCEEDED, decision=CycleDecision.REJECTED, decided_by=actor,
                decision_reason=f"rejected by {actor}: {reason.strip()}", progress={"stage": "done"})
    return cycle


@transaction.atomic
def model_version_rollback(*, project: Project, name: str, actor: str, reason: str) -> ModelVersion:
    """Put an earlier production model back into production; deployments that follow production
    switch with it. Recorded in the trust history."""
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidInput.single("reason", "say why (it goes into the trust history)")
    if not isinstance(name, str) or not name:
        raise InvalidInput.single("model_version", "name the version to roll back to")
    version = ModelVersion.objects.select_for_update().filter(project=project, name=name).first()
    if version is None:
        raise InvalidInput.single("model_version", f"no model version {name[:64]!r} in {project.slug}")
    if version.stage == ModelStage.PRODUCTION:
        raise Conflict(f"{version.name} is already in production")
    if version.promoted_at is None:
        raise InvalidInput.single("model_version", f"{version.name} never served in production; only earlier "
                                                   "production models can be rolled back to")
    replaced = production_version(project.id)
    model_version_promote(model_version_id=version.id, actor=actor, reason=f"rollback: {reason.strip()}")
    trust_record(project_id=project.id, kind="model_rolled_back", actor=actor, payload={
        "model_version": version.name, "replaced": replaced.name if replaced else None, "reason": reason.strip(),
    })
    enqueue("workers.tasks.predict_items", version.id)
    version.refresh_from_db()
    return version
