"""A retraining cycle's model work: train the candidate, evaluate candidate and production.

The cycle's state machine, its records and the promotion gate are hitl's services
(``hitl.services.cycles``); this module runs the models between their steps.
"""

from __future__ import annotations

import logging
import traceback

import numpy as np

from hitl.errors import TRANSIENT_DB_ERRORS
from hitl.locks import exclusive
from hitl.media import media_path, model_directory
from hitl.mlspec import PRETRAINED_BY_DEFAULT
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
from workers.ml.architectures import build_model, input_spec_for
from workers.ml.checkpoint import ArtifactFile, CheckpointMeta, save_checkpoint
from workers.ml.inference import predict_proba
from workers.ml.metrics import classification_metrics
from workers.ml.training import EpochStats, TrainConfig, fit
from workers.pipelines.versions import item_images, load_version, loader_workers

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
    # a first model with no weights given fine-tunes the architecture's offline ImageNet weights
    pretrained = start_from is None and plan.architecture in PRETRAINED_BY_DEFAULT
    model = build_model(plan.architecture, len(labels), weights_path=start_from, pretrained=pretrained)
    data = item_images(plan.data.image_paths, spec, targets=plan.data.targets)
    history = fit(model, data, None, spec, config, on_epoch=lambda s: _progress(plan.cycle_id, s),
                  num_workers=loader_workers())
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


def _evaluate_version(version: ModelVersion, data: LabeledSet) -> dict:
    model, meta = load_version(version)
    probs = predict_proba(model, item_images(data.image_paths, meta.input_spec), meta.input_spec,
                          num_workers=loader_workers())
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
