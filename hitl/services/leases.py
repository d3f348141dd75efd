"""Review leases: a reviewer holds the few open review tasks in front of them for a short time
(HITL_REVIEW_LEASE_SECONDS), so two reviewers never label the same item at once. A lease that
is not renewed expires, and the task goes to the next reviewer who asks.

The lease lives on the review task row and is taken with ``SELECT ... FOR UPDATE SKIP LOCKED``:
two reviewers asking at once lock different rows, and a row that another reviewer leased and
committed while this query ran is re-checked by PostgreSQL against the lease condition before
it is locked (READ COMMITTED re-evaluates the WHERE clause on the newest row version), so it is
passed over. No lock service: the database decides.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import Case, IntegerField, Q, Value, When
from django.utils import timezone

from hitl.errors import Conflict
from hitl.models import Project, ReviewTask, ReviewTaskStatus


def lease_duration() -> timedelta:
    return timedelta(seconds=settings.HITL_REVIEW_LEASE_SECONDS)


def _takeable(reviewer: AbstractBaseUser, now: datetime) -> Q:
    """Open tasks nobody else holds: never leased, lease expired, or already this reviewer's."""
    return Q(leased_to__isnull=True) | Q(lease_expires_at__lte=now) | Q(leased_to=reviewer)


@transaction.atomic
def review_leases_take(
    *, project: Project, reviewer: AbstractBaseUser, count: int | None = None,
) -> list[ReviewTask]:
    """Lease up to ``count`` open tasks of the project to the reviewer, in queue order, those the
    reviewer already holds first (renewed); returns them with what the review page shows."""
    count = settings.HITL_REVIEW_LEASE_ITEMS if count is None else count
    now = timezone.now()
    held_first = Case(When(Q(leased_to=reviewer, lease_expires_at__gt=now), then=Value(0)),
                      default=Value(1), output_field=IntegerField())
    ids = list(
        ReviewTask.objects.filter(batch__project=project, status=ReviewTaskStatus.OPEN)
        .filter(_takeable(reviewer, now))
        .exclude(answers__reviewer=reviewer)  # a task two reviewers label blind: the other one's turn
        .order_by(held_first, "batch__created_at", "batch_id", "rank")
        .select_for_update(skip_locked=True, of=("self",))
        .values_list("id", flat=True)[:count]
    )
    ReviewTask.objects.filter(pk__in=ids).update(leased_to=reviewer, lease_expires_at=now + lease_duration())
    # Leases beyond the window (the reviewer asked for fewer this time) are let go.
    ReviewTask.objects.filter(batch__project=project, leased_to=reviewer, status=ReviewTaskStatus.OPEN).exclude(
        pk__in=ids).update(leased_to=None, lease_expires_at=None)
    tasks = ReviewTask.objects.filter(pk__in=ids).select_related(
        "item", "batch__project", "prediction__model_version")
    by_id = {task.id: task for task in tasks}
    return [by_id[pk] for pk in ids]


def review_lease_check(*, task: ReviewTask, reviewer: AbstractBaseUser) -> None:
    """Conflict if another reviewer holds an unexpired lease on this open task. The caller has
    locked the task's item, as every label change does."""
    now = timezone.now()
    if (task.status == ReviewTaskStatus.OPEN and task.leased_to_id is not None
            and task.leased_to_id != reviewer.pk and task.lease_expires_at and task.lease_expires_at > now):
        holder = task.leased_to.get_username() if task.leased_to else "another reviewer"
        raise Conflict(f"item {task.item_id} is in front of {holder} until "
                       f"{task.lease_expires_at:%H:%M:%S} UTC; take the next item")


def review_lease_grant(*, task: ReviewTask, reviewer: AbstractBaseUser) -> ReviewTask:
    """Lease one task to the reviewer (an undone label's task comes back to whoever undid it)."""
    task.leased_to, task.lease_expires_at = reviewer, timezone.now() + lease_duration()
    task.save(update_fields=["leased_to", "lease_expires_at"])
    return task
