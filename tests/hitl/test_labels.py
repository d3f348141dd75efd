import pytest

from hitl.errors import InvalidInput
from hitl.models import Label, LabelSource, LabelStatus, ReviewBatch, ReviewTask, ReviewTaskStatus
from hitl.services.ingestion import items_register
from hitl.services.labels import label_retract, label_submit, review_task_skip

pytestmark = pytest.mark.django_db


@pytest.fixture()
def item_id(project, write_images) -> int:
    return items_register(project=project, image_paths=write_images([0]))[0]


def test_correction_keeps_history(item_id, reviewer) -> None:
    first = label_submit(item_id=item_id, value="coat", source=LabelSource.WEB, reviewer=reviewer)
    second = label_submit(item_id=item_id, value="shirt", source=LabelSource.WEB, reviewer=reviewer)
    first.refresh_from_db()
    assert first.status == LabelStatus.SUPERSEDED
    assert second.status == LabelStatus.CURRENT and second.previous == first
    assert list(Label.objects.filter(item_id=item_id).order_by("id").values_list("value", "status")) == [
        ("coat", "superseded"), ("shirt", "current")]


def test_resubmitting_the_current_label_is_a_no_op(item_id, reviewer) -> None:
    first = label_submit(item_id=item_id, value="coat", source=LabelSource.WEB, reviewer=reviewer)
    again = label_submit(item_id=item_id, value="coat", source=LabelSource.WEB, reviewer=reviewer)
    assert again.pk == first.pk and Label.objects.count() == 1


def test_another_reviewer_confirming_is_recorded(item_id, reviewer, operator) -> None:
    label_submit(item_id=item_id, value="coat", source=LabelSource.WEB, reviewer=reviewer)
    label_submit(item_id=item_id, value="coat", source=LabelSource.WEB, reviewer=operator)
    assert list(Label.objects.order_by("id").values_list("reviewer_name", "status")) == [
        ("rita", "superseded"), ("otto", "current")]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"value": "zebra"}, "value"), ({"value": "coat", "source": "fax"}, "source"),
     ({"value": "coat", "lead_time_seconds": -1}, "lead_time_seconds"), ({"value": "coat", "review_task_id": 999}, "review_task")],
)
def test_bad_labels_are_refused(item_id, reviewer, kwargs, field) -> None:
    arguments = {"item_id": item_id, "source": LabelSource.WEB, "reviewer": reviewer, **kwargs}
    with pytest.raises(InvalidInput) as error:
        label_submit(**arguments)
    assert error.value.errors[0].field == field
    assert Label.objects.count() == 0


def test_unknown_item_and_missing_reviewer(item_id) -> None:
    with pytest.raises(InvalidInput, match="no item with id"):
        label_submit(item_id=10**9, value="coat", source=LabelSource.API, reviewer_name="x")
    with pytest.raises(InvalidInput, match="needs a reviewer"):
        label_submit(item_id=item_id, value="coat", source=LabelSource.API)


def test_retracting_restores_the_previous_label(item_id, reviewer) -> None:
    first = label_submit(item_id=item_id, value="coat", source=LabelSource.WEB, reviewer=reviewer)
    second = label_submit(item_id=item_id, value="shirt", source=LabelSource.LABEL_STUDIO, reviewer_name="ls-user")
    label_retract(label_id=second.id)
    label_retract(label_id=second.id)  # twice is harmless
    first.refresh_from_db()
    second.refresh_from_db()
    assert second.status == LabelStatus.RETRACTED and second.retracted_at is not None
    assert first.status == LabelStatus.CURRENT


def test_labeling_closes_the_open_review_task(item_id, project, reviewer) -> None:
    batch = ReviewBatch.objects.create(project=project, strategy="margin", size=1, audit_fraction=0, seed=1,
                                       requested_by="t")
    task = ReviewTask.objects.create(batch=batch, item_id=item_id, reason="strategy", strategy="margin", rank=1)
    label = label_submit(item_id=item_id, value="bag", source=LabelSource.WEB, reviewer=reviewer)
    task.refresh_from_db()
    assert task.status == ReviewTaskStatus.DONE and label.review_task == task


def test_skipping_a_task(item_id, project) -> None:
    batch = ReviewBatch.objects.create(project=project, strategy="margin", size=1, audit_fraction=0, seed=1,
                                       requested_by="t")
    task = ReviewTask.objects.create(batch=batch, item_id=item_id, reason="strategy", strategy="margin", rank=1)
    review_task_skip(review_task_id=task.id)
    task.refresh_from_db()
    assert task.status == ReviewTaskStatus.SKIPPED and Label.objects.count() == 0
