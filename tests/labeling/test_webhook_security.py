"""The webhook's door: a secret per project link, checked before the body is read; events that
reach outside the link's project refused, logged and counted, by the receiver, the worker and
reconcile alike; rotation with a grace period. The last tests run against a real Label Studio."""

from __future__ import annotations

import json
import logging
import time
from datetime import timedelta
from io import StringIO

import pytest
import requests
from django.core.management import call_command
from django.test import override_settings
from django.utils import timezone

from hitl.errors import InvalidInput
from hitl.models import Label, LabelStatus, ReviewBatch, ReviewReason, ReviewTask
from hitl.services.ingestion import items_register
from hitl.services.projects import project_create
from labeling.mapping import choice_result
from labeling.models import (
    EventState,
    LabelStudioAnnotation,
    LabelStudioProject,
    LabelStudioRejection,
    LabelStudioTask,
    PushState,
    WebhookEvent,
)
from labeling.services.provisioning import ls_project_provision
from labeling.services.pull import (
    annotation_apply,
    annotation_delete,
    ls_reconcile,
    webhook_event_process,
)
from labeling.services.status import ls_status
from labeling.services.webhooks import (
    WEBHOOK_HEADER,
    secret_digest,
    webhook_secret_issue,
    webhook_url,
)
from tests.conftest import LABELS

pytestmark = pytest.mark.django_db
SCOPE_LOGGER = "labeling.services.scope"


def annotation(annotation_id: int, task_id: int, value: str, updated: str = "2026-11-26T10:00:00Z") -> dict:
    return {"id": annotation_id, "task": task_id, "result": choice_result(value), "updated_at": updated,
            "completed_by": {"id": 3, "email": "ann@example.com"}, "lead_time": 4.5, "was_cancelled": False}


def created(ls_project_id: int, data: dict, task_data: dict | None = None) -> dict:
    task = {"id": data["task"], "data": task_data or {}}
    return {"action": "ANNOTATION_CREATED", "annotation": data, "task": task, "project": {"id": ls_project_id}}


def post(client, link_id: int, body: dict | str, secret: str | None):
    headers = {} if secret is None else {f"HTTP_{WEBHOOK_HEADER.upper().replace('-', '_')}": secret}
    return client.post(f"/labeling/webhook/{link_id}/", body if isinstance(body, str) else json.dumps(body),
                       content_type="application/json", **headers)


@pytest.fixture()
def two_links(pushed, write_images):
    """Project A (Label Studio project 7, tasks 101..106) and project B (Label Studio project 8,
    tasks 201..203), each with its own webhook secret."""
    link_a, rows_a = pushed
    project_b = project_create(slug="project-b", name="B", labels=list(LABELS))
    items = items_register(project=project_b, image_paths=write_images(range(20, 23), folder="b"))
    batch = ReviewBatch.objects.create(project=project_b, strategy="random", size=3, audit_fraction=0, seed=0,
                                       requested_by="t")
    link_b = LabelStudioProject.objects.create(project=project_b, ls_project_id=8)
    rows_b = []
    for rank, item_id in enumerate(items):
        task = ReviewTask.objects.create(batch=batch, item_id=item_id, reason=ReviewReason.STRATEGY, strategy="random",
                                         rank=rank)
        rows_b.append(LabelStudioTask.objects.create(ls_project=link_b, review_task=task, ls_task_id=201 + rank,
                                                     state=PushState.PUSHED))
    secret_a = webhook_secret_issue(link_a, grace_seconds=0)
    secret_b = webhook_secret_issue(link_b, grace_seconds=0)
    return (link_a, rows_a, secret_a), (link_b, rows_b, secret_b)


def current_labels() -> dict[int, str]:
    return dict(Label.objects.filter(status=LabelStatus.CURRENT).values_list("item_id", "value"))


def refusals(link: LabelStudioProject) -> dict[str, int]:
    return dict(LabelStudioRejection.objects.filter(link=link).values_list("reason", "count"))


def test_no_or_a_wrong_secret_is_refused_before_the_body_is_read(client, two_links, caplog) -> None:
    (link_a, _, secret_a), _ = two_links
    body = created(7, annotation(1, 101, "bag"))
    with caplog.at_level(logging.WARNING, logger=SCOPE_LOGGER):
        missing = post(client, link_a.id, body, secret=None)
        wrong = post(client, link_a.id, body, secret=secret_a[:-1] + "x")
        garbage = post(client, link_a.id, "{not json", secret="also wrong")  # 403, not 400: never parsed
    assert [r.status_code for r in (missing, wrong, garbage)] == [403, 403, 403]
    assert missing.json()["detail"] == f"missing {WEBHOOK_HEADER} header"
    assert wrong.json()["detail"] == f"wrong {WEBHOOK_HEADER} header"
    assert not WebhookEvent.objects.exists() and not Label.objects.exists()
    assert refusals(link_a) == {f"missing {WEBHOOK_HEADER} header": 1, f"wrong {WEBHOOK_HEADER} header": 2}
    assert sum("refused: wrong" in r.getMessage() for r in caplog.records) == 2
    assert LabelStudioRejection.objects.get(link=link_a, reason__startswith="wrong").last_remote == "127.0.0.1"
    assert post(client, link_a.id, body, secret_a).status_code == 202
    shown = StringIO()
    with override_settings(LABEL_STUDIO_URL=""):
        call_command("labelstudio", "status", "--project", link_a.project.slug, stdout=shown)
    assert "refused events and annotations: 3" in shown.getvalue()
    assert f"webhook: {webhook_url(link_a)}; secret set" in shown.getvalue()
    assert f"webhook: wrong {WEBHOOK_HEADER} header (2x, last from 127.0.0.1)" in shown.getvalue()


def test_the_secret_of_another_project_is_refused(client, two_links) -> None:
    (link_a, _, secret_a), (link_b, _, secret_b) = two_links
    assert post(client, link_a.id, created(7, annotation(1, 101, "bag")), secret_b).status_code == 403
    assert post(client, link_b.id, created(8, annotation(2, 201, "bag")), secret_a).status_code == 403
    assert not WebhookEvent.objects.exists()
    assert refusals(link_a) == refusals(link_b) == {f"wrong {WEBHOOK_HEADER} header": 1}


def test_an_unknown_link_or_a_link_without_a_secret_is_refused(client, two_links) -> None:
    (link_a, _, secret_a), _ = two_links
    response = post(client, 99999, created(7, annotation(1, 101, "bag")), secret_a)
    assert response.status_code == 404 and "stale" in response.json()["detail"]
    LabelStudioProject.objects.filter(pk=link_a.pk).update(webhook_secret_sha256="")  # as after migration 0004
    response = post(client, link_a.id, created(7, annotation(1, 101, "bag")), secret_a)
    assert response.status_code == 403 and "labelstudio connect --project" in response.json()["detail"]
    assert not WebhookEvent.objects.exists()


def _record_under_b(link_b) -> None:
    annotation_apply(link=link_b, annotation=annotation(50, 201, "coat"), task_data=None, seen_via="webhook")


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (created(8, annotation(1, 101, "bag")), 403, "event for Label Studio project 8, but this webhook belongs to"),
        (created(7, annotation(1, 201, "bag")), 403, "Label Studio task 201 was pushed for another hitl project"),
        (created(7, annotation(50, 101, "bag")), 403, "annotation 50 belongs to another hitl project"),
        ({"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 50}], "project": {"id": 7}}, 403,
         "annotation 50 belongs to another hitl project"),
        ("task data naming B's review task", 403, "of another hitl project"),
        ("task data naming another review task of A", 403, "but hitl pushed it for review task"),
        ({"action": "ANNOTATION_CREATED", "annotation": annotation(1, 101, "bag")}, 400, "without a Label Studio project"),
        ({**created(7, annotation(1, 101, "bag")), "task": {"id": 102}}, 400, "a task the event does not carry"),
        ({**created(7, annotation(1, 101, "bag")), "project": {"id": True}}, 400, "without a Label Studio project"),
    ],
    ids=["other-project", "other-projects-task", "other-projects-annotation", "delete-other-projects-annotation",
         "names-other-projects-review-task", "names-another-review-task", "no-project", "task-mismatch", "bool-id"],
)
def test_cross_project_and_malformed_events_are_refused_and_logged(client, two_links, caplog, body, status,
                                                                    reason) -> None:
    (link_a, rows_a, secret_a), (link_b, rows_b, _) = two_links
    _record_under_b(link_b)
    if body == "task data naming B's review task":
        body = created(7, annotation(1, 999, "bag"), {"hitl_review_task_id": rows_b[1].review_task_id})
    elif body == "task data naming another review task of A":
        body = created(7, annotation(1, 101, "bag"), {"hitl_review_task_id": rows_a[1].review_task_id})
    before = current_labels()
    with caplog.at_level(logging.WARNING, logger=SCOPE_LOGGER):
        response = post(client, link_a.id, body, secret_a)
    assert response.status_code == status and reason in response.json()["detail"]
    assert not WebhookEvent.objects.exists()
    assert current_labels() == before == {rows_b[0].review_task.item_id: "coat"}
    assert LabelStudioAnnotation.objects.get(ls_annotation_id=50).ls_project == link_b
    assert [r for r in refusals(link_a) if reason in r] and any(reason in r.getMessage() for r in caplog.records)
    status_lines = ls_status(project_id=link_a.project_id).recent_refusals
    assert status_lines and reason in status_lines[0] and status_lines[0].startswith(str(timezone.now().year))


def test_the_worker_applies_the_same_rule_to_stored_events(two_links) -> None:
    """An event accepted while its annotation was new to hitl, and recorded under project B
    before a worker got to it, changes nothing of B's."""
    (link_a, _, _), (link_b, rows_b, _) = two_links
    event = WebhookEvent.objects.create(link=link_a, action="ANNOTATION_CREATED", ls_project_id=7,
                                        payload=created(7, annotation(50, 101, "bag", "2026-11-26T11:00:00Z")))
    _record_under_b(link_b)
    processed = webhook_event_process(event_id=event.id)
    assert processed.state == EventState.FAILED and "belongs to another hitl project" in processed.error
    assert current_labels() == {rows_b[0].review_task.item_id: "coat"}
    assert LabelStudioRejection.objects.get(link=link_a).source == "webhook"


class ListingClient:
    """Label Studio's listing of project A's tasks, one of them holding a task of project B."""

    url = "http://label-studio.invalid"

    def __init__(self, tasks: list[dict]) -> None:
        self._tasks = tasks

    def project(self, project_id: int) -> dict:
        return {"task_number": len(self._tasks)}

    def iter_tasks(self, project_id: int):
        yield from self._tasks


def test_reconcile_applies_the_same_rule(two_links, caplog) -> None:
    (link_a, rows_a, _), (link_b, rows_b, _) = two_links
    _record_under_b(link_b)
    listing = [
        {"id": 101, "data": {"hitl_review_task_id": rows_a[0].review_task_id}, "annotations": [annotation(1, 101, "bag")]},
        {"id": 201, "data": {}, "annotations": [annotation(2, 201, "shirt")]},  # B's task
        {"id": 102, "data": {}, "annotations": [annotation(50, 102, "shirt", "2026-11-26T12:00:00Z")]},  # B's annotation
    ]
    with caplog.at_level(logging.WARNING, logger=SCOPE_LOGGER):
        result = ls_reconcile(project_id=link_a.project_id, client=ListingClient(listing))
        ls_reconcile(project_id=link_a.project_id, client=ListingClient(listing))  # the next pass
    assert result.annotations == 1
    assert current_labels() == {rows_a[0].review_task.item_id: "bag", rows_b[0].review_task.item_id: "coat"}
    assert not LabelStudioAnnotation.objects.filter(ls_annotation_id=2).exists()
    assert LabelStudioAnnotation.objects.get(ls_annotation_id=50).ls_project == link_b
    assert sorted(refusals(link_a).values()) == [2, 2]  # the same refusal counts up, once per pass
    assert {r.source for r in LabelStudioRejection.objects.filter(link=link_a)} == {"reconcile"}
    assert sum("reconcile for hitl project" in r.getMessage() for r in caplog.records) == 4


def test_a_deletion_recorded_for_another_project_does_not_block_this_ones_annotation(two_links) -> None:
    """Project A's webhook (its secret stolen) deletes annotation 60, which hitl has never seen;
    annotation 60 then turns up in project B: B's label is applied."""
    (link_a, _, _), (link_b, rows_b, _) = two_links
    annotation_delete(link=link_a, annotation_id=60, seen_via="webhook")
    annotation_apply(link=link_b, annotation=annotation(60, 202, "coat"), task_data=None, seen_via="webhook")
    record = LabelStudioAnnotation.objects.get(ls_annotation_id=60)
    assert record.ls_project == link_b and record.state == "applied"
    assert current_labels() == {rows_b[1].review_task.item_id: "coat"}


def test_a_rotated_secret_is_accepted_for_the_grace_period_only(client, two_links, caplog) -> None:
    (link_a, _, old), _ = two_links
    new = webhook_secret_issue(link_a, grace_seconds=60)
    assert post(client, link_a.id, created(7, annotation(1, 101, "bag")), old).status_code == 202
    assert post(client, link_a.id, created(7, annotation(2, 102, "bag")), new).status_code == 202
    LabelStudioProject.objects.filter(pk=link_a.pk).update(  # the grace period is over
        previous_secret_valid_until=timezone.now() - timedelta(seconds=1))
    with caplog.at_level(logging.WARNING, logger=SCOPE_LOGGER):
        assert post(client, link_a.id, created(7, annotation(3, 103, "bag")), old).status_code == 403
    assert post(client, link_a.id, created(7, annotation(3, 103, "bag")), new).status_code == 202
    newest = webhook_secret_issue(link_a, grace_seconds=0)  # a leaked secret: no grace
    assert post(client, link_a.id, created(7, annotation(4, 104, "bag")), new).status_code == 403
    assert post(client, link_a.id, created(7, annotation(4, 104, "bag")), newest).status_code == 202
    assert refusals(link_a) == {f"wrong {WEBHOOK_HEADER} header": 2}
    assert any("refused: wrong" in r.getMessage() for r in caplog.records)
    link_a.refresh_from_db()
    assert link_a.webhook_secret_sha256 == secret_digest(newest) and newest not in str(vars(link_a))


def test_a_rotation_label_studio_did_not_take_leaves_the_old_secret_its_grace_period_only(
        client, two_links, settings) -> None:
    from labeling.client import LabelStudioUnavailable
    from labeling.services.provisioning import webhook_secret_rotate
    from tests.labeling.conftest import free_port

    (link_a, _, old), _ = two_links
    LabelStudioProject.objects.filter(pk=link_a.pk).update(webhook_id=5)
    settings.LABEL_STUDIO_URL, settings.LABEL_STUDIO_API_KEY = f"http://127.0.0.1:{free_port()}", "token"
    settings.LABEL_STUDIO_RETRIES = 0
    with pytest.raises(LabelStudioUnavailable):
        webhook_secret_rotate(project_id=link_a.project_id, grace_seconds=30)
    link_a.refresh_from_db()
    assert "unavailable" in link_a.last_error
    assert timezone.now() < link_a.previous_secret_valid_until <= timezone.now() + timedelta(seconds=30)
    assert post(client, link_a.id, created(7, annotation(1, 101, "bag")), old).status_code == 202
    with pytest.raises(InvalidInput, match="must be 0 or more"):
        webhook_secret_rotate(project_id=link_a.project_id, grace_seconds=-1)


@pytest.mark.django_db(transaction=True)
def test_migration_0004_gives_existing_links_no_secret_and_attaches_their_events(project) -> None:
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    before, after = [("labeling", "0003_webhook_event_project")], [("labeling", "0004_per_project_webhook_secret")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    old = executor.loader.project_state(before).apps
    link = old.get_model("labeling", "LabelStudioProject").objects.create(project_id=project.id, ls_project_id=7)
    event = old.get_model("labeling", "WebhookEvent").objects.create(action="ANNOTATION_CREATED", ls_project_id=7,
                                                                     payload={})
    stray = old.get_model("labeling", "WebhookEvent").objects.create(action="ANNOTATION_CREATED", ls_project_id=9,
                                                                     payload={})
    executor = MigrationExecutor(connection)
    executor.migrate(after)
    assert LabelStudioProject.objects.get(pk=link.pk).webhook_secret_sha256 == ""
    assert WebhookEvent.objects.get(pk=event.pk).link_id == link.pk
    assert WebhookEvent.objects.get(pk=stray.pk).link_id is None


# --- against a real Label Studio ----------------------------------------------------------------


def _wait_for_events(timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while WebhookEvent.objects.filter(state=EventState.PENDING).exists():
        assert time.monotonic() < deadline, "webhook events were not processed"
        time.sleep(0.2)


@pytest.mark.labelstudio
@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_rotate_secret_and_reconnect_against_label_studio(connected, reviewer_sdk, settings) -> None:
    from labeling.services.push import ls_push

    project, link = connected
    ls_push(project_id=project.id)
    tasks = sorted(reviewer_sdk.tasks.list(project=link.ls_project_id), key=lambda t: t.id)
    first = reviewer_sdk.webhooks.get(id=link.webhook_id).headers[WEBHOOK_HEADER]

    call_command("labelstudio", "rotate-secret", "--project", project.slug, "--grace", "0")
    second = reviewer_sdk.webhooks.get(id=link.webhook_id).headers[WEBHOOK_HEADER]
    link.refresh_from_db()
    assert second != first and link.webhook_secret_sha256 == secret_digest(second)
    stale = requests.post(webhook_url(link), timeout=5, json=created(link.ls_project_id, annotation(1, tasks[0].id, "bag")),
                          headers={WEBHOOK_HEADER: first})
    assert stale.status_code == 403
    reviewer_sdk.annotations.create(id=tasks[0].id, result=choice_result(LABELS[2]))  # sent with the new secret
    _wait_for_events()
    assert WebhookEvent.objects.filter(state=EventState.PROCESSED).count() == 1
    assert Label.objects.get(status=LabelStatus.CURRENT, source="label_studio").value == LABELS[2]

    # A link from before per-project secrets (migration 0004): no secret, the hook on the old URL.
    LabelStudioProject.objects.filter(pk=link.pk).update(webhook_secret_sha256="", previous_secret_sha256="")
    reviewer_sdk.webhooks.update(id=link.webhook_id, url=f"{settings.HITL_PUBLIC_URL}/labeling/webhook/",
                                 headers={WEBHOOK_HEADER: "the old shared secret"})
    changes = ls_project_provision(project_id=project.id).changes
    assert any("issued a new secret" in c for c in changes) and any("updated webhook" in c for c in changes)
    hook = reviewer_sdk.webhooks.get(id=link.webhook_id)
    link.refresh_from_db()
    assert hook.url == webhook_url(link) and secret_digest(hook.headers[WEBHOOK_HEADER]) == link.webhook_secret_sha256
    assert ls_project_provision(project_id=project.id).changes == []  # and again: nothing changes
    assert len(reviewer_sdk.webhooks.list(project=str(link.ls_project_id))) == 1
    reviewer_sdk.annotations.create(id=tasks[1].id, result=choice_result(LABELS[4]))
    _wait_for_events()
    assert WebhookEvent.objects.filter(state=EventState.PROCESSED).count() == 2
    assert ls_status(project_id=project.id).refused == 1  # the stale secret, above
