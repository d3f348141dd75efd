"""The golden set: random stratified proposals, reserved from training, frozen versions that
change only by an explicit recorded action, audit items joining only when never trained on."""

from __future__ import annotations

from collections import Counter

import pytest
from django.core.management import call_command

from hitl.errors import Conflict, InvalidInput
from hitl.models import (
    GoldenItem,
    GoldenSet,
    Item,
    LabelSource,
    Prediction,
    ReviewBatch,
    ReviewReason,
    ReviewTask,
    Split,
    TrustEvent,
)
from hitl.services.cycles import cycle_request, labeled_set
from hitl.services.golden import golden_eval_set, golden_set_freeze, golden_set_propose
from hitl.services.labels import label_submit
from hitl.services.selection import review_batch_request
from workers.pipelines.cycles import cycle_train
from workers.pipelines.selection import review_batch_select

pytestmark = pytest.mark.django_db


def reserve(project, item_ids: list[int]) -> None:
    GoldenItem.objects.bulk_create([GoldenItem(project=project, item_id=i, source="golden") for i in item_ids])


def label_all(project, item_ids: list[int], value: str | None = None) -> None:
    """A reviewer's labels (simulated): the golden set takes no import's label."""
    for item_id in item_ids:
        label_submit(item_id=item_id, value=value or project.labels[item_id % len(project.labels)],
                     source=LabelSource.SIMULATED, reviewer_name="rita")


def test_a_golden_proposal_is_a_random_stratified_review_batch_reserved_for_the_golden_set(project, ingest) -> None:
    ingest(range(60), concentration=0.3)
    batch = golden_set_propose(project=project, size=20, requested_by="otto", seed=7)
    review_batch_select(batch_id=batch.id)
    tasks = list(ReviewTask.objects.filter(batch=batch))
    assert len(tasks) == 20 and {t.reason for t in tasks} == {ReviewReason.GOLDEN}
    assert set(GoldenItem.objects.values_list("item_id", flat=True)) == {t.item_id for t in tasks}
    # proportional allocation: each predicted class gets its share of the 60-item pool, within one
    pool = Counter(Prediction.objects.filter(item__project=project).values_list("predicted_label", flat=True))
    picked = Counter(t.prediction.predicted_label for t in tasks)
    for label, count in pool.items():
        assert abs(picked[label] - 20 * count / 60) < 1, (label, picked[label], count)
    # reserved items are not offered again, neither by a strategy nor by an audit slice
    other = review_batch_request(project=project, requested_by="otto", size=40, strategy="random",
                                 audit_fraction=0.5, seed=3)
    review_batch_select(batch_id=other.id)
    assert not set(ReviewTask.objects.filter(batch=other).values_list("item_id", flat=True)) & {t.item_id for t in tasks}


def test_bad_proposal_sizes_are_refused(project) -> None:
    for size in (0, 10_001, "5", True):
        with pytest.raises(InvalidInput, match="size"):
            golden_set_propose(project=project, size=size, requested_by="otto")
    assert not ReviewBatch.objects.exists()


def test_golden_items_are_never_in_a_training_set(project, labeled_items) -> None:
    ids = labeled_items(range(60))
    train_ids = list(Item.objects.filter(id__in=ids, split=Split.TRAIN).values_list("id", flat=True))
    golden = train_ids[:15]
    reserve(project, golden)
    data = labeled_set(project, Split.TRAIN)
    assert len(data) == len(train_ids) - 15
    cycle = cycle_request(project=project, requested_by="test", train_config={"epochs": 1})
    cycle_train(cycle_id=cycle.id)
    cycle.refresh_from_db()
    trained_items = set(cycle.candidate_version.training_labels.values_list("item_id", flat=True))
    assert trained_items and not trained_items & set(golden)
    assert trained_items == set(train_ids) - set(golden)


def test_versions_are_frozen_and_new_ones_come_only_from_the_explicit_action(project, labeled_items) -> None:
    ids = labeled_items(range(30))
    reserve(project, ids[:10])
    label_all(project, ids[:10])  # reviewed: the imports' labels alone would not do
    with pytest.raises(InvalidInput, match="reason"):
        golden_set_freeze(project=project, actor="otto", reason=" ")
    v1 = golden_set_freeze(project=project, actor="otto", reason="first draw")
    assert v1.version == 1 and v1.item_ids == sorted(ids[:10])
    with pytest.raises(Conflict, match="already holds these 10 items"):
        golden_set_freeze(project=project, actor="otto", reason="again")
    # more golden items labeled: the frozen version does not change, the gate still uses v1
    reserve(project, ids[10:15])
    label_all(project, ids[10:15])
    v1.refresh_from_db()
    assert v1.item_ids == sorted(ids[:10])
    golden, data = golden_eval_set(project)
    assert golden == v1 and len(data) == 10
    v2 = golden_set_freeze(project=project, actor="otto", reason="grew by 5")
    assert v2.version == 2 and len(v2.item_ids) == 15
    assert golden_eval_set(project)[0] == v2 and GoldenSet.objects.get(pk=v1.pk).item_ids == sorted(ids[:10])
    events = TrustEvent.objects.filter(project=project, kind="golden_set_frozen").order_by("sequence")
    assert [(e.payload["version"], e.payload["n_items"], e.payload["added"]) for e in events] == [(1, 10, 10), (2, 15, 5)]
    assert events[1].payload["items_sha256"] == v2.items_sha256 != v1.items_sha256


def test_unlabeled_golden_items_wait_outside_the_version(project, write_images) -> None:
    from hitl.services.ingestion import items_register

    ids = items_register(project=project, image_paths=write_images(range(8)))
    reserve(project, ids)
    with pytest.raises(Conflict, match="no reviewed golden-set items yet"):
        golden_set_freeze(project=project, actor="otto", reason="nothing labeled")
    label_all(project, ids[:3])
    assert golden_set_freeze(project=project, actor="otto", reason="three").item_ids == sorted(ids[:3])


def test_audit_items_join_only_if_no_model_was_trained_on_them(project, ingest, labeled_items) -> None:
    ingest(range(40))
    batch = review_batch_request(project=project, requested_by="otto", size=20, strategy="margin",
                                 audit_fraction=0.5, seed=1)
    review_batch_select(batch_id=batch.id)
    audit = list(ReviewTask.objects.filter(batch=batch, reason=ReviewReason.AUDIT).values_list("item_id", flat=True))
    strategy = list(ReviewTask.objects.filter(batch=batch, reason=ReviewReason.STRATEGY).values_list("item_id", flat=True))
    assert len(audit) == 10
    label_all(project, audit + strategy)
    # a model trained on one audited training item: that item may not judge models any more
    labeled_items(range(100, 130))
    cycle = cycle_request(project=project, requested_by="test", train_config={"epochs": 1})
    cycle_train(cycle_id=cycle.id)
    trained = set(Item.objects.filter(labels__trained_models__isnull=False).values_list("id", flat=True))
    assert set(audit) & trained and set(audit) - trained  # some audited items were trained on, some not
    golden = golden_set_freeze(project=project, actor="otto", reason="bootstrap from audits", from_audit=True)
    assert set(golden.item_ids) == set(audit) - trained
    assert not set(golden.item_ids) & set(strategy)  # strategy picks are hard cases, never golden
    assert TrustEvent.objects.filter(kind="golden_set_frozen").get().payload["from_audit"] == len(set(audit) - trained)


def test_golden_set_command(project, ingest) -> None:
    from io import StringIO

    ingest(range(30))
    out = StringIO()
    call_command("hitl", "golden-set", "--project", project.slug, "--propose", "12", stdout=out)
    batch = ReviewBatch.objects.get(strategy="golden")
    assert f"queued golden-set review batch {batch.id}" in out.getvalue() and batch.size == 12
    review_batch_select(batch_id=batch.id)
    label_all(project, list(GoldenItem.objects.values_list("item_id", flat=True)))
    call_command("hitl", "golden-set", "--project", project.slug, "--freeze", "--reason", "first", stdout=out)
    assert "froze golden set v1: 12 items" in out.getvalue()
    call_command("hitl", "golden-set", "--project", project.slug, stdout=out)
    assert "golden set v1: 12 items" in out.getvalue()
