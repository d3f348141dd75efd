"""Strategies that run the model (BALD, committee, core-set, BADGE, hybrid) through the
selection service, on real Fashion-MNIST items and a real (small) model."""

from __future__ import annotations

from collections import Counter

import pytest

from hitl.models import Prediction, ReviewBatchStatus, ReviewReason, ReviewTask, ReviewTaskStatus
from hitl.services.ingestion import items_register
from hitl.services.selection import review_batch_request, selection_task
from tests.conftest import make_version
from workers.pipelines.inference import model_predict_items
from workers.pipelines.selection import review_batch_select

pytestmark = pytest.mark.django_db


@pytest.fixture()
def pool(project, write_images, labeled_items):
    """60 items: 10 labeled, 50 in the pool, with predictions of production v1."""
    ids = labeled_items(range(10)) + items_register(project=project, image_paths=write_images(range(10, 60)))
    version = make_version(project, "v1", promote=True)
    model_predict_items(model_version_id=version.id)
    return ids


@pytest.mark.parametrize("strategy", ["bald", "coreset", "badge", "hybrid"])
def test_model_strategies_select_scored_unlabeled_items(project, pool, labeled_items, strategy) -> None:
    project.mc_samples = 5
    project.save()
    labeled_since = set(labeled_items(range(10, 30)))  # labeled after v1 predicted them: still in its predictions
    assert labeled_since == set(pool[10:30])
    batch = review_batch_request(project=project, requested_by="t", size=10, strategy=strategy, audit_fraction=0.2)
    review_batch_select(batch_id=batch.id)
    batch.refresh_from_db()
    assert batch.status == ReviewBatchStatus.SELECTED, batch.error
    tasks = list(batch.tasks.order_by("rank"))
    assert len(tasks) == 10 and len({t.item_id for t in tasks}) == 10
    assert not {t.item_id for t in tasks} & labeled_since  # labeled items are never picked
    picked = [t for t in tasks if t.reason == ReviewReason.STRATEGY]
    assert len(picked) == 8 and all(t.strategy == strategy for t in tasks)
    assert all(t.score is not None for t in picked[1:])  # core-set's very first pick may have no score
    assert all(t.prediction.model_version.name == "v1" for t in tasks)


def test_items_under_review_are_covered_not_picked(project, pool) -> None:
    """Core-set counts items under review as covered: the second batch's first pick is no farther
    from them than the first batch's last pick was (k-center greedy only shrinks distances)."""
    first = review_batch_request(project=project, requested_by="t", size=15, strategy="coreset", audit_fraction=0)
    review_batch_select(batch_id=first.id)
    second = review_batch_request(project=project, requested_by="t", size=15, strategy="coreset", audit_fraction=0)
    review_batch_select(batch_id=second.id)
    first_scores = list(first.tasks.order_by("rank").values_list("score", flat=True))
    second_scores = list(second.tasks.order_by("rank").values_list("score", flat=True))
    assert second_scores[0] <= first_scores[-1] + 1e-4
    assert first_scores == sorted(first_scores, reverse=True)
    items = list(ReviewTask.objects.filter(status=ReviewTaskStatus.OPEN).values_list("item_id", flat=True))
    assert len(items) == len(set(items)) == 30


def test_committee_needs_two_versions_that_served(project, pool) -> None:
    batch = review_batch_request(project=project, requested_by="t", size=5, strategy="committee")
    review_batch_select(batch_id=batch.id)
    batch.refresh_from_db()
    assert batch.status == ReviewBatchStatus.FAILED and "at least two model versions" in batch.error
    make_version(project, "v2", seed=1, promote=True)
    from hitl.models import ModelVersion

    v2 = ModelVersion.objects.get(project=project, name="v2")
    model_predict_items(model_version_id=v2.id)
    batch = review_batch_request(project=project, requested_by="t", size=5, strategy="committee", audit_fraction=0)
    review_batch_select(batch_id=batch.id)
    batch.refresh_from_db()
    assert batch.status == ReviewBatchStatus.SELECTED and batch.model_version == v2
    assert batch.tasks.count() == 5


def test_class_balance_with_stored_scores(project, pool) -> None:
    project.class_balance = True
    project.save()
    batch = review_batch_request(project=project, requested_by="t", size=12, strategy="entropy", audit_fraction=0)
    review_batch_select(batch_id=batch.id)
    batch.refresh_from_db()
    predicted = Counter(t.prediction.predicted_label for t in batch.tasks.select_related("prediction"))
    assert batch.status == ReviewBatchStatus.SELECTED and sum(predicted.values()) == 12
    candidates = Counter(Prediction.objects.filter(item_id__in=pool[10:]).values_list("predicted_label", flat=True))
    assert len(candidates) >= 2  # else there is nothing to balance
    assert predicted == fair_shares(12, candidates)


def fair_shares(total: int, candidates: Counter) -> Counter:
    """Round-robin over the classes; a class with too few candidates leaves its share to the others."""
    shares: Counter = Counter()
    total = min(total, sum(candidates.values()))
    while total:
        for label in sorted(candidates):
            if total and shares[label] < candidates[label]:
                shares[label] += 1
                total -= 1
    return shares


def test_model_strategies_go_to_the_gpu_queue() -> None:
    assert selection_task("bald").endswith("with_model") and selection_task("hybrid").endswith("with_model")
    assert selection_task("margin") == selection_task("random") == "workers.tasks.select_review_batch"
