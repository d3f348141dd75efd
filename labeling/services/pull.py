"""Annotations back from Label Studio: by webhook (fast, best effort) and by reconcile (a
periodic pull that recovers whatever webhooks missed). Both go through `annotation_apply`,
keyed by Label Studio's annotation id, so a replayed, duplicated or out-of-order event is
harmless and the two paths always agree. Both also apply the same scope rule
(`labeling.services.scope`): an annotation of another project's task changes nothing."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from hitl.errors import Busy, InvalidInput
from hitl.locks import exclusive
from hitl.models import LabelSource
from hitl.services.labels import label_retract, label_submit, plausible_lead_time, review_task_skip
from hitl.services.queue import enqueue
from labeling.client import LabelStudioBadRequest, LabelStudioClient, LabelStudioError
from labeling.mapping import ResultRejected, choice_from_result
from labeling.models import (
    AnnotationState,
    EventState,
    LabelStudioAnnotation,
    LabelStudioProject,
    LabelStudioTask,
    PushState,
    RejectionSource,
    WebhookEvent,
)
from labeling.services.connection import (
    connected_project,
    default_client,
    record_error,
    record_success,
)
from labeling.services.push import confirm_reserved
from labeling.services.scope import (
    ANNOTATION_ACTIONS,
    DELETE_ACTIONS,
    MalformedEvent,
    OutOfScope,
    annotation_scope_problem,
    event_annotations,
    event_tasks,
    foreign_tombstone,
    rejection_record,
)

log = logging.getLogger(__name__)
FINAL_STATES = {AnnotationState.APPLIED, AnnotationState.CANCELLED}


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and value:
        return datetime.fromisoformat(value)
    return None


_emails: dict[tuple[str, int], str] = {}  # (Label Studio URL, user id) -> email, per process
MAX_CACHED_EMAILS = 10_000


def reviewer_name(completed_by: Any, client: LabelStudioClient | None) -> str:
    """'<email> (Label Studio)' for the annotator, or its Label Studio id when the email is unknown."""
    if isinstance(completed_by, dict):
        email, user_id = completed_by.get("email") or "", completed_by.get("id")
    else:
        email, user_id = "", completed_by
    if not email and isinstance(user_id, int):
        try:
            client = client or default_client()
            key = (client.url, user_id)
            if key not in _emails:
                if len(_emails) >= MAX_CACHED_EMAILS:
                    _emails.clear()
                _emails[key] = client.user_email(user_id)
            email = _emails[key]
        except LabelStudioError:
            pass  # the name is informational; the annotation id is what identifies the label
    return f"{email} (Label Studio)" if email else f"Label Studio user {user_id}"


def _find_task(link: LabelStudioProject, ls_task_id: int, task_data: dict | None) -> LabelStudioTask | None:
    task = LabelStudioTask.objects.select_related("review_task").filter(ls_project=link, ls_task_id=ls_task_id).first()
    if task is None and task_data and isinstance(task_data.get("hitl_review_task_id"), int):
        # Pushed, but the worker died before confirming: confirm now.
        confirm_reserved(link, {task_data["hitl_review_task_id"]: ls_task_id})
        task = LabelStudioTask.objects.select_related("review_task").filter(ls_project=link, ls_task_id=ls_task_id).first()
    return task


def annotation_apply(*, link: LabelStudioProject, annotation: dict, task_data: dict | None, seen_via: str,
                     client: LabelStudioClient | None = None) -> LabelStudioAnnotation:
    """Turn one Label Studio annotation into the matching change of hitl's labels; OutOfScope
    (nothing written) if it names another project's task or annotation."""
    try:
        annotation_id, ls_task_id = int(annotation["id"]), int(annotation["task"])
    except (KeyError, TypeError, ValueError):
        raise MalformedEvent(f"annotation without an id and task: {str(annotation)[:200]}") from None
    reviewer = reviewer_name(annotation.get("completed_by"), client)  # may ask Label Studio: before any lock
    return _first_insert_wins(lambda: _apply(link, annotation, annotation_id, ls_task_id, task_data, seen_via, reviewer))


def _first_insert_wins(change: Callable[[], LabelStudioAnnotation]) -> LabelStudioAnnotation:
    """Two workers can meet the same new annotation at once (its 'created' and 'updated' webhooks,
    a webhook and reconcile, a create and a delete): neither finds a row to lock, and the one whose
    insert loses on the unique annotation id rolls back. Run it again: now it finds the winner's
    row, waits for its lock and applies on top of it."""
    try:
        return change()
    except IntegrityError:
        return change()


@transaction.atomic
def _apply(link: LabelStudioProject, annotation: dict, annotation_id: int, ls_task_id: int, task_data: dict | None,
           seen_via: str, reviewer: str) -> LabelStudioAnnotation:
    updated_at = _parse_time(annotation.get("updated_at"))
    record = LabelStudioAnnotation.objects.select_for_update().filter(ls_annotation_id=annotation_id).first()
    problem = annotation_scope_problem(link, annotation_id=annotation_id, ls_task_id=ls_task_id, task_data=task_data)
    if problem:
        raise OutOfScope(problem)
    if record is not None and foreign_tombstone(record, link):
        log.warning("annotation %s: a deletion recorded for another project is dropped", annotation_id)
        record.delete()
        record = None
    if record is not None and (record.state == AnnotationState.DELETED or (
            record.state in FINAL_STATES and record.ls_updated_at and updated_at and updated_at <= record.ls_updated_at)):
        return record  # deleted for good, or a replay / an older version arriving late
    record = record or LabelStudioAnnotation(ls_annotation_id=annotation_id, ls_task_id=ls_task_id, ls_project=link)
    prediction = annotation.get("prediction")
    record.result = annotation.get("result") or []
    record.lead_time_seconds = annotation.get("lead_time")
    record.ls_prediction_id = annotation.get("parent_prediction") or (prediction.get("id") if isinstance(prediction, dict) else None)
    record.ls_updated_at, record.seen_via, record.updated_at = updated_at, seen_via, timezone.now()
    task = _find_task(link, ls_task_id, task_data)
    record.task = task
    if task is None:
        return _reject(record, f"Label Studio task {ls_task_id} was not pushed by hitl")
    record.completed_by = reviewer
    if annotation.get("was_cancelled"):
        if record.label_id:
            label_retract(label_id=record.label_id)
        review_task_skip(review_task_id=task.review_task_id)
        record.state, record.reason, record.label = AnnotationState.CANCELLED, "skipped in Label Studio", None
        record.save()
        return record
    try:
        value = choice_from_result(record.result, link.project.labels)
    except ResultRejected as exc:
        return _reject(record, str(exc))
    try:
        record.label = label_submit(
            item_id=task.review_task.item_id, value=value, source=LabelSource.LABEL_STUDIO,
            reviewer_name=record.completed_by, review_task_id=task.review_task_id,
            lead_time_seconds=plausible_lead_time(record.lead_time_seconds), external_id=f"ls-annotation:{annotation_id}",
        )
    except InvalidInput as exc:  # checked before anything is written
        return _reject(record, str(exc))
    record.state, record.reason = AnnotationState.APPLIED, ""
    record.save()
    return record


def _reject(record: LabelStudioAnnotation, reason: str) -> LabelStudioAnnotation:
    log.warning("rejected Label Studio annotation %s (task %s): %s", record.ls_annotation_id, record.ls_task_id, reason)
    record.state, record.reason = AnnotationState.REJECTED, reason
    record.save()
    return record


def annotation_delete(*, link: LabelStudioProject, annotation_id: int, seen_via: str) -> LabelStudioAnnotation:
    """The annotation was deleted in Label Studio: its label is retracted. Final. OutOfScope if
    hitl recorded it under another project."""
    return _first_insert_wins(lambda: _delete(link, annotation_id, seen_via))


@transaction.atomic
def _delete(link: LabelStudioProject, annotation_id: int, seen_via: str) -> LabelStudioAnnotation:
    record = LabelStudioAnnotation.objects.select_for_update().filter(ls_annotation_id=annotation_id).first()
    problem = annotation_scope_problem(link, annotation_id=annotation_id, ls_task_id=None, task_data=None)
    if problem:
        raise OutOfScope(problem)
    if record is not None and foreign_tombstone(record, link):
        return record
    if record is None:  # deleted before hitl saw it: remember, so a late 'created' event is ignored
        record = LabelStudioAnnotation(ls_annotation_id=annotation_id, ls_task_id=0, ls_project=link)
    elif record.state == AnnotationState.DELETED:
        return record
    if record.label_id:
        label_retract(label_id=record.label_id)
    record.state, record.reason, record.seen_via, record.updated_at = (
        AnnotationState.DELETED, "deleted in Label Studio", seen_via, timezone.now())
    record.save()
    return record


# --- webhooks -------------------------------------------------------------------------------------

@transaction.atomic
def webhook_event_record(*, link: LabelStudioProject, payload: dict) -> WebhookEvent:
    """Store an event that came to ``link``'s webhook (authenticated and scope-checked by
    `labeling.services.webhooks`) and hand it to a worker; the receiver answers right after."""
    event = WebhookEvent.objects.create(link=link, action=payload["action"][:40], payload=payload,
                                        ls_project_id=link.ls_project_id)
    enqueue("labeling.tasks.process_webhook_event", event.id)
    return event


def _event_apply(link: LabelStudioProject, event: WebhookEvent, client: LabelStudioClient | None) -> None:
    payload = event.payload
    if event.action in ANNOTATION_ACTIONS:
        tasks = event_tasks(payload)
        for annotation in event_annotations(payload):
            task = tasks.get(annotation.get("task"), {})
            annotation_apply(link=link, annotation=annotation, task_data=task.get("data"), seen_via="webhook",
                             client=client)
    elif event.action in DELETE_ACTIONS:
        for annotation in event_annotations(payload):
            annotation_delete(link=link, annotation_id=int(annotation["id"]), seen_via="webhook")


def webhook_event_process(*, event_id: int, client: LabelStudioClient | None = None) -> WebhookEvent:
    """Apply a stored event. Safe to run twice: a processed event is skipped, and applying an
    annotation twice changes nothing."""
    event = WebhookEvent.objects.select_related("link__project").get(pk=event_id)
    if event.state != EventState.PENDING:
        return event
    try:
        if event.link is None:
            raise MalformedEvent("event stored without its project link (from before per-project webhooks)")
        _event_apply(event.link, event, client)
    except (MalformedEvent, OutOfScope, KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, OutOfScope):
            rejection_record(link=event.link, source=RejectionSource.WEBHOOK, reason=str(exc))
        log.warning("webhook event %s rejected: %s", event.id, exc)
        WebhookEvent.objects.filter(pk=event.pk).update(state=EventState.FAILED, error=str(exc)[:2000],
                                                         processed_at=timezone.now())
        event.refresh_from_db()
        return event
    WebhookEvent.objects.filter(pk=event.pk).update(state=EventState.PROCESSED, processed_at=timezone.now())
    event.refresh_from_db()
    return event


# --- reconcile ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ReconcileResult:
    tasks: int
    annotations: int
    deleted: int
    missing_tasks: int


def ls_reconcile(*, project_id: int, client: LabelStudioClient | None = None) -> ReconcileResult:
    """Pull every annotation of the project's Label Studio tasks and bring hitl in line; Busy
    while another sync of the project runs."""
    link = connected_project(project_id)
    client = client or default_client()
    with exclusive(f"label-studio-sync:{project_id}") as mine:
        if not mine:
            raise Busy(f"another sync of project {project_id} is running")
        try:
            result = _reconcile(link, client)
        except LabelStudioError as exc:
            record_error(link, exc)
            raise
        record_success(link, last_sync_at=timezone.now())
        return result


def _reconcile(link: LabelStudioProject, client: LabelStudioClient) -> ReconcileResult:
    remote = client.project(link.ls_project_id)
    if remote is None:
        raise LabelStudioBadRequest(f"Label Studio project {link.ls_project_id} no longer exists: run "
                                    "`manage.py labelstudio connect` to create it again", 404)
    expected_tasks = remote.get("task_number")
    seen_tasks: dict[int, int | None] = {}  # Label Studio task id -> hitl review task id
    seen_annotations: set[int] = set()
    for task in client.iter_tasks(link.ls_project_id):
        data = task.get("data") or {}
        review_task = data.get("hitl_review_task_id")
        seen_tasks[int(task["id"])] = review_task if isinstance(review_task, int) else None
        for annotation in task.get("annotations") or []:
            annotation = {**annotation, "task": annotation.get("task") or task["id"]}
            try:
                annotation_apply(link=link, annotation=annotation, task_data=data, seen_via="reconcile",
                                 client=client)
            except OutOfScope as exc:
                rejection_record(link=link, source=RejectionSource.RECONCILE, reason=str(exc))
                continue
            seen_annotations.add(int(annotation["id"]))
    confirm_reserved(link, {review: ls_task for ls_task, review in seen_tasks.items() if review is not None})
    # An annotation is deleted only if its task was listed without it: a task this pass did not
    # see (a page lost, a task moved between pages) says nothing about its annotations.
    gone = LabelStudioAnnotation.objects.filter(ls_project=link, ls_task_id__in=list(seen_tasks)).exclude(
        state=AnnotationState.DELETED).exclude(ls_annotation_id__in=seen_annotations).values_list(
        "ls_annotation_id", flat=True)
    deleted = 0
    for annotation_id in list(gone):
        annotation_delete(link=link, annotation_id=annotation_id, seen_via="reconcile")
        deleted += 1
    missing = 0
    if expected_tasks is not None and len(seen_tasks) >= expected_tasks:  # a complete listing
        missing = LabelStudioTask.objects.filter(ls_project=link, state=PushState.PUSHED).exclude(
            ls_task_id__in=list(seen_tasks)).update(state=PushState.MISSING)
    return ReconcileResult(len(seen_tasks), len(seen_annotations), deleted, missing)
