"""What a project link's events may touch, and the record of what was refused.

A webhook secret proves only that Label Studio sent the event to *this* link's URL. The event
may still name another Label Studio project, a task hitl pushed for another hitl project, or an
annotation hitl recorded under another link (a forged event, a task copied between projects, a
misconfigured hook). Such an event touches nothing: the receiver refuses it, a worker meeting it
later refuses it, and reconcile skips such annotations, each time with a logged warning and a
rejection row that `labelstudio status` shows.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from labeling.models import (
    AnnotationState,
    LabelStudioAnnotation,
    LabelStudioProject,
    LabelStudioRejection,
    LabelStudioTask,
)

log = logging.getLogger(__name__)
ANNOTATION_ACTIONS = {"ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED"}
DELETE_ACTIONS = {"ANNOTATIONS_DELETED"}
HANDLED_ACTIONS = ANNOTATION_ACTIONS | DELETE_ACTIONS
REASON_LIMIT = 500


class MalformedEvent(ValueError):
    """The body is not an event hitl can read (400)."""


class OutOfScope(ValueError):
    """The event or annotation reaches outside the link's project (403)."""


def as_id(value: Any) -> int | None:
    """A positive integer id, or None (JSON booleans are not ids)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def event_annotations(payload: dict) -> list[dict]:
    """The event's annotations: one under 'annotation', several under 'annotations'."""
    value = payload.get("annotation", payload.get("annotations"))
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(a, dict) for a in items):
        raise MalformedEvent(f"{payload.get('action')} event without annotation objects")
    return items


def event_tasks(payload: dict) -> dict[int, dict]:
    """The event's tasks by id: one under 'task' (ANNOTATION_CREATED/UPDATED), a list for
    ANNOTATIONS_CREATED, none for deletions."""
    value = payload.get("task")
    items = value if isinstance(value, list) else [value]
    return {task_id: task for task in items if isinstance(task, dict) and (task_id := as_id(task.get("id")))}


def _event_project(payload: dict) -> int | None:
    project = payload.get("project")
    return as_id(project.get("id") if isinstance(project, dict) else project)


def event_check(link: LabelStudioProject, payload: Any) -> None:
    """Raise MalformedEvent or OutOfScope unless this handled event may touch only ``link``'s
    project: its project id is the link's, and every task and annotation it names is the link's
    (or new to hitl)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("action"), str):
        raise MalformedEvent("a webhook body must be a JSON object with an 'action'")
    project_id = _event_project(payload)
    if project_id is None:
        raise MalformedEvent(f"{payload['action']} event without a Label Studio project id")
    if project_id != link.ls_project_id:
        raise OutOfScope(f"event for Label Studio project {project_id}, but this webhook belongs to Label Studio "
                         f"project {link.ls_project_id}")
    if payload["action"] not in HANDLED_ACTIONS:
        return
    tasks = event_tasks(payload)
    for annotation in event_annotations(payload):
        annotation_id = as_id(annotation.get("id"))
        if annotation_id is None:
            raise MalformedEvent(f"annotation without an id: {str(annotation)[:200]}")
        ls_task_id = None
        if payload["action"] in ANNOTATION_ACTIONS:
            ls_task_id = as_id(annotation.get("task"))
            if ls_task_id is None or (tasks and ls_task_id not in tasks):
                raise MalformedEvent(f"annotation {annotation_id} without its task, or with a task the event "
                                     "does not carry")
        problem = annotation_scope_problem(link, annotation_id=annotation_id, ls_task_id=ls_task_id,
                                           task_data=tasks.get(ls_task_id, {}).get("data"))
        if problem:
            raise OutOfScope(problem)


def foreign_tombstone(record: LabelStudioAnnotation, link: LabelStudioProject) -> bool:
    """A deletion recorded under another link for an annotation hitl never saw: Label Studio
    sends each project's events only to that project's hook, so it names no annotation of
    ``link``'s and must not block one."""
    return (record.ls_project_id not in (None, link.id) and record.state == AnnotationState.DELETED
            and record.ls_task_id == 0)


def annotation_scope_problem(link: LabelStudioProject, *, annotation_id: int, ls_task_id: int | None,
                             task_data: Any) -> str | None:
    """Why this annotation may not touch ``link``'s labels, or None. ``ls_task_id`` is None for
    a deletion, which names the annotation only."""
    record = LabelStudioAnnotation.objects.filter(ls_annotation_id=annotation_id).only(
        "ls_project_id", "ls_task_id", "state").first()
    if record is not None and record.ls_project_id not in (None, link.id) and not foreign_tombstone(record, link):
        return f"annotation {annotation_id} belongs to another hitl project's Label Studio project"
    if ls_task_id is None:
        return None
    if record is not None and record.ls_project_id == link.id and record.ls_task_id not in (0, ls_task_id):
        return f"annotation {annotation_id} belongs to Label Studio task {record.ls_task_id}, not {ls_task_id}"
    return task_scope_problem(link, ls_task_id=ls_task_id, task_data=task_data)


def task_scope_problem(link: LabelStudioProject, *, ls_task_id: int, task_data: Any) -> str | None:
    """Why this Label Studio task is not ``link``'s, or None. A task hitl never pushed is not a
    scope problem: its annotation is recorded as rejected ("not pushed by hitl")."""
    named = as_id(task_data.get("hitl_review_task_id")) if isinstance(task_data, dict) else None
    pushed = LabelStudioTask.objects.filter(ls_task_id=ls_task_id).values_list("ls_project_id", "review_task_id").first()
    if pushed is not None:
        if pushed[0] != link.id:
            return f"Label Studio task {ls_task_id} was pushed for another hitl project"
        if named is not None and named != pushed[1]:
            return (f"Label Studio task {ls_task_id} names review task {named}, but hitl pushed it for review "
                    f"task {pushed[1]}")
        return None
    if named is not None:
        owner = LabelStudioTask.objects.filter(review_task_id=named).values_list("ls_project_id", flat=True).first()
        if owner is not None and owner != link.id:
            return f"Label Studio task {ls_task_id} names review task {named} of another hitl project"
    return None


def rejection_record(*, link: LabelStudioProject, source: str, reason: str, remote: str = "") -> None:
    """Log the refusal and count it on its row (one row per link, source and reason)."""
    log.warning("Label Studio %s for hitl project %s refused: %s%s", source, link.project_id, reason,
                f" (from {remote})" if remote else "")
    reason, now = reason[:REASON_LIMIT], timezone.now()
    same = LabelStudioRejection.objects.filter(link=link, source=source, reason=reason)
    if same.update(count=F("count") + 1, last_at=now, last_remote=remote[:64]):
        return
    try:
        with transaction.atomic():
            LabelStudioRejection.objects.create(link=link, source=source, reason=reason, first_at=now, last_at=now,
                                                last_remote=remote[:64])
    except IntegrityError:  # another request recorded the same refusal first
        same.update(count=F("count") + 1, last_at=now, last_remote=remote[:64])
