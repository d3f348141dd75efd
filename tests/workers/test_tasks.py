"""Every task is safe to run twice: run each one twice in-process and check nothing doubled."""

from __future__ import annotations

import numpy as np
import pytest
from django.test import override_settings

from hitl.models import (
    CycleStatus,
    EvaluationSnapshot,
    Item,
    ModelVersion,
    Prediction,
    ReviewTask,
    TrustEvent,
    UncertaintyScore,
)
from hitl.services.cycles import cycle_request
from hitl.services.ingestion import items_register
from hitl.services.selection import review_batch_request
from workers import tasks

pytestmark = pytest.mark.django_db


@pytest.fixture()
def ingested(ingest) -> list[int]:
    return ingest(range(40)).item_ids


@pytest.fixture()
def labeled_project(project, labeled_items):
    labeled_items(range(100), folder="train")
    project.gate_rules = {"first_model_needs_golden_set": False}
    project.save()
    return project


def test_score_predictions_is_idempotent(ingested, version) -> None:
    assert tasks.score_predictions(version.id) == 40
    assert tasks.score_predictions(version.id) == 0
    assert UncertaintyScore.objects.count() == 120


def test_select_review_batch_is_idempotent(ingested, project) -> None:
    batch = review_batch_request(project=project, requested_by="t", size=7)
    tasks.select_review_batch(batch.id)
    tasks.select_review_batch(batch.id)
    assert ReviewTask.objects.filter(batch=batch).count() == 7


def test_retrain_is_idempotent(labeled_project) -> None:
    cycle = cycle_request(project=labeled_project, requested_by="t")
    tasks.retrain(cycle.id)
    tasks.retrain(cycle.id)
    cycle.refresh_from_db()
    assert cycle.status == CycleStatus.EVALUATING and cycle.attempts == 1
    assert ModelVersion.objects.filter(project=labeled_project).count() == 1


def test_evaluate_is_idempotent(labeled_project) -> None:
    cycle = cycle_request(project=labeled_project, requested_by="t")
    tasks.retrain(cycle.id)
    tasks.evaluate(cycle.id)
    events = TrustEvent.objects.count()
    tasks.evaluate(cycle.id)
    cycle.refresh_from_db()
    assert cycle.status == CycleStatus.SUCCEEDED
    assert EvaluationSnapshot.objects.filter(cycle=cycle).count() == 1
    assert TrustEvent.objects.count() == events


def test_predict_items_is_idempotent(labeled_project, write_images) -> None:
    items_register(project=labeled_project, image_paths=write_images(range(100, 130), folder="pool"))
    cycle = cycle_request(project=labeled_project, requested_by="t")
    tasks.retrain(cycle.id)
    tasks.evaluate(cycle.id)
    version = ModelVersion.objects.get(project=labeled_project)
    assert tasks.predict_items(version.id) == 30  # only the 30 unlabeled items
    assert tasks.predict_items(version.id) == 0
    assert Prediction.objects.filter(model_version=version, deployment=None).count() == 30
    rows = np.stack([p.probability_array for p in Prediction.objects.filter(model_version=version)])
    np.testing.assert_allclose(rows.sum(axis=1), 1.0, atol=1e-5)


def test_requeue_stalled_work_is_idempotent(ingested, project, django_capture_on_commit_callbacks) -> None:
    cycle_request(project=project, requested_by="t")
    review_batch_request(project=project, requested_by="t", size=3)
    with override_settings(HITL_STALLED_AFTER_SECONDS=-1), django_capture_on_commit_callbacks() as sent:
        first = tasks.requeue_stalled_work()
        second = tasks.requeue_stalled_work()
    assert first == second == {"cycles": 1, "batches": 1, "scoring": 1}
    assert len(sent) == 6
    assert Item.objects.count() == 40


@pytest.mark.django_db(transaction=True)
def test_select_review_batch_in_parallel_fills_each_batch_once(ingest, project) -> None:
    """Two workers on the same batch, and a second batch of the same project at the same time:
    the selections take turns, each batch is filled once and no item is picked twice."""
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connections

    ingest(range(40))
    first = review_batch_request(project=project, requested_by="t", size=15)
    second = review_batch_request(project=project, requested_by="t", size=15)

    def select(batch_id: int) -> None:
        try:
            tasks.select_review_batch(batch_id)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(select, [first.id, first.id, second.id, second.id]))
    assert ReviewTask.objects.filter(batch=first).count() == ReviewTask.objects.filter(batch=second).count() == 15
    items = list(ReviewTask.objects.values_list("item_id", flat=True))
    assert len(items) == len(set(items)) == 30
