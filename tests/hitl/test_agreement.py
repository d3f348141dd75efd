"""Agreement: blind double labeling, the conflicts queue a third person decides, Cohen's kappa and
per-reviewer agreement."""

from __future__ import annotations

import json

import pytest
from django.test import Client
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import cohen_kappa_score

from hitl.errors import Conflict
from hitl.models import (
    GoldenItem,
    Label,
    LabelStatus,
    ProjectRole,
    ReviewAnswer,
    ReviewTask,
    ReviewTaskStatus,
)
from hitl.selectors import cohen_kappa, reviewer_stats
from hitl.services.agreement import (
    _draw,
    review_answer_submit,
    review_answer_withdraw,
    review_conflict_resolve,
    review_task_needs_two,
)
from hitl.services.cycles import labeled_set
from hitl.services.labels import label_undo
from hitl.services.leases import review_leases_take
from hitl.services.selection import review_batch_request
from tests.conftest import member
from workers.pipelines.selection import review_batch_select

pytestmark = pytest.mark.django_db


@pytest.fixture()
def tasks(project, ingest) -> list[ReviewTask]:
    ingest(range(10))
    batch = review_batch_request(project=project, requested_by="t", size=6, audit_fraction=0)
    review_batch_select(batch_id=batch.id)
    return list(batch.tasks.select_related("item").order_by("rank"))


@pytest.fixture()
def people(project, reviewer):
    return {"rita": reviewer, "sam": member(project, "sam", ProjectRole.REVIEWER),
            "otto": member(project, "otto", ProjectRole.ML_ENGINEER)}


@pytest.fixture()
def double(project):
    project.double_label_fraction = 1.0
    project.save(update_fields=["double_label_fraction"])
    return project


def current(task: ReviewTask) -> Label | None:
    return Label.objects.filter(item_id=task.item_id, status=LabelStatus.CURRENT).first()


def answer(task: ReviewTask, user, value: str):
    return review_answer_submit(review_task_id=task.id, reviewer=user, value=value)


def test_two_blind_answers_that_agree_make_the_label(double, tasks, people) -> None:
    task = tasks[0]
    review_leases_take(project=double, reviewer=people["rita"], count=1)
    first = answer(task, people["rita"], "bag")
    assert first.outcome == "waiting" and first.label is None and current(task) is None
    task.refresh_from_db()
    assert task.status == ReviewTaskStatus.OPEN and task.leased_to is None  # free for the second reviewer
    assert task.id not in {t.id for t in review_leases_take(project=double, reviewer=people["rita"], count=6)}
    with pytest.raises(Conflict, match="answered item"):
        answer(task, people["rita"], "coat")  # nor can she answer it twice
    assert review_leases_take(project=double, reviewer=people["sam"], count=1)[0].id == task.id
    second = answer(task, people["sam"], "bag")
    assert second.outcome == "agreed" and current(task).value == "bag" and current(task).reviewer == people["sam"]
    task.refresh_from_db()
    assert task.status == ReviewTaskStatus.DONE


def test_disagreement_goes_to_a_third_person_whose_decision_is_trained_on(double, tasks, people) -> None:
    task = tasks[0]
    answer(task, people["rita"], "bag")
    assert answer(task, people["sam"], "coat").outcome == "conflict"
    task.refresh_from_db()
    assert task.status == ReviewTaskStatus.CONFLICT and current(task) is None
    for user in (people["rita"], people["sam"]):
        with pytest.raises(Conflict, match="a third person decides"):
            review_conflict_resolve(review_task_id=task.id, decider=user, value="bag")
    decision = review_conflict_resolve(review_task_id=task.id, decider=people["otto"], value="coat")
    task.refresh_from_db()
    assert task.status == ReviewTaskStatus.DONE and current(task) == decision and decision.reviewer == people["otto"]
    if task.item.split == "train":
        assert decision.id in labeled_set(double, "train").label_ids
    with pytest.raises(Conflict, match="no open conflict"):
        review_conflict_resolve(review_task_id=task.id, decider=people["otto"], value="bag")


def test_one_answer_is_enough_outside_the_share_and_golden_items_always_take_two(project, tasks, people) -> None:
    assert answer(tasks[0], people["rita"], "bag").outcome == "labeled"
    GoldenItem.objects.create(project=project, item=tasks[1].item, source="golden")
    assert answer(tasks[1], people["rita"], "bag").outcome == "waiting"


def test_the_share_of_double_labeled_tasks_is_the_setting() -> None:
    drawn = [_draw(task_id) for task_id in range(1, 20_001)]
    assert abs(sum(d < 0.3 for d in drawn) / len(drawn) - 0.3) < 0.015
    assert _draw(7) == _draw(7)  # fixed per task


def test_needs_two_follows_the_fraction(project, tasks) -> None:
    assert not any(review_task_needs_two(t, fraction=0.0) for t in tasks)
    assert all(review_task_needs_two(t, fraction=1.0) for t in tasks)


def test_a_blind_answer_can_be_withdrawn_until_the_second_arrives(double, tasks, people) -> None:
    first = answer(tasks[0], people["rita"], "bag").answer
    task = review_answer_withdraw(answer_id=first.id, reviewer=people["rita"])
    assert task.leased_to == people["rita"] and not ReviewAnswer.objects.exists()
    first = answer(tasks[0], people["rita"], "shirt").answer
    with pytest.raises(Conflict, match="only your own"):
        review_answer_withdraw(answer_id=first.id, reviewer=people["sam"])
    answer(tasks[0], people["sam"], "shirt")
    with pytest.raises(Conflict, match="your answer stands"):
        review_answer_withdraw(answer_id=first.id, reviewer=people["rita"])


def test_undoing_an_agreed_label_takes_back_only_the_undoers_answer(double, tasks, people) -> None:
    answer(tasks[0], people["rita"], "bag")
    agreed = answer(tasks[0], people["sam"], "bag").label
    reopened = label_undo(label_id=agreed.id, reviewer=people["sam"])
    assert reopened.id == tasks[0].id and reopened.status == ReviewTaskStatus.OPEN
    assert list(ReviewAnswer.objects.values_list("reviewer__username", "value")) == [("rita", "bag")]
    assert answer(tasks[0], people["sam"], "coat").outcome == "conflict"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcd"), st.sampled_from("abcd")), min_size=1, max_size=60))
def test_cohen_kappa_matches_scikit_learn(pairs) -> None:
    ours = cohen_kappa(pairs)
    first, second = zip(*pairs)
    if ours is None:  # undefined: both raters gave a single, identical label throughout
        assert len(set(first) | set(second)) == 1
        return
    assert ours == pytest.approx(cohen_kappa_score(first, second), abs=1e-12)


def test_reviewer_stats(double, tasks, people) -> None:
    predicted = {t.id: t.prediction.predicted_label for t in ReviewTask.objects.select_related("prediction")}
    other = {t.id: next(label for label in double.labels if label != predicted[t.id]) for t in tasks}
    # rita and sam answer four items blind: they agree on three (two of them the model's label)
    for task, (rita, sam) in zip(tasks[:4], [(predicted, predicted), (predicted, predicted), (other, other),
                                             (predicted, other)]):
        answer(task, people["rita"], rita[task.id])
        answer(task, people["sam"], sam[task.id])
    stats = {s.reviewer: s for s in reviewer_stats(double)}
    pairs = [(predicted[t.id], predicted[t.id]) for t in tasks[:2]] + [(other[tasks[2].id],) * 2] + [
        (predicted[tasks[3].id], other[tasks[3].id])]
    assert stats["rita"].paired == stats["sam"].paired == 4 and stats["rita"].agreed == 3
    assert stats["rita"].kappa == pytest.approx(cohen_kappa_score(*zip(*pairs)))
    assert (stats["sam"].labels, stats["sam"].with_model, stats["sam"].agreed_with_model) == (3, 3, 2)
    assert stats["rita"].labels == 0  # the agreed labels are the second reviewer's


def _post(client: Client, url: str, body: dict):
    return client.post(url, json.dumps(body), content_type="application/json")


def test_the_pages_double_labeling_conflicts_and_reviewers(client, double, tasks, people) -> None:
    rita, sam = Client(), Client()
    rita.force_login(people["rita"])
    sam.force_login(people["sam"])
    task = _post(rita, f"/projects/{double.slug}/label/lease", {}).json()["tasks"][0]
    assert task["blind"] is True
    first = _post(rita, task["answer_url"], {"value": "bag"}).json()
    assert first["outcome"] == "waiting" and "blind" in first["message"] and first["undo"]["answer"]
    assert _post(rita, first["undo"]["url"], {}).json()["task"]["id"] == task["id"]  # withdrawn, back to her
    _post(rita, task["answer_url"], {"value": "bag"})
    leased = _post(sam, f"/projects/{double.slug}/label/lease", {}).json()["tasks"]
    assert leased[0]["id"] == task["id"]
    assert _post(sam, task["answer_url"], {"value": "coat"}).json()["outcome"] == "conflict"

    otto = Client()
    otto.force_login(people["otto"])
    page = otto.get(f"/projects/{double.slug}/conflicts/").content.decode()
    assert page.count('class="card conflict"') == 1 and "by rita" in page and "by sam" in page
    refused = rita.post(f"/review-tasks/{task['id']}/decide", {"value": "bag"}, follow=True).content.decode()
    assert "a third person decides" in refused
    decided = otto.post(f"/review-tasks/{task['id']}/decide", {"value": "coat"}, follow=True).content.decode()
    assert "Decided &#x27;coat&#x27;" in decided and "No conflicts." in decided
    stats = otto.get(f"/projects/{double.slug}/reviewers/").content.decode()
    table = stats.split('id="reviewer-stats"')[1]
    assert "<td>otto</td>" in table and "<td>rita</td>" in table and "<td>sam</td>" in table


def test_the_share_is_a_checked_setting(project) -> None:
    from django.core.management import CommandError, call_command

    call_command("hitl", "configure-project", "--project", project.slug, "--double-label-fraction", "0.25")
    project.refresh_from_db()
    assert project.double_label_fraction == 0.25
    with pytest.raises(CommandError, match="double_label_fraction: must be between 0 and 1"):
        call_command("hitl", "configure-project", "--project", project.slug, "--double-label-fraction", "1.5")
