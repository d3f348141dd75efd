"""Keyboard-first review: leases against the real PostgreSQL, the JSON views the page calls, undo,
the item page, and the page's static script under the CSP."""

from __future__ import annotations

import json
import re
import threading
from datetime import timedelta

import pytest
from django.contrib.staticfiles import finders
from django.db import connection, transaction
from django.templatetags.static import static
from django.test import Client
from django.utils import timezone

from hitl.errors import Conflict
from hitl.models import Label, LabelSource, LabelStatus, ProjectRole, ReviewTask, ReviewTaskStatus
from hitl.services.labels import label_submit, label_undo, review_task_skip
from hitl.services.leases import review_leases_take
from hitl.services.selection import review_batch_request
from tests.conftest import make_version, member
from workers.pipelines.selection import review_batch_select

pytestmark = pytest.mark.django_db


@pytest.fixture()
def open_tasks(project, ingest) -> list[ReviewTask]:
    ingest(range(12))
    batch = review_batch_request(project=project, requested_by="t", size=8, audit_fraction=0.25)
    review_batch_select(batch_id=batch.id)
    return list(batch.tasks.order_by("rank"))


@pytest.fixture()
def second_reviewer(project):
    return member(project, "sam", ProjectRole.REVIEWER)


def _ids(tasks: list[ReviewTask]) -> list[int]:
    return [task.id for task in tasks]


def test_two_reviewers_get_different_items_and_keep_their_own(project, open_tasks, reviewer, second_reviewer,
                                                              settings) -> None:
    settings.HITL_REVIEW_LEASE_ITEMS = 3
    rita = review_leases_take(project=project, reviewer=reviewer)
    sam = review_leases_take(project=project, reviewer=second_reviewer)
    assert len(rita) == len(sam) == 3 and not set(_ids(rita)) & set(_ids(sam))
    assert review_leases_take(project=project, reviewer=reviewer) == rita  # renewed, same items, same order
    queue_order = list(ReviewTask.objects.filter(status="open").order_by("batch__created_at", "rank")
                       .values_list("id", flat=True))
    assert _ids(rita) == queue_order[:3] and _ids(sam) == queue_order[3:6]
    leased = ReviewTask.objects.get(pk=rita[0].id)
    assert leased.leased_to == reviewer and leased.lease_expires_at > timezone.now() + timedelta(seconds=170)


def test_an_expired_lease_goes_to_the_next_reviewer(project, open_tasks, reviewer, second_reviewer) -> None:
    rita = review_leases_take(project=project, reviewer=reviewer, count=2)
    ReviewTask.objects.filter(pk__in=_ids(rita)).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert _ids(review_leases_take(project=project, reviewer=second_reviewer, count=2)) == _ids(rita)
    assert set(_ids(review_leases_take(project=project, reviewer=reviewer, count=2))).isdisjoint(_ids(rita))


def test_another_reviewers_lease_refuses_their_label_and_skip(project, open_tasks, reviewer,
                                                              second_reviewer) -> None:
    leased = review_leases_take(project=project, reviewer=reviewer, count=len(open_tasks))
    task = next(task for task in leased if task.item.split == "train")  # held-out items need their task
    with pytest.raises(Conflict, match="in front of rita"):
        label_submit(item_id=task.item_id, value="bag", source=LabelSource.WEB, reviewer=second_reviewer,
                     review_task_id=task.id)
    with pytest.raises(Conflict, match="in front of rita"):
        label_submit(item_id=task.item_id, value="bag", source=LabelSource.API, reviewer=second_reviewer)
    with pytest.raises(Conflict):
        review_task_skip(review_task_id=task.id, reviewer=second_reviewer)
    assert not Label.objects.filter(item_id=task.item_id).exists()
    # Label Studio's annotators are no hitl users: a lease does not turn their annotation away
    label_submit(item_id=task.item_id, value="coat", source=LabelSource.LABEL_STUDIO, reviewer_name="ann",
                 review_task_id=task.id)
    assert Label.objects.get(item_id=task.item_id).value == "coat"


@pytest.mark.django_db(transaction=True)
def test_concurrent_reviewers_never_lease_the_same_item(project, open_tasks, reviewer, second_reviewer) -> None:
    """While one reviewer's lease transaction still holds its rows, the other's does not wait and
    gets other items (SKIP LOCKED); committed leases are then respected."""
    holding, release, results, errors = threading.Event(), threading.Event(), {}, []

    def slow_rita() -> None:
        try:
            with transaction.atomic():
                results["rita"] = _ids(review_leases_take(project=project, reviewer=reviewer, count=3))
                holding.set()
                release.wait(10)
        except Exception as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
        finally:
            connection.close()

    def sam() -> None:
        try:
            holding.wait(10)
            results["sam"] = _ids(review_leases_take(project=project, reviewer=second_reviewer, count=3))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=slow_rita), threading.Thread(target=sam)]
    threads[0].start()
    threads[1].start()
    threads[1].join(10)
    assert not threads[1].is_alive(), "the second reviewer waited for the first one's locks"
    release.set()
    threads[0].join(10)
    assert errors == []
    assert len(results["rita"]) == len(results["sam"]) == 3 and not set(results["rita"]) & set(results["sam"])
    again = _ids(review_leases_take(project=project, reviewer=second_reviewer, count=8))
    assert set(again).isdisjoint(results["rita"]) and again[:3] == results["sam"]


@pytest.mark.django_db(transaction=True)
def test_two_reviewers_racing_through_the_queue_label_each_item_once(project, open_tasks, reviewer,
                                                                      second_reviewer) -> None:
    """Both reviewers take one item at a time and label it as fast as they can, at the same time,
    until the queue is empty: every item gets exactly one label, and no one is refused."""
    start, labeled, errors = threading.Barrier(2), {}, []

    def work(user) -> None:
        try:
            start.wait(10)
            while tasks := review_leases_take(project=project, reviewer=user, count=1):
                label_submit(item_id=tasks[0].item_id, value="bag", source=LabelSource.WEB, reviewer=user,
                             review_task_id=tasks[0].id)
                labeled.setdefault(user.username, []).append(tasks[0].id)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=work, args=(user,)) for user in (reviewer, second_reviewer)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    done = [task for tasks in labeled.values() for task in tasks]
    assert sorted(done) == sorted(_ids(open_tasks))  # each task once, by one of the two
    assert Label.objects.filter(item__project=project).count() == len(open_tasks)
    assert not ReviewTask.objects.filter(status=ReviewTaskStatus.OPEN).exists()


def _post(client: Client, url: str, body: dict | None = None):
    return client.post(url, json.dumps(body or {}), content_type="application/json")


def test_the_page_labels_skips_and_undoes_through_json(client, project, open_tasks, reviewer) -> None:
    client.force_login(reviewer)
    leased = _post(client, f"/projects/{project.slug}/label/lease").json()
    assert leased["waiting"] == len(open_tasks) and len(leased["tasks"]) == 3
    first, second = leased["tasks"][:2]
    assert first["image_url"] == f"/api/v1/items/{first['item_id']}/image"
    assert first["reason"] in {"strategy", "audit"} and first["prediction"]["model_version"] == "v1"

    answer = _post(client, first["answer_url"], {"value": first["prediction"]["label"], "lead_time_seconds": 2.5})
    assert answer.status_code == 200 and answer.json()["message"].startswith("Accepted")
    label = Label.objects.get(pk=answer.json()["label"]["id"])
    assert (label.value, label.source, label.reviewer, label.lead_time_seconds) == (
        first["prediction"]["label"], "web", reviewer, 2.5)
    assert _post(client, first["answer_url"], {"value": "bag"}).status_code == 409  # already reviewed
    assert _post(client, second["answer_url"], {"skip": True}).json()["outcome"] == "skipped"

    undone = _post(client, answer.json()["undo"]["url"])
    assert undone.status_code == 200 and undone.json()["task"]["id"] == first["id"]
    label.refresh_from_db()
    task = ReviewTask.objects.get(pk=first["id"])
    assert label.status == LabelStatus.RETRACTED and task.status == ReviewTaskStatus.OPEN
    assert task.leased_to == reviewer  # back in front of whoever undid it
    assert _post(client, answer.json()["undo"]["url"]).status_code == 409  # once
    relabel = _post(client, first["answer_url"], {"value": "coat"})
    assert relabel.status_code == 200
    assert Label.objects.get(item_id=first["item_id"], status=LabelStatus.CURRENT).value == "coat"


def test_bad_answers_are_400s_that_write_nothing(client, project, open_tasks, reviewer) -> None:
    client.force_login(reviewer)
    task = _post(client, f"/projects/{project.slug}/label/lease").json()["tasks"][0]
    for body, field in [({"value": "zebra"}, "value"), ({"value": 3}, "value"), ({}, "value")]:
        response = _post(client, task["answer_url"], body)
        assert response.status_code == 400 and response.json()["errors"][0]["field"] == field
    response = client.post(task["answer_url"], "{not json", content_type="application/json")
    assert response.status_code == 400 and "malformed JSON" in response.json()["detail"]
    for raw, what in [('["bag"]', "JSON object"), ('{"value": "bag\\u0000"}', "NUL"),
                      ('{"value": "bag", "value": "coat"}', "more than once")]:  # hitl's one JSON policy
        response = client.post(task["answer_url"], raw, content_type="application/json")
        assert response.status_code == 400 and what in response.json()["detail"], response.json()
    assert not Label.objects.exists() and ReviewTask.objects.get(pk=task["id"]).status == ReviewTaskStatus.OPEN


def test_a_reviewer_cannot_answer_or_undo_for_another(client, project, open_tasks, reviewer,
                                                      second_reviewer) -> None:
    client.force_login(reviewer)
    task = _post(client, f"/projects/{project.slug}/label/lease").json()["tasks"][0]
    other = Client()
    other.force_login(second_reviewer)
    refused = _post(other, task["answer_url"], {"value": "bag"})
    assert refused.status_code == 409 and "in front of rita" in refused.json()["detail"]
    label_id = _post(client, task["answer_url"], {"value": "bag"}).json()["label"]["id"]
    refused = _post(other, f"/labels/{label_id}/undo")
    assert refused.status_code == 409 and "only your own" in refused.json()["detail"]
    with pytest.raises(Conflict):
        label_undo(label_id=label_id, reviewer=second_reviewer)
    assert Label.objects.get(pk=label_id).status == LabelStatus.CURRENT


def test_the_old_queue_reports_a_leased_item_instead_of_labeling_it(client, project, open_tasks, reviewer,
                                                                     second_reviewer) -> None:
    task = review_leases_take(project=project, reviewer=reviewer, count=1)[0]
    client.force_login(second_reviewer)
    response = client.post(f"/review-tasks/{task.id}/label", {"value": "bag"}, follow=True)
    assert "in front of rita" in response.content.decode() and not Label.objects.exists()


def test_the_review_page_uses_only_its_static_script(client, project, reviewer) -> None:
    client.force_login(reviewer)
    response = client.get(f"/projects/{project.slug}/label/")
    page = response.content.decode()
    assert response.status_code == 200 and "script-src 'self'" in response["Content-Security-Policy"]
    scripts = re.findall(r"<script([^>]*)>", page)
    assert f'src="{static("hitl/review.js")}"' in page
    assert all("src=" in attrs or 'type="application/json"' in attrs for attrs in scripts), scripts
    assert not re.search(r"\son[a-z]+=", page)  # no inline event handlers
    assert "<kbd>1</kbd> t-shirt/top" in page and "<kbd>9</kbd> bag" in page
    script = client.get(static("hitl/review.js"))
    assert script.status_code == 200 and b"review-labels" in b"".join(script.streaming_content)
    assert finders.find("hitl/review.js") and finders.find("hitl/review.css")


def test_item_page_shows_predictions_history_and_batches(client, project, open_tasks, reviewer,
                                                         deployment_and_token) -> None:
    from hitl.models import Prediction

    task = open_tasks[0]
    v2 = make_version(project, "v2", seed=1)
    probabilities = Prediction.objects.get(item_id=task.item_id).probabilities
    Prediction.objects.create(item_id=task.item_id, model_version=v2, probabilities=probabilities,
                              predicted_label="sneaker", confidence=0.61)
    first = label_submit(item_id=task.item_id, value="bag", source=LabelSource.WEB, reviewer=reviewer,
                         review_task_id=task.id)
    label_submit(item_id=task.item_id, value="coat", source=LabelSource.IMPORT, reviewer_name="gold import")
    client.force_login(reviewer)
    page = client.get(f"/items/{task.item_id}/").content.decode()
    predictions = page.split('id="item-predictions"')[1].split("</table>")[0]
    assert "v1" in predictions and "v2" in predictions and "sneaker" in predictions and "0.610" in predictions
    history = page.split('id="item-labels"')[1].split("</table>")[0]
    assert history.index("bag") < history.index("coat") and "Superseded" in history
    assert "hitl web UI" in history and "gold import" in history and f"#{first.id}, rita" in history
    batches = page.split('id="item-batches"')[1].split("</table>")[0]
    assert f"<td>{task.batch_id}</td>" in batches and "Done" in batches
    assert client.get("/items/999999999/").status_code == 404


def test_the_json_views_need_the_csrf_token(project, open_tasks, reviewer) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(reviewer)
    page = client.get(f"/projects/{project.slug}/label/").content.decode()
    token = re.search(r'data-csrf="([^"]+)"', page).group(1)
    url = f"/projects/{project.slug}/label/lease"
    assert client.post(url, "{}", content_type="application/json").status_code == 403
    assert not ReviewTask.objects.filter(leased_to__isnull=False).exists()
    leased = client.post(url, "{}", content_type="application/json", HTTP_X_CSRFTOKEN=token)
    assert leased.status_code == 200 and len(leased.json()["tasks"]) == 3
