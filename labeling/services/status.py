"""What an operator needs to see: tasks pushed, labeled, pending, last sync, errors.

Every task hitl pushed (``pushed``) is counted in exactly one bucket (``TASK_BUCKETS``): still
being pushed (reserved), deleted in Label Studio (missing), or, for a task that is in Label
Studio, by its review task's state: waiting for a label (pending; an item whose annotation was
deleted is back here), labeled (in Label Studio or in hitl), skipped, cancelled, or in conflict
(two blind answers on hitl's review page differ: a third person decides)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from django.db.models import Count, Q, Sum
from django.utils import timezone

from hitl.models import ReviewTaskStatus
from labeling.client import LabelStudioClient, LabelStudioError, LabelStudioNotConfigured
from labeling.models import (
    AnnotationState,
    EventState,
    LabelStudioAnnotation,
    LabelStudioProject,
    PushState,
    WebhookEvent,
)
from labeling.services.connection import default_client
from labeling.services.webhooks import webhook_url

TASK_BUCKETS = ("reserved", "missing", "pending", "labeled", "skipped", "cancelled", "conflict")


@dataclass
class LabelStudioStatus:
    project: str
    ls_project_id: int | None
    reachable: bool
    reachability: str
    pushed: int = 0
    reserved: int = 0
    missing: int = 0
    labeled: int = 0
    skipped: int = 0
    pending: int = 0
    cancelled: int = 0
    conflict: int = 0
    rejected: int = 0
    recent_rejections: list[str] = field(default_factory=list)
    webhook_url: str = ""
    webhook_secret: str = ""
    webhook_events_pending: int = 0
    webhook_events_failed: int = 0
    refused: int = 0
    recent_refusals: list[str] = field(default_factory=list)
    last_push_at: datetime | None = None
    last_sync_at: datetime | None = None
    last_error: str = ""
    last_error_at: datetime | None = None


def _reachability(client: LabelStudioClient | None) -> tuple[bool, str]:
    try:
        client = client or default_client()
        who = client.whoami()
        return True, f"reachable at {client.url} as {who.get('email')}"
    except LabelStudioNotConfigured as exc:
        return False, f"not configured: {exc}"
    except LabelStudioError as exc:
        return False, f"DOWN: {exc}"


def _secret_state(link: LabelStudioProject) -> str:
    if not link.webhook_secret_sha256:
        return "NOT SET: webhooks are refused until `manage.py labelstudio connect`"
    state = f"set {link.secret_rotated_at:%Y-%m-%d %H:%M:%S} UTC" if link.secret_rotated_at else "set"
    if link.previous_secret_valid_until and link.previous_secret_valid_until > timezone.now():
        state += f"; the previous one is accepted until {link.previous_secret_valid_until:%H:%M:%S} UTC"
    return state


def ls_status(*, project_id: int, client: LabelStudioClient | None = None) -> LabelStudioStatus:
    link = LabelStudioProject.objects.select_related("project").get(project_id=project_id)
    reachable, reachability = _reachability(client)
    in_ls = Q(state=PushState.PUSHED)
    tasks = link.tasks.aggregate(
        pushed=Count("id"),
        reserved=Count("id", filter=Q(state=PushState.RESERVED)),
        missing=Count("id", filter=Q(state=PushState.MISSING)),
        pending=Count("id", filter=in_ls & Q(review_task__status=ReviewTaskStatus.OPEN)),
        labeled=Count("id", filter=in_ls & Q(review_task__status=ReviewTaskStatus.DONE)),
        skipped=Count("id", filter=in_ls & Q(review_task__status=ReviewTaskStatus.SKIPPED)),
        cancelled=Count("id", filter=in_ls & Q(review_task__status=ReviewTaskStatus.CANCELLED)),
        conflict=Count("id", filter=in_ls & Q(review_task__status=ReviewTaskStatus.CONFLICT)),
    )
    annotations = LabelStudioAnnotation.objects.filter(ls_project=link)
    counts = annotations.aggregate(rejected=Count("id", filter=Q(state=AnnotationState.REJECTED)))
    rejections = annotations.filter(state=AnnotationState.REJECTED).order_by("-updated_at")[:5]
    refusals = link.rejections.order_by("-last_at")
    return LabelStudioStatus(
        project=link.project.slug, ls_project_id=link.ls_project_id, reachable=reachable,
        reachability=reachability, **tasks, **counts,
        recent_rejections=[f"annotation {r.ls_annotation_id} (task {r.ls_task_id}): {r.reason}" for r in rejections],
        webhook_url=webhook_url(link), webhook_secret=_secret_state(link),
        webhook_events_pending=WebhookEvent.objects.filter(link=link, state=EventState.PENDING).count(),
        webhook_events_failed=WebhookEvent.objects.filter(link=link, state=EventState.FAILED).count(),
        refused=refusals.aggregate(n=Sum("count"))["n"] or 0,
        recent_refusals=[f"{r.last_at:%Y-%m-%d %H:%M:%S} {r.source}: {r.reason} ({r.count}x"
                         + (f", last from {r.last_remote})" if r.last_remote else ")") for r in refusals[:5]],
        last_push_at=link.last_push_at, last_sync_at=link.last_sync_at, last_error=link.last_error,
        last_error_at=link.last_error_at,
    )
