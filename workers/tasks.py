"""Thin Celery tasks: take ids, call a service, return. Every task is safe to run twice."""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from hitl.models import CycleStatus, Prediction, RetrainingCycle, ReviewBatch, ReviewBatchStatus
from hitl.services.cycles import cycle_evaluate, cycle_train
from hitl.services.modeling import model_predict_items
from hitl.services.queue import enqueue
from hitl.services.scoring import predictions_score
from hitl.services.selection import review_batch_select, selection_task
from workers.celery import cpu_task, gpu_task

log = logging.getLogger(__name__)


@cpu_task
def score_predictions(model_version_id: int) -> int:
    return predictions_score(model_version_id=model_version_id)


@cpu_task
def select_review_batch(batch_id: int) -> None:
    review_batch_select(batch_id=batch_id)


@gpu_task
def select_review_batch_with_model(batch_id: int) -> None:
    """The same service, for strategies that run the model (BALD, committee, core-set, ...)."""
    review_batch_select(batch_id=batch_id)


@gpu_task
def retrain(cycle_id: int) -> None:
    cycle_train(cycle_id=cycle_id)


@gpu_task
def evaluate(cycle_id: int) -> None:
    cycle_evaluate(cycle_id=cycle_id)


@gpu_task
def predict_items(model_version_id: int) -> int:
    return model_predict_items(model_version_id=model_version_id)


@cpu_task
def requeue_stalled_work() -> dict[str, int]:
    """Beat task: re-send work whose message was lost (a crash between commit and publish).

    Every task is idempotent, so re-sending work that is in fact still queued is harmless.
    """
    cutoff = timezone.now() - timedelta(seconds=settings.HITL_STALLED_AFTER_SECONDS)
    counts = {"cycles": 0, "batches": 0, "scoring": 0}
    # A pending cycle's message may be lost; a training or evaluating one whose worker stopped
    # beating may have died. If it is in fact alive, its advisory lock makes the re-sent task
    # return at once.
    stage_task = {CycleStatus.PENDING: "workers.tasks.retrain", CycleStatus.TRAINING: "workers.tasks.retrain",
                  CycleStatus.EVALUATING: "workers.tasks.evaluate"}
    stalled = RetrainingCycle.objects.filter(
        Q(status=CycleStatus.PENDING, created_at__lt=cutoff)
        | Q(status__in=[CycleStatus.TRAINING, CycleStatus.EVALUATING], heartbeat_at__lt=cutoff)
    )
    for cycle_id, status in stalled.values_list("id", "status"):
        enqueue(stage_task[status], cycle_id)
        counts["cycles"] += 1
    pending = ReviewBatch.objects.filter(status=ReviewBatchStatus.PENDING, created_at__lt=cutoff)
    for batch_id, strategy in pending.values_list("id", "strategy"):
        enqueue(selection_task(strategy), batch_id)
        counts["batches"] += 1
    versions = Prediction.objects.filter(scored_at__isnull=True, received_at__lt=cutoff).values_list(
        "model_version_id", flat=True).distinct()
    for version_id in versions:
        enqueue("workers.tasks.score_predictions", version_id)
        counts["scoring"] += 1
    if any(counts.values()):
        log.warning("re-sent stalled work: %s", counts)
    return counts
