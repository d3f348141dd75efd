"""Celery tasks that talk to Label Studio. Thin: ids in, a service call, safe to run twice.

Label Studio being down is a transient failure here: the task is retried with backoff (for up to
about an hour and a half), the project's status says Label Studio is down, and the beat's
reconcile catches up on whatever is still missing after that.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from hitl.services.queue import enqueue
from labeling.client import LabelStudioUnavailable
from labeling.models import EventState, LabelStudioProject, WebhookEvent
from labeling.services.pull import ls_reconcile, webhook_event_process
from labeling.services.push import ls_push
from workers.celery import CPU_TASK_OPTIONS, TRANSIENT_ERRORS, app

LABEL_STUDIO_TASK_OPTIONS = {
    **CPU_TASK_OPTIONS, "autoretry_for": (*TRANSIENT_ERRORS, LabelStudioUnavailable), "max_retries": 12,
    "retry_backoff": 10, "retry_backoff_max": 600,
}
label_studio_task = app.task(**LABEL_STUDIO_TASK_OPTIONS)


@label_studio_task
def push_review_tasks(project_id: int) -> int:
    return ls_push(project_id=project_id).pushed  # Busy (another push running): retried later


@label_studio_task
def process_webhook_event(event_id: int) -> str:
    return webhook_event_process(event_id=event_id).state


@label_studio_task
def reconcile(project_id: int) -> None:
    ls_reconcile(project_id=project_id)


@label_studio_task
def reconcile_all() -> int:
    """Beat: push and reconcile every connected project (catching up on anything a lost message
    or a busy push left behind), and re-send webhook events pending for longer than
    HITL_STALLED_AFTER_SECONDS (their message was lost; younger ones are still queued)."""
    projects = list(LabelStudioProject.objects.filter(ls_project_id__isnull=False).values_list("project_id", flat=True))
    for project_id in projects:
        enqueue("labeling.tasks.push_review_tasks", project_id)
        enqueue("labeling.tasks.reconcile", project_id)
    cutoff = timezone.now() - timedelta(seconds=settings.HITL_STALLED_AFTER_SECONDS)
    stalled = WebhookEvent.objects.filter(state=EventState.PENDING, received_at__lt=cutoff).order_by("received_at")
    for event_id in stalled.values_list("id", flat=True)[:1000]:
        enqueue("labeling.tasks.process_webhook_event", event_id)
    return len(projects)
