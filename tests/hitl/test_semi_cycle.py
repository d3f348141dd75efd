"""A cycle with semi-supervised training learns from the unlabeled train-split pool, records how
many pseudo-labels it used and with what threshold, and never turns a pseudo-label into a Label."""

from __future__ import annotations

import pytest

from hitl.models import CycleStatus, GoldenItem, Item, Label, Split, TrustEvent
from hitl.selectors import model_weights_file
from hitl.services.cycles import cycle_request, unlabeled_train_set
from hitl.services.ingestion import items_register
from hitl.services.projects import project_update
from tests.conftest import train_until_killed
from workers.ml.checkpoint import read_meta
from workers.pipelines.cycles import cycle_train

pytestmark = pytest.mark.django_db

SEMI = {"epochs": 3, "batch_size": 16, "semi_supervised": "fixmatch", "confidence_threshold": 0.5,
        "unlabeled_ratio": 2}


@pytest.fixture()
def pool(project, labeled_items, write_images) -> dict[str, list[int]]:
    """100 labeled items, 120 unlabeled ones, one of them reserved for the golden set."""
    labeled = labeled_items(range(100))
    unlabeled = items_register(project=project, image_paths=write_images(range(100, 220)))
    golden = Item.objects.filter(id__in=unlabeled, split=Split.TRAIN).order_by("id").first()
    GoldenItem.objects.create(project=project, item=golden, source="golden")
    return {"labeled": labeled, "unlabeled": unlabeled, "golden": [golden.id]}


def test_the_unlabeled_pool_is_unlabeled_train_items_without_golden_or_held_out_ones(project, pool) -> None:
    found = set(unlabeled_train_set(project, limit=10_000, seed=0).image_paths)
    expected = set(Item.objects.filter(id__in=pool["unlabeled"], split=Split.TRAIN)
                   .exclude(id__in=pool["golden"]).values_list("image", flat=True))
    held_out = set(Item.objects.filter(id__in=pool["unlabeled"], split=Split.HOLDOUT).values_list("image", flat=True))
    assert found == expected and held_out and not found & held_out  # the 20% held-out share is there, left out
    labeled_images = set(Item.objects.filter(id__in=pool["labeled"]).values_list("image", flat=True))
    assert not found & labeled_images
    sample = unlabeled_train_set(project, limit=10, seed=3)
    assert len(sample) == 10 and set(sample.image_paths) <= expected
    assert sample.image_paths == unlabeled_train_set(project, limit=10, seed=3).image_paths  # seeded


def test_a_semi_supervised_cycle_records_its_pseudo_labels_and_stores_none(project, pool) -> None:
    project = project_update(project_id=project.id, changes={"train_config": SEMI})
    labels_before = list(Label.objects.filter(item__project=project).values_list("id", "item_id", "value", "status"))
    cycle = cycle_request(project=project, requested_by="test")
    cycle_train(cycle_id=cycle.id)
    cycle.refresh_from_db()
    assert cycle.status == CycleStatus.EVALUATING, cycle.error
    semi = cycle.progress["semi_supervised"]
    pool_size = len(unlabeled_train_set(project, limit=10_000, seed=0))
    assert semi["method"] == "fixmatch" and semi["confidence_threshold"] == 0.5
    assert semi["unlabeled_pool"] == pool_size
    assert 0 < semi["pseudo_labeled"] <= pool_size
    # pseudo-labels never become labels: the label table is exactly as it was
    assert list(Label.objects.filter(item__project=project).values_list("id", "item_id", "value", "status")) \
        == labels_before
    meta = read_meta(model_weights_file(cycle.candidate_version)[0])
    assert meta.metrics["semi_supervised"] == semi
    trained = TrustEvent.objects.filter(project=project, kind="model_trained").get()
    assert trained.payload["semi_supervised"] == semi
    assert trained.payload["training_labels"] == len(pool["labeled"]) - Item.objects.filter(
        id__in=pool["labeled"], split=Split.HOLDOUT).count()  # the human labels only


def test_a_cycle_with_semi_supervision_off_reads_no_pool(project, pool) -> None:
    cycle = cycle_request(project=project, requested_by="test")
    cycle_train(cycle_id=cycle.id)
    cycle.refresh_from_db()
    assert cycle.status == CycleStatus.EVALUATING, cycle.error
    assert "semi_supervised" not in cycle.progress
    assert read_meta(model_weights_file(cycle.candidate_version)[0]).metrics["semi_supervised"] is None


@pytest.mark.parametrize("new_image", [False, True])
def test_a_semi_supervised_attempt_resumes_only_on_the_same_unlabeled_pool(project, pool, monkeypatch,
                                                                          write_images, new_image: bool) -> None:
    cycle = cycle_request(project=project, requested_by="test", train_config=SEMI)
    train_until_killed(monkeypatch, cycle.id, after_epoch=2)
    if new_image:  # an image arrives while the worker is down: the pool it trained on is gone
        items_register(project=project, image_paths=write_images(range(300, 330), folder="late"))
    cycle_train(cycle_id=cycle.id)
    cycle.refresh_from_db()
    assert cycle.status == CycleStatus.EVALUATING, cycle.error
    metrics = read_meta(model_weights_file(cycle.candidate_version)[0]).metrics
    assert metrics["resumed_from_epoch"] == (0 if new_image else 2)
    assert metrics["semi_supervised"]["unlabeled_pool"] == len(unlabeled_train_set(project, limit=10_000, seed=0))
