"""hitl against a real Label Studio 1.23.2 server (started by tests/labeling/conftest.py), a real
worker, PostgreSQL and Redis."""

from __future__ import annotations

import json
import time

import pytest
import requests
from django.conf import settings
from django.db import connections
from label_studio_sdk import LabelStudio

from hitl.models import Label, LabelStatus, ReviewTask, ReviewTaskStatus, Split
from hitl.services.cycles import cycle_request
from labeling.client import LabelStudioClient, LabelStudioUnavailable
from labeling.mapping import choice_result
from labeling.models import EventState, LabelStudioTask, PushState, WebhookEvent
from labeling.services.provisioning import ls_project_provision
from labeling.services.pull import ls_reconcile, reviewer_name
from labeling.services.push import ls_push, ls_task_payload
from labeling.services.status import TASK_BUCKETS, ls_status
from labeling.services.webhooks import WEBHOOK_HEADER, secret_digest, webhook_url
from tests.labeling.conftest import REVIEWER, free_port
from workers.pipelines.cycles import cycle_train

pytestmark = [pytest.mark.labelstudio, pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def as_dict(value: object) -> dict:
    return value if isinstance(value, dict) else value.dict()


def ls_tasks(sdk: LabelStudio, ls_project_id: int) -> list:
    return list(sdk.tasks.list(project=ls_project_id, fields="all"))


def wait_for_events(timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while WebhookEvent.objects.filter(state=EventState.PENDING).exists():
        assert time.monotonic() < deadline, "webhook events were not processed"
        time.sleep(0.2)


def hitl_labels(project) -> dict[int, str]:
    return dict(Label.objects.filter(item__project=project, status=LabelStatus.CURRENT, source="label_studio")
                .values_list("item_id", "value"))


def expected_labels(sdk: LabelStudio, ls_project_id: int) -> dict[int, str]:
    """What Label Studio holds: the latest non-cancelled annotation of each task, by hitl item id."""
    expected = {}
    for task in ls_tasks(sdk, ls_project_id):
        annotations = [a for a in task.annotations if not a["was_cancelled"]]
        if annotations:
            latest = max(annotations, key=lambda a: a["updated_at"])
            expected[task.data["hitl_item_id"]] = latest["result"][0]["value"]["choices"][0]
    return expected


def test_provisioning_is_idempotent(connected, reviewer_sdk) -> None:
    project, link = connected
    remote = reviewer_sdk.projects.get(id=link.ls_project_id)
    for label in project.labels:
        assert f'value="{label}"' in remote.label_config
    hooks = reviewer_sdk.webhooks.list(project=str(link.ls_project_id))
    assert len(hooks) == 1 and hooks[0].url == webhook_url(link) == f"{settings.HITL_PUBLIC_URL}/labeling/webhook/{link.id}/"
    assert list(hooks[0].headers) == [WEBHOOK_HEADER]  # hitl keeps only the secret's digest
    assert secret_digest(hooks[0].headers[WEBHOOK_HEADER]) == link.webhook_secret_sha256
    projects_before = [p.id for p in reviewer_sdk.projects.list()]  # other tests' projects are there too
    again = ls_project_provision(project_id=project.id)
    assert again.changes == [] and again.link.ls_project_id == link.ls_project_id
    assert len(reviewer_sdk.webhooks.list(project=str(link.ls_project_id))) == 1
    assert [p.id for p in reviewer_sdk.projects.list()] == projects_before


def test_an_annotators_email_is_looked_up(label_studio) -> None:
    client = LabelStudioClient(label_studio.url, label_studio.token)
    assert reviewer_name(client.whoami()["id"], client) == f"{REVIEWER} (Label Studio)"


def test_pushing_twice_creates_no_duplicate(connected, reviewer_sdk) -> None:
    project, link = connected
    assert ls_push(project_id=project.id).pushed == 8
    assert ls_push(project_id=project.id).pushed == 0
    tasks = ls_tasks(reviewer_sdk, link.ls_project_id)
    assert len(tasks) == 8
    review = {t.id: t for t in ReviewTask.objects.filter(batch__project=project).select_related("prediction__model_version")}
    for task in tasks:
        ours = review[task.data["hitl_review_task_id"]]
        assert task.data["hitl_item_id"] == ours.item_id
        prediction = as_dict(task.predictions[0])
        assert prediction["model_version"] == "v1"
        assert prediction["result"][0]["value"]["choices"] == [ours.prediction.predicted_label]
        assert prediction["score"] == pytest.approx(ours.prediction.confidence, abs=1e-5)
    image = requests.get(tasks[0].data["image"], timeout=5)
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    assert requests.get(tasks[0].data["image"][:-4] + "0000", timeout=5).status_code == 403


def test_an_interrupted_push_is_finished_without_duplicates(connected, reviewer_sdk, label_studio) -> None:
    """The import reached Label Studio but the worker died before recording the task ids."""
    project, link = connected
    open_tasks = list(ReviewTask.objects.filter(batch__project=project).select_related("item", "prediction__model_version"))
    for task in open_tasks:
        LabelStudioTask.objects.create(ls_project=link, review_task=task)  # reserved
    client = LabelStudioClient(label_studio.url, label_studio.token)
    client.import_tasks(link.ls_project_id, [ls_task_payload(t) for t in open_tasks[:5]])  # then the crash
    result = ls_push(project_id=project.id)
    assert (result.recovered, result.pushed) == (5, 3)
    assert len(ls_tasks(reviewer_sdk, link.ls_project_id)) == 8
    assert LabelStudioTask.objects.filter(state=PushState.PUSHED, ls_task_id__isnull=False).count() == 8


def test_reviewers_work_in_label_studio_comes_back_exactly(connected, reviewer_sdk, label_studio, live_server) -> None:
    project, link = connected
    ls_push(project_id=project.id)
    tasks = sorted(ls_tasks(reviewer_sdk, link.ls_project_id), key=lambda t: t.id)
    labels = project.labels
    # Annotate six tasks (accepting some pre-annotations, changing others), correct one,
    # delete one, skip one.
    made = {}
    for i, task in enumerate(tasks[:6]):
        value = as_dict(task.predictions[0])["result"][0]["value"]["choices"][0] if i % 2 else labels[i]
        made[i] = reviewer_sdk.annotations.create(id=task.id, result=choice_result(value), lead_time=2.0 + i)
    reviewer_sdk.annotations.update(id=made[0].id, result=choice_result(labels[9]))
    reviewer_sdk.annotations.delete(id=made[1].id)
    reviewer_sdk.annotations.create(id=tasks[6].id, result=[], was_cancelled=True)
    wait_for_events()
    assert hitl_labels(project) == expected_labels(reviewer_sdk, link.ls_project_id)
    assert len(hitl_labels(project)) == 5
    deleted_item = tasks[1].data["hitl_item_id"]
    assert not Label.objects.filter(item_id=deleted_item, status=LabelStatus.CURRENT).exists()
    assert Label.objects.get(item_id=deleted_item).status == LabelStatus.RETRACTED
    # the deleted annotation's item is back in hitl's review queue and in Label Studio's
    reopened = ReviewTask.objects.get(pk=tasks[1].data["hitl_review_task_id"])
    assert reopened.status == ReviewTaskStatus.OPEN
    back_in_ls = next(t for t in ls_tasks(reviewer_sdk, link.ls_project_id) if t.id == tasks[1].id)
    assert not back_in_ls.is_labeled and not [a for a in back_in_ls.annotations if not a["was_cancelled"]]
    assert ls_status(project_id=project.id).pending == 2  # it and the one never annotated
    skipped = ReviewTask.objects.get(pk=tasks[6].data["hitl_review_task_id"])
    assert skipped.status == ReviewTaskStatus.SKIPPED
    corrected = Label.objects.filter(item_id=tasks[0].data["hitl_item_id"]).order_by("id")
    assert [(lbl.value, lbl.status) for lbl in corrected] == [(labels[0], "superseded"), (labels[9], "current")]
    correction = corrected.last()
    # The tests' worker is not configured for Label Studio, so it names the annotator by id (the
    # email lookup is tested on its own below).
    assert correction.reviewer_name == f"Label Studio user {reviewer_sdk.users.whoami().id}"
    assert correction.lead_time_seconds == pytest.approx(2.0) and correction.prediction_id is not None

    # A duplicated webhook (Label Studio or a proxy resending) changes nothing.
    rows_before = Label.objects.count()
    replay = WebhookEvent.objects.filter(action="ANNOTATION_CREATED").first().payload
    secret = reviewer_sdk.webhooks.get(id=link.webhook_id).headers[WEBHOOK_HEADER]  # as Label Studio sends it
    response = requests.post(webhook_url(link), data=json.dumps(replay), timeout=5,
                             headers={"Content-Type": "application/json", WEBHOOK_HEADER: secret})
    assert response.status_code == 202
    wait_for_events()
    assert Label.objects.count() == rows_before
    assert hitl_labels(project) == expected_labels(reviewer_sdk, link.ls_project_id)

    # Lost webhooks: the receiver is unreachable while the reviewer works; Label Studio does
    # not retry. The periodic reconcile recovers all of it.
    dead = f"http://127.0.0.1:{free_port()}/labeling/webhook/"  # nothing listens there
    LabelStudioClient(label_studio.url, label_studio.token).update_webhook(
        link.webhook_id, url=dead, headers={WEBHOOK_HEADER: secret})
    events = WebhookEvent.objects.count()
    reviewer_sdk.annotations.create(id=tasks[7].id, result=choice_result(labels[3]))
    reviewer_sdk.annotations.update(id=made[2].id, result=choice_result(labels[8]))
    reviewer_sdk.annotations.delete(id=made[3].id)
    assert WebhookEvent.objects.count() == events  # nothing arrived
    assert hitl_labels(project) != expected_labels(reviewer_sdk, link.ls_project_id)
    result = ls_reconcile(project_id=project.id)
    assert result.deleted == 1 and result.tasks == 8
    assert hitl_labels(project) == expected_labels(reviewer_sdk, link.ls_project_id)
    assert ls_reconcile(project_id=project.id).deleted == 0  # and again: nothing changes
    assert "updated webhook" in " ".join(ls_project_provision(project_id=project.id).changes)

    # The next retraining cycle trains on these labels.
    project.gate_rules = {"first_model_needs_golden_set": False}
    project.save()
    cycle = cycle_request(project=project, requested_by="t")
    cycle_train(cycle_id=cycle.id)
    cycle.refresh_from_db()
    version = cycle.candidate_version
    from_ls = set(Label.objects.filter(item__project=project, source="label_studio", status=LabelStatus.CURRENT,
                                       item__split=Split.TRAIN).values_list("id", flat=True))
    assert from_ls and from_ls <= set(version.training_labels.values_list("id", flat=True))

    status = ls_status(project_id=project.id)
    assert status.reachable and status.pushed == 8 and status.skipped == 1
    assert status.labeled == len(hitl_labels(project)) == 5
    assert sum(getattr(status, bucket) for bucket in TASK_BUCKETS) == status.pushed  # each task once


def test_label_studio_down_is_retried_later_and_reported(connected, reviewer_sdk, settings) -> None:
    project, link = connected
    good_url = settings.LABEL_STUDIO_URL
    settings.LABEL_STUDIO_URL, settings.LABEL_STUDIO_RETRIES = f"http://127.0.0.1:{free_port()}", 1
    with pytest.raises(LabelStudioUnavailable):
        ls_push(project_id=project.id)
    with pytest.raises(LabelStudioUnavailable):
        ls_reconcile(project_id=project.id)
    status = ls_status(project_id=project.id)
    assert not status.reachable and status.reachability.startswith("DOWN")
    assert "unavailable" in status.last_error and status.last_push_at is None
    assert LabelStudioTask.objects.filter(state=PushState.PUSHED).count() == 0  # nothing half-done
    settings.LABEL_STUDIO_URL = good_url
    assert ls_push(project_id=project.id).pushed == 8
    assert len(ls_tasks(reviewer_sdk, link.ls_project_id)) == 8
    assert ls_status(project_id=project.id).last_error == ""



@pytest.mark.browser
def test_a_reviewer_labels_in_label_studios_web_ui(connected, label_studio, monkeypatch) -> None:
    """The reviewer's real path: Label Studio's own UI in Chromium, hitl's image in it, the
    pre-annotation preselected; accept, correct, skip; the labels arrive in hitl."""
    from playwright.sync_api import expect, sync_playwright

    from tests.browser.conftest import CHROMIUM_ARGS

    project, link = connected
    ls_push(project_id=project.id)
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(20_000)
        page.goto(f"{label_studio.url}/user/login/")
        page.fill("input[name=email]", REVIEWER)
        page.fill("input[name=password]", label_studio.password)
        page.click("button[type=submit]")
        page.goto(f"{label_studio.url}/projects/{link.ls_project_id}/data")
        page.get_by_text("Label All Tasks").click()
        for action in ["accept", "correct", "skip"]:
            submit = page.get_by_test_id("bottombar-submit-button")
            expect(submit).to_be_visible()
            # Label Studio fetches hitl's signed image URL (CORS) and shows it as a blob.
            page.wait_for_function("Array.from(document.images).some(i => i.src.startsWith('blob:') && i.naturalWidth === 28)")
            if action == "skip":
                page.get_by_test_id("bottombar-skip-button").click()
            else:
                if action == "correct":
                    page.get_by_text("ankle boot").first.click()
                submit.click()
            page.wait_for_timeout(1500)
        browser.close()
        connections.close_all()
    wait_for_events()
    applied = Label.objects.filter(source="label_studio", status=LabelStatus.CURRENT)
    assert applied.count() == 2
    assert "ankle boot" in set(applied.values_list("value", flat=True))
    assert ReviewTask.objects.filter(batch__project=project, status=ReviewTaskStatus.SKIPPED).count() == 1
    sdk = LabelStudio(base_url=label_studio.url, api_key=label_studio.token)
    assert {label.reviewer_name for label in applied} == {f"Label Studio user {sdk.users.whoami().id}"}
    assert hitl_labels(project) == expected_labels(LabelStudio(base_url=label_studio.url, api_key=label_studio.token),
                                                   link.ls_project_id)
