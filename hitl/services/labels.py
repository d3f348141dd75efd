"""Human labels: the one service through which every label enters hitl (web UI, API, Label
Studio, imports and the demo's simulated reviewer).

Held-out items are what candidates and production are judged on, so people label them only
through a review task (the web review queue, Label Studio, or the API naming ``review_task``):
nobody can hand-pick held-out items to label. Imports and the demo's simulated reviewer
(TRUSTED_SOURCES) are called only by operators' code, never by a view, so they may label any item.
"""

from __future__ import annotations

import math

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from hitl.errors import Conflict, InvalidInput
from hitl.models import (
    Item,
    Label,
    LabelSource,
    LabelStatus,
    Prediction,
    ReviewAnswer,
    ReviewTask,
    ReviewTaskStatus,
    Split,
)
from hitl.services.leases import review_lease_check, review_lease_grant

# Longer than this is a reviewer who left the page open, not time spent on the item.
MAX_LEAD_TIME_SECONDS = 24 * 3600

# Sources only trusted code uses (no view or API can name them): they may label held-out items
# without a review task.
TRUSTED_SOURCES = frozenset({LabelSource.IMPORT, LabelSource.SIMULATED})


def plausible_lead_time(seconds: object) -> float | None:
    """A measured time spent on an item (a page's clock, Label Studio's ``lead_time``), or None
    where it cannot be one: not a number, negative, or longer than MAX_LEAD_TIME_SECONDS.
    Measured times are dropped, not refused; a client that sends one to the API gets a 400."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return None
    return float(seconds) if 0 <= seconds <= MAX_LEAD_TIME_SECONDS else None


def _reviewer_name(reviewer: AbstractBaseUser | None, reviewer_name: str) -> str:
    if reviewer_name:
        return reviewer_name
    if reviewer is not None:
        return reviewer.get_username()
    raise InvalidInput.single("reviewer", "a label needs a reviewer or a reviewer name")


@transaction.atomic
def label_submit(
    *, item_id: int, value: str, source: str, reviewer: AbstractBaseUser | None = None,
    reviewer_name: str = "", review_task_id: int | None = None, prediction_id: int | None = None,
    lead_time_seconds: float | None = None, external_id: str = "",
) -> Label:
    """Record a reviewer's label for an item; a different value supersedes the current label.

    Submitting the label that is already current changes nothing (see `_same_label`), so a
    retried request or a replayed event is harmless. Any open review task for the item is closed.
    A person (``reviewer``) may not label an item whose open task another reviewer holds a lease
    on (Conflict); Label Studio's annotators and trusted sources are not held back by leases.
    """
    try:
        item = Item.objects.select_for_update().select_related("project").get(pk=item_id)
    except Item.DoesNotExist:
        raise InvalidInput.single("item", f"no item with id {item_id}") from None
    if value not in item.project.labels:
        raise InvalidInput.single("value", f"unknown label {value!r}; labels are {', '.join(item.project.labels)}")
    if source not in LabelSource.values:
        raise InvalidInput.single("source", f"use one of {', '.join(LabelSource.values)}")
    if lead_time_seconds is not None and not (0 <= lead_time_seconds <= MAX_LEAD_TIME_SECONDS):
        raise InvalidInput.single("lead_time_seconds", "must be between 0 and one day")
    name = _reviewer_name(reviewer, reviewer_name)
    task = None
    if review_task_id is not None:
        task = ReviewTask.objects.select_related("prediction").filter(pk=review_task_id, item_id=item.id).first()
        if task is None:
            raise InvalidInput.single("review_task", f"no review task {review_task_id} for item {item.id}")
    elif item.split == Split.HOLDOUT and source not in TRUSTED_SOURCES:
        raise InvalidInput.single(
            "review_task", f"item {item.id} is held out for evaluation: it takes labels only "
                           "through a review task; name its review task")
    if reviewer is not None:
        open_task = task or ReviewTask.objects.filter(item_id=item.id, status=ReviewTaskStatus.OPEN).first()
        if open_task is not None:
            review_lease_check(task=open_task, reviewer=reviewer)
    current = Label.objects.filter(item=item, status=LabelStatus.CURRENT).first()
    if current is not None and _same_label(current, value, name, source, external_id):
        _close_review_tasks(item.id)
        return current
    if current is not None:
        current.status = LabelStatus.SUPERSEDED
        current.save(update_fields=["status"])
        # A label made current again by a retraction still has the withdrawn label after it; the
        # new label takes that place in the history (`previous` is one-to-one).
        Label.objects.filter(previous=current).update(previous=None)
    if task is None:
        task = ReviewTask.objects.select_related("prediction").filter(item_id=item.id, status=ReviewTaskStatus.OPEN).first()
    if prediction_id is None and task is not None:
        prediction_id = task.prediction_id
    model_value = _model_value(prediction_id, task)
    label = Label.objects.create(
        item=item, project_id=item.project_id, value=value, reviewer=reviewer, reviewer_name=name, source=source,
        previous=current, review_task=task, prediction_id=prediction_id, model_value=model_value,
        lead_time_seconds=lead_time_seconds, external_id=external_id,
    )
    _close_review_tasks(item.id)
    return label


def _model_value(prediction_id: int | None, task: ReviewTask | None) -> str:
    """The model's label in the pre-annotation the reviewer started from ("" for none)."""
    if prediction_id is None:
        return ""
    if task is not None and task.prediction_id == prediction_id:
        return task.prediction.predicted_label  # the task's own prediction, read with it
    return Prediction.objects.filter(pk=prediction_id).values_list("predicted_label", flat=True).first() or ""


def _same_label(current: Label, value: str, name: str, source: str, external_id: str) -> bool:
    """A resubmission of the current label: the same external record (e.g. the same Label Studio
    annotation) with the same value, or the same reviewer giving the same value again."""
    if (current.value, current.source) != (value, source):
        return False
    if external_id or current.external_id:
        return current.external_id == external_id
    return current.reviewer_name == name


def _close_review_tasks(item_id: int) -> None:
    ReviewTask.objects.filter(item_id=item_id, status=ReviewTaskStatus.OPEN).update(
        status=ReviewTaskStatus.DONE, completed_at=timezone.now()
    )


@transaction.atomic
def label_retract(*, label_id: int) -> Label:
    """Withdraw a label (e.g. its annotation was deleted). The label it replaced becomes current
    again, unless that was an earlier version of the same external record (the same Label Studio
    annotation, edited): a withdrawn annotation withdraws all its versions."""
    item_id = Label.objects.values_list("item_id", flat=True).get(pk=label_id)
    Item.objects.select_for_update().get(pk=item_id)  # items first, as label_submit locks them
    label = Label.objects.get(pk=label_id)
    if label.status == LabelStatus.RETRACTED:
        return label
    was_current = label.status == LabelStatus.CURRENT
    label.status = LabelStatus.RETRACTED
    label.retracted_at = timezone.now()
    label.save(update_fields=["status", "retracted_at"])
    previous = label.previous
    while previous is not None and (
        previous.status == LabelStatus.RETRACTED or (label.external_id and previous.external_id == label.external_id)
    ):
        previous = previous.previous
    if was_current and previous is not None:
        previous.status = LabelStatus.CURRENT
        previous.save(update_fields=["status"])
    if was_current:
        _reopen_review_task(label)
    return label


def _reopen_review_task(label: Label) -> None:
    """The withdrawn label had closed its review task: the item goes back to the review queue
    (and stays in Label Studio's, where the task has lost its annotation), unless the label that
    is current now answers the same task, or the item is already waiting in another task."""
    task = label.review_task
    if task is None or task.status != ReviewTaskStatus.DONE:
        return
    current = Label.objects.filter(item_id=label.item_id, status=LabelStatus.CURRENT).first()
    if current is not None and current.review_task_id == task.id:
        return
    if ReviewTask.objects.filter(item_id=label.item_id, status=ReviewTaskStatus.OPEN).exists():
        return
    task.status, task.completed_at, task.leased_to, task.lease_expires_at = ReviewTaskStatus.OPEN, None, None, None
    task.save(update_fields=["status", "completed_at", "leased_to", "lease_expires_at"])


@transaction.atomic
def label_undo(*, label_id: int, reviewer: AbstractBaseUser) -> ReviewTask | None:
    """A reviewer takes back their own current label (the review page's U): it is retracted, the
    label it replaced (if any) is current again, and its review task comes back to the reviewer
    under a fresh lease. Returns that open task (None if the label answered no task)."""
    item_id = Label.objects.filter(pk=label_id).values_list("item_id", flat=True).first()
    if item_id is None:
        raise InvalidInput.single("label", f"no label {label_id}")
    Item.objects.select_for_update().get(pk=item_id)
    label = Label.objects.select_related("review_task").get(pk=label_id)
    if label.reviewer_id != reviewer.pk:
        raise Conflict(f"label {label_id} is {label.reviewer_name}'s: you can undo only your own labels")
    if label.status != LabelStatus.CURRENT:
        raise Conflict(f"label {label_id} is no longer the item's current label ({label.status}): nothing to undo")
    label_retract(label_id=label.id)
    if label.review_task_id is not None:  # a blind answer of a task two reviewers label goes with it
        ReviewAnswer.objects.filter(task_id=label.review_task_id, reviewer=reviewer,
                                    task__status=ReviewTaskStatus.OPEN).delete()
    task = ReviewTask.objects.filter(item_id=item_id, status=ReviewTaskStatus.OPEN).first()
    if task is None:
        return None
    try:
        review_lease_check(task=task, reviewer=reviewer)
    except Conflict:
        return None  # the item already waits in a task someone else has in front of them
    return review_lease_grant(task=task, reviewer=reviewer)


@transaction.atomic
def review_task_skip(*, review_task_id: int, reviewer: AbstractBaseUser | None = None) -> ReviewTask:
    """A reviewer passes on an item: the task closes without a label. A task done earlier whose
    label was since withdrawn (the item has no current label) counts as skipped too. A person
    (``reviewer``) may not skip a task another reviewer holds a lease on (Conflict)."""
    task = ReviewTask.objects.select_for_update().get(pk=review_task_id)
    if reviewer is not None:
        review_lease_check(task=task, reviewer=reviewer)
    withdrawn = task.status == ReviewTaskStatus.DONE and not Label.objects.filter(
        item_id=task.item_id, status=LabelStatus.CURRENT).exists()
    if task.status == ReviewTaskStatus.OPEN or withdrawn:
        task.status = ReviewTaskStatus.SKIPPED
        task.completed_at = timezone.now()
        task.save(update_fields=["status", "completed_at"])
    return task
