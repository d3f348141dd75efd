"""Agreement: blind double labeling, the conflicts queue a third person decides, Cohen's kappa and
per-reviewer agreement."""

from __future__ import annotations

import importlib
import json
from collections import Counter
from datetime import timedelta

import pytest
from django.apps import apps as django_apps
from django.db.utils import ConnectionHandler
from django.test import Client
from django.utils import timezone
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import cohen_kappa_score

from hitl.db import Median
from hitl.errors import Conflict
from hitl.models import (
    GoldenItem,
    Item,
    Label,
    LabelSource,
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
from hitl.services.labels import label_retract, label_submit, label_undo
from hitl.services.leases import review_leases_take
from hitl.services.projects import project_create
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
    ours = cohen_kappa(Counter(pairs))
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


def test_reviewer_stats_count_times_sources_and_the_last_day(project, tasks, people) -> None:
    rita, sam = people["rita"], people["sam"]
    predicted = [t.prediction.predicted_label for t in ReviewTask.objects.select_related("prediction").order_by("rank")]
    other = [next(v for v in project.labels if v != p) for p in predicted]
    labels = [label_submit(item_id=t.item_id, value=value, source=LabelSource.WEB, reviewer=rita, review_task_id=t.id,
                           lead_time_seconds=seconds)
              for t, value, seconds in zip(tasks[:3], [predicted[0], predicted[1], other[2]], [4.0, 30.0, 10.0])]
    Label.objects.filter(pk=labels[0].pk).update(created_at=timezone.now() - timedelta(days=2))
    sams = [label_submit(item_id=t.item_id, value=predicted[i], source=LabelSource.WEB, reviewer=sam,
                         review_task_id=t.id, lead_time_seconds=seconds)
            for i, t, seconds in zip((3, 4, 5), tasks[3:6], [2.0, 6.0, 9.0])]
    label_retract(label_id=sams[2].pk)
    untasked = Item.objects.filter(project=project).exclude(review_tasks__isnull=False).first()
    label_submit(item_id=untasked.id, value=project.labels[0], source=LabelSource.IMPORT, reviewer_name="importer")
    assert set(Label.objects.filter(project=project).values_list("model_value", flat=True)) >= {predicted[0], ""}
    stats = {s.reviewer: s for s in reviewer_stats(project)}
    assert set(stats) == {"rita", "sam"}  # imports are not a reviewer's work
    assert (stats["rita"].labels, stats["rita"].labels_24h, stats["rita"].median_seconds) == (3, 2, 10.0)
    assert (stats["rita"].with_model, stats["rita"].agreed_with_model) == (3, 2)
    assert (stats["sam"].labels, stats["sam"].median_seconds) == (2, 4.0)  # the retracted 9 s label is gone


def test_median_runs_on_sqlite() -> None:
    """The embedded default is SQLite: the reviewers page's median runs there through the MEDIAN
    aggregate hitl registers on each connection (PostgreSQL uses percentile_cont)."""
    sqlite = ConnectionHandler({"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}})["default"]
    try:
        with sqlite.schema_editor() as editor:
            editor.create_model(Label)
        with sqlite.constraint_checks_disabled(), sqlite.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO hitl_label (item_id, project_id, value, status, reviewer_name, source, model_value, "
                "external_id, created_at, lead_time_seconds) VALUES (1, 1, 'a', 'superseded', %s, 'web', '', '', "
                "'2026-01-01', %s)", [("rita", 4.0), ("rita", 30.0), ("rita", 10.0), ("sam", 2.0), ("sam", 6.0),
                                      ("sam", None), ("tom", None)])
        query = Label.objects.values("reviewer_name").annotate(m=Median("lead_time_seconds")).order_by("reviewer_name")
        sql, params = query.query.get_compiler(connection=sqlite).as_sql()
        with sqlite.cursor() as cursor:
            cursor.execute(sql, params)
            assert cursor.fetchall() == [("rita", 10.0), ("sam", 4.0), ("tom", None)]
    finally:
        sqlite.close()


def test_migration_fills_project_and_model_value_of_existing_labels(project, tasks, people) -> None:
    fill = importlib.import_module("hitl.migrations.0013_label_project_model_value").fill
    label = label_submit(item_id=tasks[0].item_id, value=project.labels[0], source=LabelSource.WEB,
                         reviewer=people["rita"], review_task_id=tasks[0].id)
    shown = tasks[0].prediction.predicted_label
    elsewhere = project_create(slug=f"{project.slug}-x", name="x", labels=["a", "b"])
    Label.objects.filter(pk=label.pk).update(project=elsewhere, model_value="")
    fill(django_apps, None)
    label.refresh_from_db()
    assert (label.project_id, label.model_value) == (project.id, shown)
