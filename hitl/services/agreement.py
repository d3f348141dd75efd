"""Agreement: a share of review tasks (Project.double_label_fraction, and every golden-set item)
is labeled by two reviewers who do not see each other's answer. Two equal answers make the label;
two different ones put the task in the conflicts queue, where a third person decides, and that
decision is the label the model trains on.

Which tasks need two answers is a pure function of the task id and the project's share, so it
needs no extra state, and the answers themselves (ReviewAnswer) say how far a task has come.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from hitl.errors import Conflict, InvalidInput
from hitl.models import (
    GoldenItem,
    Item,
    Label,
    LabelSource,
    ReviewAnswer,
    ReviewReason,
    ReviewTask,
    ReviewTaskStatus,
)
from hitl.services.labels import label_submit
from hitl.services.leases import review_lease_check, review_lease_grant


def _draw(task_id: int) -> float:
    """A uniform number in [0, 1) fixed by the task id: the same task is always drawn the same way."""
    digest = hashlib.sha256(f"double-label:{task_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def review_task_needs_two(task: ReviewTask, *, fraction: float, golden: bool | None = None) -> bool:
    """Golden-set items always; other tasks by a fixed draw against the project's share.
    ``golden``: whether the item is in the golden set, where the caller knows it already."""
    if golden is None:
        golden = GoldenItem.objects.filter(item_id=task.item_id).exists()
    return golden or task.reason == ReviewReason.GOLDEN or _draw(task.id) < fraction


@dataclass(frozen=True)
class AnswerOutcome:
    """What a reviewer's answer did: ``labeled`` (one answer was enough), ``waiting`` (the first
    of two: the second reviewer answers blind), ``agreed`` (the second answer matched: labeled) or
    ``conflict`` (it did not: a third person decides)."""

    outcome: str
    label: Label | None = None
    answer: ReviewAnswer | None = None


@transaction.atomic
def review_answer_submit(
    *, review_task_id: int, reviewer: AbstractBaseUser, value: str, lead_time_seconds: float | None = None,
) -> AnswerOutcome:
    """A reviewer's answer to an open review task on the review page."""
    item_id = ReviewTask.objects.values_list("item_id", flat=True).get(pk=review_task_id)
    item = Item.objects.select_for_update().select_related("project").get(pk=item_id)  # as label_submit
    task = ReviewTask.objects.select_for_update().get(pk=review_task_id)
    if task.status != ReviewTaskStatus.OPEN:
        raise Conflict(f"item {task.item_id} was already reviewed ({task.status})")
    review_lease_check(task=task, reviewer=reviewer)
    if value not in item.project.labels:
        raise InvalidInput.single("value", f"unknown label {value!r}; labels are {', '.join(item.project.labels)}")

    def label() -> Label:
        return label_submit(item_id=item.id, value=value, source=LabelSource.WEB, reviewer=reviewer,
                            review_task_id=task.id, lead_time_seconds=lead_time_seconds)

    answers = list(task.answers.all())
    if not answers and not review_task_needs_two(task, fraction=item.project.double_label_fraction):
        return AnswerOutcome("labeled", label())
    if any(a.reviewer_id == reviewer.pk for a in answers):
        raise Conflict(f"you have answered item {task.item_id} already; a second reviewer answers it")
    answer = ReviewAnswer.objects.create(task=task, reviewer=reviewer, reviewer_name=reviewer.get_username(),
                                         value=value, lead_time_seconds=lead_time_seconds)
    if not answers:
        task.leased_to, task.lease_expires_at = None, None  # free for the second reviewer
        task.save(update_fields=["leased_to", "lease_expires_at"])
        return AnswerOutcome("waiting", answer=answer)
    if answers[0].value == value:
        return AnswerOutcome("agreed", label(), answer)
    task.status, task.leased_to, task.lease_expires_at = ReviewTaskStatus.CONFLICT, None, None
    task.save(update_fields=["status", "leased_to", "lease_expires_at"])
    return AnswerOutcome("conflict", answer=answer)


@transaction.atomic
def review_conflict_resolve(*, review_task_id: int, decider: AbstractBaseUser, value: str) -> Label:
    """A third person decides a conflict: their label is the item's label, the task is done."""
    item_id = ReviewTask.objects.values_list("item_id", flat=True).get(pk=review_task_id)
    Item.objects.select_for_update().get(pk=item_id)
    task = ReviewTask.objects.select_for_update().get(pk=review_task_id)
    if task.status != ReviewTaskStatus.CONFLICT:
        raise Conflict(f"item {task.item_id} has no open conflict ({task.status})")
    if task.answers.filter(reviewer_id=decider.pk).exists():
        raise Conflict(f"you gave one of the answers for item {task.item_id}: a third person decides")
    label = label_submit(item_id=item_id, value=value, source=LabelSource.WEB, reviewer=decider,
                         review_task_id=task.id)
    task.status, task.completed_at = ReviewTaskStatus.DONE, timezone.now()
    task.save(update_fields=["status", "completed_at"])
    return label


@transaction.atomic
def review_answer_withdraw(*, answer_id: int, reviewer: AbstractBaseUser) -> ReviewTask:
    """Take back one's blind first answer while the task still waits for its second: the task
    comes back to the reviewer under a fresh lease."""
    answer = ReviewAnswer.objects.filter(pk=answer_id).select_related("task").first()
    if answer is None:
        raise InvalidInput.single("answer", f"no answer {answer_id}")
    Item.objects.select_for_update().get(pk=answer.task.item_id)
    task = ReviewTask.objects.select_for_update().get(pk=answer.task_id)
    if answer.reviewer_id != reviewer.pk:
        raise Conflict(f"answer {answer_id} is {answer.reviewer_name}'s: you can undo only your own")
    if task.status != ReviewTaskStatus.OPEN or task.answers.count() != 1:
        raise Conflict(f"the second answer for item {task.item_id} is in: your answer stands")
    review_lease_check(task=task, reviewer=reviewer)
    answer.delete()
    return review_lease_grant(task=task, reviewer=reviewer)
