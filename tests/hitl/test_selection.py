import numpy as np
import pytest

from hitl.errors import InvalidInput
from hitl.models import (
    LabelSource,
    Prediction,
    ReviewBatchStatus,
    ReviewReason,
    ReviewTask,
    UncertaintyScore,
)
from hitl.selectors import AuditSlice, pooled_accuracy, wilson_interval
from hitl.services.labels import label_submit
from hitl.services.selection import review_batch_request
from workers.ml.uncertainty import margin
from workers.pipelines.scoring import predictions_score
from workers.pipelines.selection import review_batch_select

pytestmark = pytest.mark.django_db


@pytest.fixture()
def ingested(ingest):
    result = ingest(range(60), concentration=0.3, seed=3)
    stored = {p.item_id: p.probability_array for p in Prediction.objects.all()}
    return result, np.stack([stored[item_id] for item_id in result.item_ids]).astype(np.float64)


def test_scoring_stores_every_method_once(ingested, version) -> None:
    result, probs = ingested
    assert predictions_score(model_version_id=version.id) == 60
    assert predictions_score(model_version_id=version.id) == 0
    assert UncertaintyScore.objects.count() == 60 * 3
    stored = dict(UncertaintyScore.objects.filter(method="margin").values_list("prediction__item_id", "value"))
    expected = margin(probs / probs.sum(axis=1, keepdims=True))
    for item_id, value in zip(result.item_ids, expected):
        assert stored[item_id] == pytest.approx(value, abs=1e-6)


def test_batch_takes_the_most_uncertain_plus_a_random_audit_slice(ingested, project) -> None:
    result, probs = ingested
    batch = review_batch_request(project=project, requested_by="t", size=10, strategy="margin", audit_fraction=0.2, seed=4)
    review_batch_select(batch_id=batch.id)
    batch.refresh_from_db()
    assert batch.status == ReviewBatchStatus.SELECTED
    tasks = list(batch.tasks.order_by("rank"))
    assert len(tasks) == 10
    strategy = [t for t in tasks if t.reason == ReviewReason.STRATEGY]
    audit = [t for t in tasks if t.reason == ReviewReason.AUDIT]
    assert len(strategy) == 8 and len(audit) == 2
    scores = margin(probs / probs.sum(axis=1, keepdims=True))
    top8 = {result.item_ids[i] for i in np.argsort(-scores)[:8]}
    assert {t.item_id for t in strategy} == top8
    assert [t.score for t in strategy] == sorted([t.score for t in strategy], reverse=True)
    assert all(t.score is None for t in audit) and not {t.item_id for t in audit} & top8


def test_selecting_twice_changes_nothing(ingested, project) -> None:
    batch = review_batch_request(project=project, requested_by="t", size=5)
    review_batch_select(batch_id=batch.id)
    first = list(ReviewTask.objects.values_list("id", "item_id"))
    review_batch_select(batch_id=batch.id)
    assert list(ReviewTask.objects.values_list("id", "item_id")) == first


def test_items_under_review_or_labeled_are_not_selected_again(ingested, project, reviewer) -> None:
    result, _ = ingested
    label_submit(item_id=result.item_ids[0], value="coat", source=LabelSource.WEB, reviewer=reviewer)
    first = review_batch_request(project=project, requested_by="t", size=30, audit_fraction=0.1)
    review_batch_select(batch_id=first.id)
    second = review_batch_request(project=project, requested_by="t", size=30, audit_fraction=0.1)
    review_batch_select(batch_id=second.id)
    chosen = list(ReviewTask.objects.values_list("item_id", flat=True))
    assert len(chosen) == len(set(chosen)) == 59
    assert result.item_ids[0] not in chosen
    third = review_batch_request(project=project, requested_by="t", size=5)
    review_batch_select(batch_id=third.id)
    third.refresh_from_db()
    assert third.status == ReviewBatchStatus.FAILED and "no unlabeled items" in third.error


def test_random_strategy_has_no_scores(ingested, project) -> None:
    batch = review_batch_request(project=project, requested_by="t", size=6, strategy="random", audit_fraction=0.5)
    review_batch_select(batch_id=batch.id)
    reasons = sorted(batch.tasks.values_list("reason", flat=True))
    assert reasons == ["audit"] * 3 + ["strategy"] * 3
    assert set(batch.tasks.values_list("score", flat=True)) == {None}


def test_selection_without_a_production_model_fails_clearly(project) -> None:
    batch = review_batch_request(project=project, requested_by="t", size=5)
    review_batch_select(batch_id=batch.id)
    batch.refresh_from_db()
    assert batch.status == ReviewBatchStatus.FAILED and "no production model" in batch.error


@pytest.mark.parametrize(("kwargs", "field"), [({"size": 0}, "size"), ({"strategy": "vibes"}, "strategy"),
                                               ({"audit_fraction": 1.5}, "audit_fraction")])
def test_bad_requests_are_refused(project, kwargs, field) -> None:
    with pytest.raises(InvalidInput) as error:
        review_batch_request(project=project, requested_by="t", **kwargs)
    assert error.value.errors[0].field == field


def test_audit_slice_is_a_uniform_sample_and_estimates_live_accuracy(ingested, project, reviewer) -> None:
    """The audit is drawn before the strategy picks, so uncertain items are as likely to be
    audited as any; its labels give each version's accuracy with a Wilson interval."""
    from hitl import selectors

    result, probs = ingested
    hits = np.zeros(60)
    for seed in range(40):
        batch = review_batch_request(project=project, requested_by="t", size=10, strategy="margin",
                                     audit_fraction=0.3, seed=seed)
        review_batch_select(batch_id=batch.id)
        for task in batch.tasks.filter(reason="audit"):
            hits[result.item_ids.index(task.item_id)] += 1
        ReviewTask.objects.filter(batch=batch).update(status="cancelled")
    top = np.argsort(-margin(probs / probs.sum(axis=1, keepdims=True)))[:7]
    assert hits[top].sum() > 0  # the strategy's favourites still turn up in audits
    assert hits.sum() == 40 * 3
    batch = review_batch_request(project=project, requested_by="t", size=10, audit_fraction=0.5, seed=99)
    review_batch_select(batch_id=batch.id)
    audited = list(batch.tasks.filter(reason="audit").select_related("prediction"))
    for i, task in enumerate(audited):  # the reviewer agrees with the model on 3 of 5
        value = task.prediction.predicted_label if i < 3 else next(
            label for label in project.labels if label != task.prediction.predicted_label)
        label_submit(item_id=task.item_id, value=value, source=LabelSource.WEB, reviewer=reviewer,
                     review_task_id=task.id)
    (estimate,) = selectors.audit_accuracy(project)
    assert (estimate.model_version, estimate.n, estimate.correct) == ("v1", 5, 3)
    assert estimate.low < 0.6 < estimate.high
    assert (estimate.slices, estimate.weighted) == (1, False)
    assert selectors.wilson_interval(3, 5) == pytest.approx((0.2307, 0.8824), abs=1e-3)
    batch.refresh_from_db()  # drawn when nothing was labeled or open: the version's 60 predictions
    assert batch.audit_pool_size == 60


def test_audit_pool_size_excludes_items_already_labeled_or_under_review(ingested, project, reviewer) -> None:
    first = review_batch_request(project=project, requested_by="t", size=10, audit_fraction=0.5, seed=1)
    review_batch_select(batch_id=first.id)
    second = review_batch_request(project=project, requested_by="t", size=10, audit_fraction=0.5, seed=2)
    review_batch_select(batch_id=second.id)
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.audit_pool_size, second.audit_pool_size) == (60, 50)  # the first batch's 10 are open
    no_audit = review_batch_request(project=project, requested_by="t", size=5, audit_fraction=0, seed=3)
    review_batch_select(batch_id=no_audit.id)
    no_audit.refresh_from_db()
    assert no_audit.audit_pool_size is None


def test_audit_slices_from_pools_of_different_sizes_are_weighted_by_pool() -> None:
    """A slice of 10 from a pool of 100 where the model was right 9 times, and a slice of 10 from a
    pool of 900 where it was right 5 times: the stream's accuracy is 0.1*0.9 + 0.9*0.5 = 0.54, not
    the unweighted 14/20 = 0.70."""
    estimate = pooled_accuracy("v1", [AuditSlice(10, 9, 100), AuditSlice(10, 5, 900)])
    assert estimate.weighted and estimate.slices == 2
    assert estimate.accuracy == pytest.approx(0.54)
    assert (estimate.n, estimate.correct) == (20, 14)
    assert estimate.low < 0.54 < estimate.high
    assert estimate.high - estimate.low > 0.3  # the big pool's 10 draws dominate the uncertainty
    # proportional sampling (pool/n the same) is self-weighting: the plain rate with Wilson
    plain = pooled_accuracy("v1", [AuditSlice(10, 9, 100), AuditSlice(90, 45, 900)])
    assert not plain.weighted and plain.accuracy == pytest.approx(54 / 100)
    assert (plain.low, plain.high) == pytest.approx(wilson_interval(54, 100))
    # a slice from before pool sizes were recorded: unweighted, as before
    legacy = pooled_accuracy("v1", [AuditSlice(10, 9, None), AuditSlice(10, 5, 900)])
    assert not legacy.weighted and legacy.accuracy == pytest.approx(0.70)


def test_weighted_audit_estimate_is_unbiased_where_the_plain_rate_is_not() -> None:
    """Simulate a stream whose pool grows 10x while the model gets worse on the new items: the
    weighted estimate's mean over many draws lands on the true accuracy, the pooled rate does not."""
    rng = np.random.default_rng(0)
    pools = [(200, 0.9), (2000, 0.6)]  # (size, true accuracy of the pool)
    truth = sum(size * acc for size, acc in pools) / sum(size for size, _ in pools)
    weighted, plain = [], []
    for _ in range(2000):
        slices = [AuditSlice(20, int(rng.binomial(20, acc)), size) for size, acc in pools]
        weighted.append(pooled_accuracy("v", slices).accuracy)
        plain.append(sum(s.correct for s in slices) / 40)
    assert abs(np.mean(weighted) - truth) < 0.005
    assert abs(np.mean(plain) - truth) > 0.1
