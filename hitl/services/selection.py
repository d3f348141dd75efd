"""Selecting items for human review: the query strategy's picks plus a random audit slice.

A request records the batch and sends it to the queue its strategy needs; a worker picks the
items (``workers.pipelines.selection``) and stores them here (``review_batch_store``).
* Least confidence, margin and entropy are scored when predictions arrive, so picking the top
  of a million predictions is a short walk down one index: short CPU work.
* BALD, committee, core-set, BADGE and the hybrid need the model's own outputs (MC-dropout
  passes, embeddings, other versions): GPU work.
The audit slice is a uniform random sample of the pool, marked as such: its labels give an
unbiased estimate of the live model's accuracy.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from hitl.errors import InvalidInput
from hitl.mlspec import MODEL_STRATEGIES, STRATEGIES
from hitl.models import (
    ModelVersion,
    Project,
    ReviewBatch,
    ReviewBatchStatus,
    ReviewReason,
    ReviewTask,
)
from hitl.services.golden import golden_items_reserve
from hitl.services.queue import enqueue
from hitl.signals import review_batch_selected


@dataclass(frozen=True)
class Pick:
    prediction_id: int | None  # None before any model (a cold start's first batches)
    item_id: int
    reason: str
    score: float | None


def needs_model(strategy: str) -> bool:
    return strategy in MODEL_STRATEGIES


def selection_task(strategy: str) -> str:
    """Strategies that run the model are GPU work; the others are short CPU work."""
    return "workers.tasks.select_review_batch_with_model" if needs_model(strategy) else "workers.tasks.select_review_batch"


@transaction.atomic
def review_batch_request(
    *, project: Project, requested_by: str, size: int | None = None, strategy: str | None = None,
    audit_fraction: float | None = None, seed: int | None = None,
) -> ReviewBatch:
    """Ask for a review batch; a worker selects it (`workers.pipelines.selection.review_batch_select`)."""
    size = project.batch_size if size is None else size
    strategy = strategy or project.selection_strategy
    audit_fraction = project.audit_fraction if audit_fraction is None else audit_fraction
    if not isinstance(size, int) or not 1 <= size <= 10_000:
        raise InvalidInput.single("size", "must be an integer between 1 and 10000")
    if strategy not in STRATEGIES:
        raise InvalidInput.single("strategy", f"unknown; use one of {', '.join(STRATEGIES)}")
    if not 0 <= audit_fraction <= 1:
        raise InvalidInput.single("audit_fraction", "must be between 0 and 1")
    batch = ReviewBatch.objects.create(
        project=project, strategy=strategy, size=size, audit_fraction=audit_fraction,
        seed=secrets.randbits(62) if seed is None else seed, requested_by=requested_by,
    )
    enqueue(selection_task(strategy), batch.id)
    return batch


@transaction.atomic
def review_batch_store(
    *, batch_id: int, version: ModelVersion | None, picks: list[Pick], error: str, audit_pool_size: int | None = None,
) -> ReviewBatch:
    """Fill a pending batch with the picks (or record why it failed); once: a filled batch stays.
    ``audit_pool_size`` is how many predictions the audit slice was drawn from."""
    batch = ReviewBatch.objects.select_for_update().get(pk=batch_id)
    if batch.status != ReviewBatchStatus.PENDING:
        return batch
    batch.model_version = version
    batch.audit_pool_size = audit_pool_size
    if error:
        batch.status, batch.error = ReviewBatchStatus.FAILED, error
        batch.save(update_fields=["status", "error", "model_version"])
        return batch
    ReviewTask.objects.bulk_create([
        ReviewTask(batch=batch, item_id=pick.item_id, prediction_id=pick.prediction_id, reason=pick.reason,
                   strategy=batch.strategy, score=pick.score, rank=rank)
        for rank, pick in enumerate(picks, 1)
    ])
    golden_items_reserve(batch=batch, item_ids=[p.item_id for p in picks if p.reason == ReviewReason.GOLDEN])
    batch.status = ReviewBatchStatus.SELECTED
    batch.selected_at = timezone.now()
    batch.save(update_fields=["status", "selected_at", "model_version", "audit_pool_size"])
    review_batch_selected.send(sender=ReviewBatch, project_id=batch.project_id, batch_id=batch.id)
    return batch
