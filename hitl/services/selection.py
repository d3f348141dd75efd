"""Selecting items for human review: the query strategy's top picks plus a random audit slice."""

from __future__ import annotations

import secrets

import numpy as np
from django.db import transaction
from django.db.models import Exists, OuterRef, QuerySet
from django.utils import timezone

from hitl.errors import InvalidInput
from hitl.models import (
    Label,
    LabelStatus,
    Prediction,
    Project,
    ReviewBatch,
    ReviewBatchStatus,
    ReviewReason,
    ReviewTask,
    ReviewTaskStatus,
    UncertaintyScore,
)
from hitl.services.projects import SELECTION_STRATEGIES, production_version
from hitl.services.queue import enqueue
from hitl.services.scoring import predictions_score
from hitl.signals import review_batch_selected


@transaction.atomic
def review_batch_request(
    *, project: Project, requested_by: str, size: int | None = None, strategy: str | None = None,
    audit_fraction: float | None = None, seed: int | None = None,
) -> ReviewBatch:
    """Ask for a review batch; a worker selects it (`review_batch_select`)."""
    size = project.batch_size if size is None else size
    strategy = strategy or project.selection_strategy
    audit_fraction = project.audit_fraction if audit_fraction is None else audit_fraction
    if not isinstance(size, int) or not 1 <= size <= 10_000:
        raise InvalidInput.single("size", "must be an integer between 1 and 10000")
    if strategy not in SELECTION_STRATEGIES:
        raise InvalidInput.single("strategy", f"unknown; use one of {', '.join(SELECTION_STRATEGIES)}")
    if not 0 <= audit_fraction <= 1:
        raise InvalidInput.single("audit_fraction", "must be between 0 and 1")
    batch = ReviewBatch.objects.create(
        project=project, strategy=strategy, size=size, audit_fraction=audit_fraction,
        seed=secrets.randbits(62) if seed is None else seed, requested_by=requested_by,
    )
    enqueue("workers.tasks.select_review_batch", batch.id)
    return batch


def review_pool(project_id: int, model_version_id: int) -> QuerySet[Prediction]:
    """The model version's predictions on items with no current label and no open review task."""
    labeled = Label.objects.filter(item_id=OuterRef("item_id"), status=LabelStatus.CURRENT)
    in_review = ReviewTask.objects.filter(item_id=OuterRef("item_id"), status=ReviewTaskStatus.OPEN)
    return Prediction.objects.filter(model_version_id=model_version_id, item__project_id=project_id).exclude(
        Exists(labeled)
    ).exclude(Exists(in_review))


def _fail(batch: ReviewBatch, message: str) -> ReviewBatch:
    batch.status = ReviewBatchStatus.FAILED
    batch.error = message
    batch.save(update_fields=["status", "error"])
    return batch


@transaction.atomic
def review_batch_select(*, batch_id: int) -> ReviewBatch:
    """Fill a pending batch with review tasks. Running it again changes nothing."""
    batch = ReviewBatch.objects.select_for_update().get(pk=batch_id)
    if batch.status != ReviewBatchStatus.PENDING:
        return batch
    Project.objects.select_for_update().get(pk=batch.project_id)  # one selection per project at a time
    version = production_version(batch.project_id)
    if version is None:
        return _fail(batch, "the project has no production model whose predictions could be ranked")
    batch.model_version = version
    pool = review_pool(batch.project_id, version.id)
    n_strategy = batch.size - int(round(batch.size * batch.audit_fraction))
    rng = np.random.default_rng(batch.seed)
    picks: list[tuple[int, int, ReviewReason, float | None]] = []  # prediction, item, reason, score
    if batch.strategy != "random" and n_strategy:
        predictions_score(model_version_id=version.id)
        ranked = (
            UncertaintyScore.objects.filter(model_version_id=version.id, method=batch.strategy, prediction__in=pool)
            .order_by("-value", "prediction_id")
            .values_list("prediction_id", "prediction__item_id", "value")[:n_strategy]
        )
        picks = [(pid, item_id, ReviewReason.STRATEGY, value) for pid, item_id, value in ranked]
    chosen = {pick[1] for pick in picks}
    remaining = [(pid, item_id) for pid, item_id in pool.order_by("id").values_list("id", "item_id")
                 if item_id not in chosen]
    n_random = batch.size - len(picks)
    if n_random and remaining:
        order = rng.permutation(len(remaining))[:n_random]
        reason = ReviewReason.STRATEGY if batch.strategy == "random" else ReviewReason.AUDIT
        n_strategy_random = n_strategy if batch.strategy == "random" else 0
        for position, index in enumerate(order):
            pid, item_id = remaining[index]
            picks.append((pid, item_id, reason if position < n_strategy_random else ReviewReason.AUDIT, None))
    if not picks:
        return _fail(batch, f"no unlabeled items with predictions from {version.name} are left to review")
    ReviewTask.objects.bulk_create([
        ReviewTask(batch=batch, item_id=item_id, prediction_id=pid, reason=reason, strategy=batch.strategy,
                   score=score, rank=rank)
        for rank, (pid, item_id, reason, score) in enumerate(picks, 1)
    ])
    batch.status = ReviewBatchStatus.SELECTED
    batch.selected_at = timezone.now()
    batch.save(update_fields=["status", "selected_at", "model_version"])
    review_batch_selected.send(sender=ReviewBatch, project_id=batch.project_id, batch_id=batch.id)
    return batch
