"""Annotations to labels without a server: replays, out-of-order and bad events."""

from __future__ import annotations

import json
import threading
import time

import pytest
from django.db import connection, transaction
from django.test import override_settings

from hitl.models import Label, LabelSource, LabelStatus, ReviewTask, ReviewTaskStatus
from hitl.selectors import review_queue
from labeling.mapping import choice_result
from labeling.models import (
    AnnotationState,
    EventState,
    LabelStudioAnnotation,
    LabelStudioTask,
    PushState,
    WebhookEvent,
)
from labeling.services.pull import annotation_apply, annotation_delete, webhook_event_process
from labeling.services.webhooks import WEBHOOK_HEADER, webhook_secret_issue

pytestmark = pytest.mark.django_db


def annotation(annotation_id: int, task_id: int, value: str, updated: str = "2026-11-26T10:00:00Z", **extra) -> dict:
    return {"id": annotation_id, "task": task_id, "result": choice_result(value), "updated_at": updated,
            "completed_by": {"id": 3, "email": "ann@example.com"}, "lead_time": 4.5, "was_cancelled": False, **extra}


def apply(link, data: dict, via: str = "webhook") -> LabelStudioAnnotation:
    return annotation_apply(link=link, annotation=data, task_data=None, seen_via=via)


def current(item_id: int) -> Label | None:
    return Label.objects.filter(item_id=item_id, status=LabelStatus.CURRENT).first()


def test_an_annotation_becomes_a_label(pushed) -> None:
    link, rows = pushed
    record = apply(link, annotation(1, 101, "bag"))
    label = current(rows[0].review_task.item_id)
    assert record.state == AnnotationState.APPLIED and record.label == label
    assert (label.value, label.source, label.reviewer_name) == ("bag", "label_studio", "ann@example.com (Label Studio)")
    assert label.lead_time_seconds == 4.5 and label.external_id == "ls-annotation:1"
    assert label.prediction_id == rows[0].review_task.prediction_id
    rows[0].review_task.refresh_from_db()
    assert rows[0].review_task.status == ReviewTaskStatus.DONE


def test_replays_and_late_older_versions_change_nothing(pushed) -> None:
    link, rows = pushed
    apply(link, annotation(1, 101, "bag", "2026-11-26T10:00:00Z"))
    apply(link, annotation(1, 101, "coat", "2026-11-26T10:05:00Z"))  # the reviewer corrected it
    apply(link, annotation(1, 101, "bag", "2026-11-26T10:00:00Z"))  # the first event, delivered late
    apply(link, annotation(1, 101, "coat", "2026-11-26T10:05:00Z"), via="reconcile")  # and again by the pull
    item_id = rows[0].review_task.item_id
    assert current(item_id).value == "coat"
    assert list(Label.objects.filter(item_id=item_id).order_by("id").values_list("value", "status")) == [
        ("bag", "superseded"), ("coat", "current")]


def test_deletion_retracts_and_is_final(pushed) -> None:
    link, rows = pushed
    apply(link, annotation(1, 101, "bag"))
    annotation_delete(link=link, annotation_id=1, seen_via="webhook")
    annotation_delete(link=link, annotation_id=1, seen_via="reconcile")
    apply(link, annotation(1, 101, "bag", "2026-11-26T11:00:00Z"))  # a 'created' arriving after the delete
    assert current(rows[0].review_task.item_id) is None
    assert LabelStudioAnnotation.objects.get(ls_annotation_id=1).state == AnnotationState.DELETED


def test_a_deleted_annotation_puts_its_item_back_in_the_queue(pushed) -> None:
    """Deleted in Label Studio: the label is withdrawn and the review task is open again, so the
    item waits in hitl's review queue and, its Label Studio task having lost its annotation, in
    Label Studio's; counted as pending, not labeled."""
    from labeling.services.status import ls_status

    link, rows = pushed
    task = rows[0].review_task
    apply(link, annotation(1, 101, "bag"))
    task.refresh_from_db()
    assert task.status == ReviewTaskStatus.DONE and ls_status(project_id=link.project_id).labeled == 1
    annotation_delete(link=link, annotation_id=1, seen_via="webhook")
    task.refresh_from_db()
    assert task.status == ReviewTaskStatus.OPEN and task.completed_at is None
    assert task.id in set(review_queue(link.project).values_list("id", flat=True))
    status = ls_status(project_id=link.project_id)
    assert (status.labeled, status.pending) == (0, 6)
    apply(link, annotation(2, 101, "coat"))  # labeled again in Label Studio: done again
    task.refresh_from_db()
    assert task.status == ReviewTaskStatus.DONE and current(task.item_id).value == "coat"


def test_a_deletion_that_restores_the_tasks_own_label_leaves_it_done(pushed, reviewer) -> None:
    from hitl.services.labels import label_submit

    link, rows = pushed
    task = rows[0].review_task
    label_submit(item_id=task.item_id, value="shirt", source=LabelSource.WEB, reviewer=reviewer,
                 review_task_id=task.id)
    apply(link, annotation(1, 101, "bag"))
    annotation_delete(link=link, annotation_id=1, seen_via="webhook")
    task.refresh_from_db()
    assert task.status == ReviewTaskStatus.DONE and current(task.item_id).value == "shirt"


@override_settings(LABEL_STUDIO_URL="")
def test_every_pushed_task_is_in_exactly_one_bucket(pushed, reviewer) -> None:
    from hitl.services.labels import label_submit
    from labeling.services.status import TASK_BUCKETS, ls_status

    link, rows = pushed
    apply(link, annotation(1, 101, "bag"))  # labeled in Label Studio
    apply(link, annotation(2, 102, "bag"))
    annotation_delete(link=link, annotation_id=2, seen_via="webhook")  # ... and deleted: pending again
    apply(link, {**annotation(3, 103, "bag"), "result": [], "was_cancelled": True})  # skipped
    apply(link, annotation(4, 104, "zebra"))  # rejected: still pending
    label_submit(item_id=rows[4].review_task.item_id, value="coat", source=LabelSource.WEB, reviewer=reviewer,
                 review_task_id=rows[4].review_task_id)  # labeled in hitl's own page
    ReviewTask.objects.filter(pk=rows[5].review_task_id).update(status=ReviewTaskStatus.CANCELLED)
    LabelStudioTask.objects.filter(pk=rows[3].pk).update(state=PushState.MISSING)  # gone from Label Studio
    status = ls_status(project_id=link.project_id)
    buckets = {bucket: getattr(status, bucket) for bucket in TASK_BUCKETS}
    assert buckets == {"reserved": 0, "missing": 1, "pending": 1, "labeled": 2, "skipped": 1, "cancelled": 1,
                       "conflict": 0}
    assert sum(buckets.values()) == status.pushed == 6


def test_delete_before_create_is_remembered(pushed) -> None:
    link, rows = pushed
    annotation_delete(link=link, annotation_id=9, seen_via="webhook")
    apply(link, annotation(9, 101, "bag"))
    assert current(rows[0].review_task.item_id) is None


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (annotation(1, 999, "bag"), "task 999 was not pushed by hitl"),
        (annotation(1, 101, "zebra"), "unknown choice 'zebra'"),
        ({**annotation(1, 101, "bag"), "result": [{"type": "rectanglelabels"}]}, "no 'label' choice"),
    ],
)
def test_bad_annotations_are_rejected_with_a_reason(pushed, data, reason) -> None:
    link, _ = pushed
    record = apply(link, data)
    assert record.state == AnnotationState.REJECTED and reason in record.reason
    assert not Label.objects.exists()


def test_a_skipped_task_closes_without_a_label(pushed) -> None:
    link, rows = pushed
    apply(link, annotation(1, 101, "bag"))
    apply(link, {**annotation(1, 101, "bag", "2026-11-26T12:00:00Z"), "result": [], "was_cancelled": True})
    rows[0].review_task.refresh_from_db()
    assert rows[0].review_task.status == ReviewTaskStatus.SKIPPED
    assert current(rows[0].review_task.item_id) is None


def test_a_task_pushed_but_never_confirmed_is_recognised(pushed) -> None:
    link, rows = pushed
    rows[1].ls_task_id, rows[1].state = None, PushState.RESERVED
    rows[1].save()
    record = annotation_apply(link=link, annotation=annotation(5, 555, "bag"), seen_via="webhook",
                              task_data={"hitl_review_task_id": rows[1].review_task_id})
    rows[1].refresh_from_db()
    assert record.state == AnnotationState.APPLIED and rows[1].ls_task_id == 555 and rows[1].state == PushState.PUSHED


def post_webhook(client, link, body, secret: str):
    return client.post(f"/labeling/webhook/{link.id}/", body if isinstance(body, str) else json.dumps(body),
                       content_type="application/json", **{f"HTTP_{WEBHOOK_HEADER.upper().replace('-', '_')}": secret})


def test_webhook_checks_the_secret_and_records_events(client, pushed, django_capture_on_commit_callbacks) -> None:
    link, _ = pushed
    secret = webhook_secret_issue(link, grace_seconds=0)
    body = {"action": "ANNOTATION_CREATED", "annotation": annotation(1, 101, "bag"), "project": {"id": 7}}
    assert post_webhook(client, link, body, secret="wrong").status_code == 403
    assert post_webhook(client, link, "{not json", secret).status_code == 400
    assert post_webhook(client, link, {"no": "action"}, secret).status_code == 400
    with django_capture_on_commit_callbacks() as sent:
        response = post_webhook(client, link, body, secret)
    assert response.status_code == 202 and len(sent) == 1
    event = WebhookEvent.objects.get(pk=response.json()["event"])
    assert webhook_event_process(event_id=event.id).state == EventState.PROCESSED
    assert webhook_event_process(event_id=event.id).state == EventState.PROCESSED  # twice: harmless
    assert Label.objects.filter(source="label_studio").count() == 1


def test_events_stored_without_a_link_fail_visibly(pushed) -> None:
    """Events received before per-project links whose Label Studio project no link has."""
    event = WebhookEvent.objects.create(action="ANNOTATION_CREATED", ls_project_id=12345, payload={
        "action": "ANNOTATION_CREATED", "annotation": annotation(1, 101, "bag"), "project": {"id": 12345}})
    processed = webhook_event_process(event_id=event.id)
    assert processed.state == EventState.FAILED and "without its project link" in processed.error
    assert not Label.objects.exists()


def test_delete_events(pushed) -> None:
    link, rows = pushed
    apply(link, annotation(1, 101, "bag"))
    event = WebhookEvent.objects.create(link=link, action="ANNOTATIONS_DELETED", ls_project_id=7, payload={
        "action": "ANNOTATIONS_DELETED", "annotations": [{"id": 1}], "project": {"id": 7}})
    assert webhook_event_process(event_id=event.id).state == EventState.PROCESSED
    assert current(rows[0].review_task.item_id) is None


@override_settings(LABEL_STUDIO_URL="")
def test_an_annotator_id_names_the_reviewer_when_no_email_is_known(pushed) -> None:
    link, rows = pushed
    apply(link, {**annotation(1, 101, "bag"), "completed_by": 42})
    assert current(rows[0].review_task.item_id).reviewer_name == "Label Studio user 42"


@override_settings(LABEL_STUDIO_URL="")
def test_status_counts_this_projects_work_and_says_what_is_wrong(pushed) -> None:
    from labeling.services.status import ls_status

    link, _ = pushed
    apply(link, annotation(1, 101, "bag"))
    apply(link, annotation(2, 102, "zebra"))
    apply(link, {**annotation(3, 103, "bag"), "result": [], "was_cancelled": True})
    status = ls_status(project_id=link.project_id)
    assert (status.pushed, status.labeled, status.skipped, status.rejected) == (6, 1, 1, 1)
    assert status.pending == 4
    assert "unknown choice 'zebra'" in status.recent_rejections[0]
    assert not status.reachable and status.reachability.startswith("not configured")


def test_deleting_an_edited_annotation_withdraws_every_version(pushed, reviewer) -> None:
    """The reviewer labeled 'bag', corrected it to 'coat' in Label Studio, then deleted the
    annotation: no version of it stays; an earlier label from hitl's own UI comes back."""
    from hitl.services.labels import label_submit

    link, rows = pushed
    item_id = rows[0].review_task.item_id
    label_submit(item_id=item_id, value="shirt", source=LabelSource.WEB, reviewer=reviewer,
                 review_task_id=rows[0].review_task_id)  # as the review queue sends it
    apply(link, annotation(1, 101, "bag", "2026-11-26T10:00:00Z"))
    apply(link, annotation(1, 101, "coat", "2026-11-26T10:05:00Z"))
    annotation_delete(link=link, annotation_id=1, seen_via="webhook")
    assert current(item_id).value == "shirt" and current(item_id).source == "web"
    apply(link, annotation(2, 102, "bag", "2026-11-26T10:00:00Z"))
    apply(link, annotation(2, 102, "coat", "2026-11-26T10:05:00Z"))
    apply(link, {**annotation(2, 102, "coat", "2026-11-26T10:09:00Z"), "result": [], "was_cancelled": True})
    assert current(rows[1].review_task.item_id) is None


def test_a_label_restored_by_a_deletion_can_be_corrected(pushed) -> None:
    """Two annotations on one task arrive out of order: the deleted one's label is withdrawn, the
    other's comes back, and a later correction of it supersedes it (no clash in the history)."""
    link, rows = pushed
    apply(link, annotation(2, 101, "coat", "2026-11-26T10:05:00Z"))
    apply(link, annotation(1, 101, "bag", "2026-11-26T10:00:00Z"))  # delivered late
    annotation_delete(link=link, annotation_id=1, seen_via="webhook")
    item_id = rows[0].review_task.item_id
    assert current(item_id).value == "coat"
    apply(link, annotation(2, 101, "shirt", "2026-11-26T10:09:00Z"))
    assert current(item_id).value == "shirt" and current(item_id).previous.value == "coat"
    annotation_delete(link=link, annotation_id=2, seen_via="reconcile")
    assert current(item_id) is None


class ListingClient:
    """Stands in for Label Studio's listing calls: a project that is gone, or one page of tasks."""

    url = "http://label-studio.invalid"

    def __init__(self, project: dict | None, tasks: list[dict]) -> None:
        self._project, self._tasks = project, tasks

    def project(self, project_id: int) -> dict | None:
        return self._project

    def iter_tasks(self, project_id: int):
        yield from self._tasks


def test_reconcile_infers_deletions_only_from_tasks_it_saw(pushed) -> None:
    from labeling.client import LabelStudioBadRequest
    from labeling.services.pull import ls_reconcile

    link, rows = pushed
    apply(link, annotation(1, 101, "bag"))
    apply(link, annotation(2, 102, "coat"))
    with pytest.raises(LabelStudioBadRequest, match="no longer exists"):
        ls_reconcile(project_id=link.project_id, client=ListingClient(None, []))
    # A partial listing (task 102 missing, task 101 listed without its annotation): only 101's goes.
    partial = [{"id": 101, "data": {"hitl_review_task_id": rows[0].review_task_id}, "annotations": []}]
    result = ls_reconcile(project_id=link.project_id, client=ListingClient({"task_number": 6}, partial))
    assert result.deleted == 1 and result.missing_tasks == 0
    assert current(rows[0].review_task.item_id) is None
    assert current(rows[1].review_task.item_id).value == "coat"


def _in_thread(target, results: dict, key: str) -> threading.Thread:
    """Run ``target`` on its own database connection, keeping its result or its exception."""
    def run() -> None:
        try:
            results[key] = target()
        except Exception as exc:  # noqa: BLE001 - handed to the test
            results[key] = exc
        finally:
            connection.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _someone_waits_for_a_lock(timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_locks WHERE NOT granted")
            if cursor.fetchone()[0]:
                return True
        time.sleep(0.02)
    return False


@pytest.mark.django_db(transaction=True)
def test_two_workers_meeting_a_new_annotation_both_land(pushed) -> None:
    """Worker A applies the 'created' event of annotation 1 and has not committed yet; worker B,
    with the reviewer's correction, finds no row to lock, waits behind A's item lock, and then
    loses the insert of the annotation row. B must still apply the correction."""
    link, rows = pushed
    first_applied, release, results = threading.Event(), threading.Event(), {}

    def worker_a() -> LabelStudioAnnotation:
        with transaction.atomic():
            record = apply(link, annotation(1, 101, "bag", "2026-11-26T10:00:00Z"))
            first_applied.set()
            assert release.wait(10)
        return record

    a = _in_thread(worker_a, results, "a")
    assert first_applied.wait(10)
    b = _in_thread(lambda: apply(link, annotation(1, 101, "coat", "2026-11-26T10:05:00Z")), results, "b")
    assert _someone_waits_for_a_lock()  # B is blocked behind A's uncommitted work
    release.set()
    a.join(10), b.join(10)
    assert isinstance(results["a"], LabelStudioAnnotation), results["a"]
    assert isinstance(results["b"], LabelStudioAnnotation), results["b"]
    item_id = rows[0].review_task.item_id
    assert list(Label.objects.filter(item_id=item_id).order_by("id").values_list("value", "status")) == [
        ("bag", "superseded"), ("coat", "current")]
    record = LabelStudioAnnotation.objects.get(ls_annotation_id=1)
    assert (record.state, record.label.value) == (AnnotationState.APPLIED, "coat")
