"""A retraining cycle's model work: train the candidate, evaluate candidate and production.

The cycle's state machine, its records and the promotion gate are hitl's services
(``hitl.services.cycles``); this module runs the models between their steps.
"""

from __future__ import annotations

import json
import logging
import shutil
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from django.conf import settings
from torch import nn

from hitl.errors import TRANSIENT_DB_ERRORS
from hitl.locks import exclusive
from hitl.media import media_path, model_directory
from hitl.models import CycleStatus, ModelVersion, RetrainingCycle, Split
from hitl.services.cycles import (
    LabeledSet,
    TrainingPlan,
    cycle_candidate_record,
    cycle_decide,
    cycle_fail,
    cycle_progress_record,
    cycle_training_start,
    labeled_set,
)
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
from workers.ml.inference import predict_logits, predict_proba
from workers.ml.metrics import classification_metrics
from workers.ml.training import EpochStats, TrainConfig, fit
from workers.pipelines.versions import item_images, load_version

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainedCandidate:
    directory: str
    files: list[ArtifactFile]
    history: list[EpochStats]
    calibration: dict[str, Any]
    resumed_from_epoch: int

    @property
    def temperature(self) -> float:
        return float(self.calibration["temperature"])


def resume_state_path(project_slug: str, cycle_number: int) -> Path:
    """Where a cycle's training state is saved after each epoch (one file, replaced each time)."""
    return media_path(f"models/{project_slug}/cycles/{cycle_number}/resume") / "state.pt"


def _resume_key(plan: TrainingPlan) -> dict[str, Any]:
    """What a saved state must have been trained from to be resumed: the same base, architecture,
    config and exact label manifest (a label added or changed since makes the attempt start over)."""
    return {"architecture": plan.architecture, "base": plan.base.pk if plan.base else None,
            "initial_weights": plan.initial_weights, "config": plan.config,
            "labels_sha256": plan.data.digest}


def _resumable_state(plan: TrainingPlan, path: Path) -> dict[str, Any] | None:
    state = load_training_state(path)
    if state is None:
        return None
    if json.loads(state.get("resume_key", "null")) != _resume_key(plan):
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
    model = build_model(plan.architecture, len(labels), weights_path=start_from)
    images = item_images(plan.data.image_paths, spec)
    targets = torch.tensor(plan.data.targets, dtype=torch.int64)
    state_path = resume_state_path(plan.project.slug, plan.cycle_number)
    resume = _resumable_state(plan, state_path)
    resumed_from = resume["epoch"] if resume else 0
    # which attempt ran each epoch: a resumed attempt runs only the epochs after the saved one
    epoch_attempts: list[int] = list(resume["epoch_attempts"]) if resume else []
    key = json.dumps(_resume_key(plan))

    def save(state: dict[str, Any]) -> None:
        epoch_attempts.append(plan.attempt)
        save_training_state({**state, "resume_key": key, "epoch_attempts": list(epoch_attempts),
                             "label_ids": list(plan.data.label_ids)}, state_path)

    def progress(stats: EpochStats) -> bool:
        return cycle_progress_record(
            cycle_id=plan.cycle_id, epoch=stats.epoch, epochs=stats.epochs, train_loss=stats.train_loss,
            train_accuracy=stats.train_accuracy, attempt=plan.attempt, resumed_from_epoch=resumed_from)

    history = fit(model, images, targets, spec, config, on_epoch=progress, resume=resume, on_state=save)
    del images
    calibration = _fit_temperature(model, spec, plan.calibration)
    directory = model_directory(plan.project.slug, plan.version_name)
    metrics = {"train_loss": history[-1].train_loss, "train_accuracy": history[-1].train_accuracy,
               "epochs_run": len(history), "epoch_attempts": epoch_attempts, "resumed_from_epoch": resumed_from}
    meta = CheckpointMeta(plan.architecture, labels, spec, config.to_dict(), metrics,
                          temperature=calibration["temperature"])
    files = save_checkpoint(model, meta, media_path(directory))
    return TrainedCandidate(directory, files, history, calibration, resumed_from)


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
                                   resumed_from_epoch=trained.resumed_from_epoch)
        # recorded, cancelled or failed: the cycle trains no more, its training state can go
        shutil.rmtree(resume_state_path(plan.project.slug, plan.cycle_number).parent, ignore_errors=True)


def _evaluate_version(version: ModelVersion, data: LabeledSet) -> dict:
    model, meta = load_version(version)
    probs = predict_proba(model, item_images(data.image_paths, meta.input_spec), meta.input_spec)
    return classification_metrics(np.array(data.targets), probs, meta.labels)


def cycle_evaluate(*, cycle_id: int) -> None:
    """Evaluate candidate and production on the same held-out labels, store both snapshots,
    decide. Safe to run twice: snapshots are unique per cycle and model, decisions made once."""
    with exclusive(f"cycle:{cycle_id}") as mine:
        if not mine:
            return
        cycle = RetrainingCycle.objects.select_related("project", "candidate_version", "base_version").get(pk=cycle_id)
        if cycle.status != CycleStatus.EVALUATING:
            return
        data = labeled_set(cycle.project, Split.HOLDOUT)
        roles = [("candidate", cycle.candidate_version)]
        if cycle.base_version is not None:
            roles.append(("production", cycle.base_version))
        try:
            results = {role: _evaluate_version(v, data) for role, v in roles if len(data)}
            cycle_decide(cycle_id=cycle_id, versions=dict(roles), data=data, results=results)
        except TRANSIENT_DB_ERRORS:
            raise
        except Exception as exc:
            log.exception("cycle %s evaluation failed", cycle_id)
            cycle_fail(cycle_id=cycle_id, error=f"evaluation failed: {exc}")
