"""Thin Celery tasks: take ids, call a pipeline or a service, return. Every task is safe to run
twice.

Tasks import their pipeline when they run, not at module level: Celery beat imports this module
too (to know the tasks it schedules), and beat, like the web, must not load torch. A worker
loads the pipelines once at start-up instead (``_load_pipelines``), so its pool processes
share them.
"""

from __future__ import annotations

import importlib
import logging
from datetime import timedelta

from celery.signals import worker_init
from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from hitl.models import CycleStatus, Prediction, RetrainingCycle, ReviewBatch, ReviewBatchStatus
from hitl.services.alerts import NotificationFailed
from hitl.services.queue import enqueue
from hitl.services.selection import selection_task
from workers.celery import NOTIFY_TASK_OPTIONS, TRANSIENT_ERRORS, app, cpu_task, gpu_task

log = logging.getLogger(__name__)
PIPELINES = ("workers.pipelines.scoring", "workers.pipelines.selection", "workers.pipelines.cycles",
             "workers.pipelines.inference")


@worker_init.connect
def _load_pipelines(**kwargs: object) -> None:
    for name in PIPELINES:
        importlib.import_module(name)


@cpu_task
def score_predictions(model_version_id: int) -> int:
    from workers.pipelines.scoring import predictions_score

    return predictions_score(model_version_id=model_version_id)


@cpu_task
def select_review_batch(batch_id: int) -> None:
    from workers.pipelines.selection import review_batch_select

    review_batch_select(batch_id=batch_id)


@gpu_task
def select_review_batch_with_model(batch_id: int) -> None:
    """The same pipeline, for strategies that run the model (BALD, committee, core-set, ...)."""
    from workers.pipelines.selection import review_batch_select

    review_batch_select(batch_id=batch_id)


@gpu_task
def retrain(cycle_id: int) -> None:
    from workers.pipelines.cycles import cycle_train

    cycle_train(cycle_id=cycle_id)


@gpu_task
def evaluate(cycle_id: int) -> None:
    from workers.pipelines.cycles import cycle_evaluate

    cycle_evaluate(cycle_id=cycle_id)


@gpu_task
def predict_items(model_version_id: int) -> int:
    from workers.pipelines.inference import model_predict_items

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


@cpu_task
def monitor_all() -> int:
    """Beat task: one monitoring run per project that has deployments; returns how many."""
    from hitl.services.monitoring import projects_to_monitor

    project_ids = projects_to_monitor()
    for project_id in project_ids:
        enqueue("workers.tasks.monitor_project", project_id)
    return len(project_ids)


@cpu_task
def trust_verify_all() -> int:
    """Beat task: one full trust-chain verification per project that has events; returns how many."""
    from hitl.selectors import projects_with_trust_events

    project_ids = projects_with_trust_events()
    for project_id in project_ids:
        enqueue("workers.tasks.trust_verify_project", project_id)
    return len(project_ids)


@cpu_task
def trust_verify_project(project_id: int) -> bool:
    """Verify the project's whole trust chain and record the result; returns whether it holds."""
    from hitl.services.trust import trust_verify

    return trust_verify(project_id=project_id).ok


@cpu_task
def monitor_project(project_id: int) -> list[int]:
    """Judge the project's last complete window; returns the new alerts' ids (none when run again)."""
    from hitl.services.monitoring import project_monitor

    return project_monitor(project_id=project_id).alert_ids


@app.task(**{**NOTIFY_TASK_OPTIONS, "autoretry_for": (*TRANSIENT_ERRORS, NotificationFailed)})
def alert_notify(alert_id: int) -> dict[str, str]:
    """Email and webhook for one alert, each sent once; a failed delivery is retried with backoff."""
    from hitl.services.alerts import alert_notify as notify

    return notify(alert_id=alert_id)
