"""Monitoring: a deployment's predictions drift (another class mix, darker images so lower
confidence) and the monitor raises the alert, schedules its review batch, emails and calls a
webhook on a local HTTP server; without drift, nothing. Real PostgreSQL; a real Celery worker
for the beat's path."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import StringIO

import numpy as np
import pytest
from django.core.management import CommandError, call_command
from django.test import Client, override_settings

from hitl.errors import InvalidInput
from hitl.models import (
    Alert,
    AlertStatus,
    Deployment,
    Environment,
    LabelSource,
    MonitoringReference,
    MonitorWindow,
    Prediction,
    ProjectRole,
    ReviewBatch,
    ReviewBatchStatus,
    ReviewReason,
)
from hitl.services.alerts import (
    NotificationFailed,
    WebhookRefused,
    _checked_address,
    alert_notify,
    alert_webhook_key,
)
from hitl.services.ingestion import predictions_ingest
from hitl.services.labels import label_submit
from hitl.services.monitoring import project_monitor, window_bounds, windows_due
from hitl.services.projects import deployment_create, project_update
from hitl.services.selection import review_batch_request
from tests.conftest import make_version, member, token_client
from workers.pipelines.selection import review_batch_select

pytestmark = pytest.mark.django_db

K = 10
REFERENCE_AT = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
QUIET_WINDOW = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)  # same mix as the reference
DRIFT_WINDOW = datetime(2026, 11, 30, 11, 0, tzinfo=UTC)
RULES = {"reference_size": 100, "min_window_predictions": 50, "notify_emails": ["ml-team@example.com"]}


def _probabilities(classes: list[int], confidences: np.ndarray) -> list[list[float]]:
    rows = []
    for c, q in zip(classes, confidences):
        row = [float((1 - q) / (K - 1))] * K
        row[c] = float(q)
        rows.append(row)
    return rows


class Stream:
    """Sends one deployment's predictions for fresh Fashion-MNIST images as if received at a time."""

    def __init__(self, deployment, write_images) -> None:
        self.deployment, self.write_images, self.next_index = deployment, write_images, 0

    def send(self, n: int, *, at: datetime, classes: list[int] | None = None,
             confidence: tuple[float, float] = (0.6, 0.99)) -> list[int]:
        indices = range(self.next_index, self.next_index + n)
        self.next_index += n
        paths = self.write_images(indices)
        classes = classes if classes is not None else [i % K for i in range(n)]  # an even mix
        # evenly spread confidences, shuffled against the classes: the same distribution each time
        confidences = np.random.default_rng(n).permutation(np.linspace(*confidence, n))
        result = predictions_ingest(deployment=self.deployment, payload={"predictions": [
            {"image_path": p, "probabilities": q} for p, q in zip(paths, _probabilities(classes, confidences))]})
        Prediction.objects.filter(item_id__in=result.item_ids, model_version=self.deployment.model_version
                                  ).update(received_at=at)
        return result.item_ids


def serving_since(deployment: Deployment, at: datetime = REFERENCE_AT - timedelta(days=1)) -> Deployment:
    """The deployment as if created at ``at``: windows that ended before a deployment existed are
    not judged, and these tests' windows lie on a fixed day."""
    Deployment.objects.filter(pk=deployment.pk).update(created_at=at)
    deployment.refresh_from_db()
    return deployment


@pytest.fixture()
def stream(project, deployment_and_token, write_images) -> Stream:
    project_update(project_id=project.id, changes={"monitoring": RULES})
    return Stream(serving_since(deployment_and_token[0]), write_images)


def _run(project, window_start: datetime):
    """The monitor as the beat runs it just after ``window_start``'s window ended."""
    return project_monitor(project_id=project.id, now=window_start + timedelta(hours=1, seconds=5))


class Receiver:
    """A local webhook receiver: records each request; answers ``status`` after ``delay``."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.status, self.delay = 200, 0.0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append({"headers": dict(self.headers), "body": body, "path": self.path})
                time.sleep(receiver.delay)
                self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/hitl?source=test"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.server.shutdown()
    server.server.server_close()


def test_window_bounds_are_the_last_complete_aligned_window() -> None:
    start, end = window_bounds(now=datetime(2026, 11, 30, 12, 34, 56, tzinfo=UTC), minutes=60)
    assert (start, end) == (datetime(2026, 11, 30, 11, 0, tzinfo=UTC), datetime(2026, 11, 30, 12, 0, tzinfo=UTC))
    start, end = window_bounds(now=datetime(2026, 11, 30, 12, 34, 56, tzinfo=UTC), minutes=15)
    assert (start, end) == (datetime(2026, 11, 30, 12, 15, tzinfo=UTC), datetime(2026, 11, 30, 12, 30, tzinfo=UTC))


def test_no_drift_no_alert_and_the_reference_is_recorded_once(project, version, stream) -> None:
    stream.send(100, at=REFERENCE_AT)
    stream.send(60, at=QUIET_WINDOW)
    run = _run(project, QUIET_WINDOW)
    assert run.alert_ids == [] and run.windows_measured == 2  # the deployment's and the version's
    window = MonitorWindow.objects.get(deployment__isnull=False)
    assert window.n_predictions == 60 and window.metrics["judged"]
    assert window.metrics["class_psi"] < 0.01 and window.metrics["confidence_psi"] < 0.1
    assert window.metrics["confidence_ks"] < 0.1 and window.metrics["ks_p_value"] > 0.5
    reference = MonitoringReference.objects.get(model_version=version)
    assert reference.n_predictions == 100 and reference.class_counts == [10] * K
    assert reference.last_received_at == REFERENCE_AT
    recorded = reference.recorded_at
    stream.send(60, at=DRIFT_WINDOW, classes=[3] * 60)  # later predictions never change the reference
    _run(project, DRIFT_WINDOW)
    reference.refresh_from_db()
    assert reference.recorded_at == recorded and reference.class_counts == [10] * K
    assert not Alert.objects.filter(window__window_start=QUIET_WINDOW).exists()


def test_a_new_class_mix_raises_an_alert_schedules_a_batch_and_notifies(
    project, version, stream, receiver, mailoutbox,
) -> None:
    stream.send(100, at=REFERENCE_AT)
    stream.send(60, at=QUIET_WINDOW)
    assert _run(project, QUIET_WINDOW).alert_ids == []
    # the deployment now sees mostly one class: 80% "dress" (class 3)
    stream.send(60, at=DRIFT_WINDOW, classes=[3] * 48 + [i % K for i in range(12)])
    with override_settings(HITL_ALERT_WEBHOOK_ALLOW_PRIVATE=True):
        project_update(project_id=project.id, changes={"monitoring": {**RULES, "webhook_url": receiver.url}})
        run = _run(project, DRIFT_WINDOW)
        alert = Alert.objects.get()
        assert run.alert_ids == [alert.pk] and alert.metric == "class_psi" and alert.status == AlertStatus.OPEN
        assert alert.value > 0.25 and alert.threshold == 0.25 and alert.window_start == DRIFT_WINDOW
        assert "predicted-class mix" in alert.message and alert.deployment.name == "edge-1"
        # the action: a review batch, scheduled by the monitor, which a worker then selects
        batch = ReviewBatch.objects.get()
        assert alert.review_batch == batch and batch.requested_by == "monitor" and alert.action == "review_batch"
        assert f"scheduled review batch {batch.id}" in alert.action_detail
        review_batch_select(batch_id=batch.id)
        batch.refresh_from_db()
        assert batch.status == ReviewBatchStatus.SELECTED and batch.tasks.count() == project.batch_size
        # notifications: one email, one signed webhook
        assert alert_notify(alert_id=alert.pk) == {"email": "sent", "webhook": "sent"}
    [email] = mailoutbox
    assert email.to == ["ml-team@example.com"] and project.slug in email.subject and alert.message in email.body
    [request] = receiver.requests
    assert request["path"] == "/hooks/hitl?source=test"
    signed = request["headers"]["X-Hitl-Timestamp"].encode() + b"." + request["body"]
    expected = "sha256=" + hmac.new(alert_webhook_key(project), signed, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(request["headers"]["X-Hitl-Signature"], expected)
    document = json.loads(request["body"])["alert"]
    assert document["id"] == alert.pk and document["metric"] == "class_psi" and document["review_batch"] == batch.id
    # a second run over the same window (or a redelivered notification) adds nothing
    assert _run(project, DRIFT_WINDOW).alert_ids == []
    assert Alert.objects.count() == 1 and ReviewBatch.objects.count() == 1
    assert alert_notify(alert_id=alert.pk) == {"email": "sent before", "webhook": "sent before"}
    assert len(mailoutbox) == 1 and len(receiver.requests) == 1


def test_darker_images_lower_confidence_and_alert(project, version, stream) -> None:
    stream.send(100, at=REFERENCE_AT)
    stream.send(60, at=DRIFT_WINDOW, confidence=(0.3, 0.7))  # same classes, the model much less sure
    run = _run(project, DRIFT_WINDOW)
    alerts = {a.metric: a for a in Alert.objects.filter(pk__in=run.alert_ids)}
    assert set(alerts) == {"confidence_psi", "confidence_ks"}
    assert alerts["confidence_ks"].value > 0.5 and "mean confidence 0.500" in alerts["confidence_ks"].message
    window = MonitorWindow.objects.get(deployment__isnull=False)
    assert window.metrics["class_psi"] < 0.01 and window.metrics["ks_p_value"] < 1e-6
    # one action for the run, shared by its alerts
    assert {a.review_batch_id for a in alerts.values()} == {ReviewBatch.objects.get().id}


def test_the_cool_down_and_the_other_actions(project, version, stream) -> None:
    stream.send(100, at=REFERENCE_AT)
    stream.send(60, at=QUIET_WINDOW, classes=[3] * 60)
    stream.send(60, at=DRIFT_WINDOW, classes=[5] * 60)
    first = Alert.objects.get(pk=_run(project, QUIET_WINDOW).alert_ids[0])
    second = Alert.objects.get(pk=_run(project, DRIFT_WINDOW).alert_ids[0])
    assert ReviewBatch.objects.count() == 1 and second.review_batch == first.review_batch
    assert "within the cool-down of 360 minutes" in second.action_detail
    later = DRIFT_WINDOW + timedelta(hours=1)
    stream.send(60, at=later, classes=[7] * 60)
    project_update(project_id=project.id, changes={"monitoring": {**RULES, "action": "retraining_cycle"}})
    third = Alert.objects.get(pk=_run(project, later).alert_ids[0])
    assert third.cycle is not None and third.cycle.requested_by == "monitor"
    assert third.action_detail == f"started retraining cycle {third.cycle.number}"
    even_later = later + timedelta(hours=1)
    stream.send(60, at=even_later, classes=[8] * 60)
    project_update(project_id=project.id, changes={"monitoring": {**RULES, "action": "none"}})
    fourth = Alert.objects.get(pk=_run(project, even_later).alert_ids[0])
    assert fourth.action == "none" and fourth.review_batch is None and fourth.cycle is None


@pytest.mark.django_db(transaction=True)
def test_the_monitor_is_idempotent_in_parallel(project, version, stream) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connections

    stream.send(100, at=REFERENCE_AT)
    stream.send(60, at=DRIFT_WINDOW, classes=[3] * 60)

    def monitor(_: int) -> list[int]:
        try:
            return _run(project, DRIFT_WINDOW).alert_ids
        finally:
            connections.close_all()

    with ThreadPoolExecutor(4) as pool:
        runs = list(pool.map(monitor, range(4)))
    assert sorted(len(ids) for ids in runs) == [0, 0, 0, 1]
    assert Alert.objects.count() == 1 and MonitorWindow.objects.count() == 2 and ReviewBatch.objects.count() == 1
    assert MonitoringReference.objects.count() == 1


def test_too_few_predictions_or_no_reference_are_not_judged(project, version, stream) -> None:
    stream.send(60, at=QUIET_WINDOW, classes=[3] * 60)  # no reference yet: 60 < 100 predictions
    assert _run(project, QUIET_WINDOW).alert_ids == []
    assert "no reference yet" in MonitorWindow.objects.get(deployment__isnull=False).metrics["not_judged"]
    stream.send(100, at=REFERENCE_AT)
    stream.send(20, at=DRIFT_WINDOW, classes=[3] * 20)
    assert _run(project, DRIFT_WINDOW).alert_ids == []
    window = MonitorWindow.objects.get(deployment__isnull=False, window_start=DRIFT_WINDOW)
    assert window.metrics["not_judged"] == "20 predictions, fewer than 50"


def test_a_volume_floor_alerts_on_a_silent_deployment(project, version, stream) -> None:
    project_update(project_id=project.id, changes={"monitoring": {**RULES, "min_predictions_per_window": 10}})
    run = _run(project, QUIET_WINDOW)
    [alert] = Alert.objects.filter(pk__in=run.alert_ids)
    assert alert.metric == "prediction_volume" and alert.value == 0 and alert.threshold == 10


def test_live_accuracy_and_reviewer_agreement_alert_per_model_version(project, version, stream, reviewer) -> None:
    stream.send(100, at=REFERENCE_AT)
    batch = review_batch_request(project=project, requested_by="t", size=40, audit_fraction=1.0)
    review_batch_select(batch_id=batch.id)
    tasks = list(batch.tasks.select_related("prediction"))
    assert len(tasks) == 40 and {t.reason for t in tasks} == {ReviewReason.AUDIT}
    for i, task in enumerate(tasks):  # reviewers agree with the model on 8 of 40
        predicted = task.prediction.predicted_label
        wrong = next(label for label in project.labels if label != predicted)
        label_submit(item_id=task.item_id, value=predicted if i < 8 else wrong, source=LabelSource.WEB,
                     reviewer=reviewer, review_task_id=task.id)
    rules = {**RULES, "min_live_accuracy": 0.8, "min_reviewer_agreement": 0.5, "action": "none"}
    project_update(project_id=project.id, changes={"monitoring": rules})
    run = project_monitor(project_id=project.id, now=datetime.now(UTC) + timedelta(hours=1))  # labels given now
    alerts = {a.metric: a for a in Alert.objects.filter(pk__in=run.alert_ids)}
    assert set(alerts) == {"live_accuracy", "reviewer_agreement"}
    assert alerts["live_accuracy"].deployment is None and alerts["live_accuracy"].model_version == version
    assert alerts["live_accuracy"].value == pytest.approx(0.2) and "40 audit labels" in alerts["live_accuracy"].message
    assert alerts["reviewer_agreement"].value == pytest.approx(0.2)
    metrics = MonitorWindow.objects.get(deployment__isnull=True).metrics
    assert metrics["live_accuracy"]["high"] < 0.8 and metrics["reviewer_agreement"] == {"n": 40, "agreed": 8,
                                                                                        "rate": 0.2}


def test_a_deployment_doing_worse_than_the_others_alerts_by_itself(
    project, version, stream, reviewer, write_images, client,
) -> None:
    cloud, _ = deployment_create(project=project, name="cloud-1", environment=Environment.CLOUD,
                                 model_version=version, storage_prefix="imgs")
    cloud_stream = Stream(serving_since(cloud), write_images)
    cloud_stream.next_index = 1000  # other images: one prediction per image and version is stored
    stream.send(100, at=REFERENCE_AT)
    cloud_stream.send(100, at=REFERENCE_AT)
    batch = review_batch_request(project=project, requested_by="t", size=80, audit_fraction=1.0)
    review_batch_select(batch_id=batch.id)
    tasks = list(batch.tasks.select_related("prediction__deployment"))
    edge_tasks = [t for t in tasks if t.prediction.deployment.name == "edge-1"]
    assert 20 <= len(edge_tasks) <= 60  # a uniform draw from both deployments' predictions
    for task in tasks:  # on the edge the model is always wrong, in the cloud always right
        predicted = task.prediction.predicted_label
        wrong = next(label for label in project.labels if label != predicted)
        label_submit(item_id=task.item_id, value=wrong if task in edge_tasks else predicted, source=LabelSource.WEB,
                     reviewer=reviewer, review_task_id=task.id)
    rules = {**RULES, "min_live_accuracy": 0.8, "min_audit_labels": 15, "min_reviewer_agreement": 0.3,
             "min_agreement_labels": 15, "action": "none"}
    project_update(project_id=project.id, changes={"monitoring": rules})
    run = project_monitor(project_id=project.id, now=datetime.now(UTC) + timedelta(hours=1))
    raised = {(a.deployment.name if a.deployment else None, a.metric)
              for a in Alert.objects.filter(pk__in=run.alert_ids).select_related("deployment")}
    assert raised == {("edge-1", "live_accuracy"), ("edge-1", "reviewer_agreement"), (None, "live_accuracy")}
    windows = {w.deployment.name if w.deployment else None: w.metrics
               for w in MonitorWindow.objects.select_related("deployment")}
    assert windows["edge-1"]["live_accuracy"]["n"] == len(edge_tasks) and windows["edge-1"]["live_accuracy"][
        "accuracy"] == 0.0
    assert windows["cloud-1"]["live_accuracy"]["accuracy"] == 1.0
    assert windows["cloud-1"]["reviewer_agreement"]["n"] == len(tasks) - len(edge_tasks)
    assert windows[None]["live_accuracy"]["n"] == len(tasks)
    client.force_login(reviewer)
    page = client.get(f"/projects/{project.slug}/alerts/").content.decode()
    assert page.count("no audit labels") == 0 and "1.000" in page and "0.000" in page


def test_one_deployment_has_its_quality_in_the_versions_window_only(project, version, stream) -> None:
    stream.send(100, at=REFERENCE_AT)
    stream.send(60, at=QUIET_WINDOW)
    _run(project, QUIET_WINDOW)
    assert "live_accuracy" not in MonitorWindow.objects.get(deployment__isnull=False).metrics
    assert "live_accuracy" in MonitorWindow.objects.get(deployment__isnull=True).metrics


def test_a_failing_receiver_is_recorded_and_retried_and_email_is_not_resent(
    project, version, stream, receiver, mailoutbox,
) -> None:
    stream.send(100, at=REFERENCE_AT)
    stream.send(60, at=DRIFT_WINDOW, classes=[3] * 60)
    with override_settings(HITL_ALERT_WEBHOOK_ALLOW_PRIVATE=True, HITL_ALERT_WEBHOOK_TIMEOUT=0.5):
        project_update(project_id=project.id, changes={"monitoring": {**RULES, "webhook_url": receiver.url}})
        [alert_id] = _run(project, DRIFT_WINDOW).alert_ids
        receiver.status = 500
        with pytest.raises(NotificationFailed, match="answered 500"):
            alert_notify(alert_id=alert_id)
        alert = Alert.objects.get(pk=alert_id)
        assert alert.webhook_sent_at is None and "answered 500" in alert.webhook_error and alert.email_sent_at
        receiver.status, receiver.delay = 200, 2.0  # too slow: the timeout, not a hung worker
        started = time.monotonic()
        with pytest.raises(NotificationFailed, match="timed out"):
            alert_notify(alert_id=alert_id)
        assert time.monotonic() - started < 1.5
        receiver.delay = 0
        assert alert_notify(alert_id=alert_id) == {"email": "sent before", "webhook": "sent"}
    assert len(mailoutbox) == 1 and len(receiver.requests) == 3
    alert.refresh_from_db()
    assert alert.webhook_sent_at and alert.webhook_error == ""


def test_webhooks_to_internal_addresses_are_refused(project, version, stream, receiver) -> None:
    for url in (receiver.url, "http://localhost/x", "http://169.254.169.254/latest/meta-data",
                "http://[::1]:8000/", "http://10.0.0.7/", "ftp://example.com/", "http://user:pw@example.com/"):
        with pytest.raises(InvalidInput) as refused:
            project_update(project_id=project.id, changes={"monitoring": {"webhook_url": url}})
        assert refused.value.errors[0].field == "monitoring.webhook_url", url
    with pytest.raises(WebhookRefused, match="not a public address"):
        _checked_address("localhost", 80)  # a name that resolves inside: refused when sent
    # allowed when set, then the setting goes: the delivery is refused, recorded, not retried
    stream.send(100, at=REFERENCE_AT)
    stream.send(60, at=DRIFT_WINDOW, classes=[3] * 60)
    with override_settings(HITL_ALERT_WEBHOOK_ALLOW_PRIVATE=True):
        project_update(project_id=project.id, changes={"monitoring": {**RULES, "webhook_url": receiver.url}})
    [alert_id] = _run(project, DRIFT_WINDOW).alert_ids
    outcome = alert_notify(alert_id=alert_id)
    assert "not a public address" in outcome["webhook"] and receiver.requests == []
    assert "not a public address" in Alert.objects.get(pk=alert_id).webhook_error


def test_monitoring_rules_are_validated(project, project_admin_client) -> None:
    url = f"/api/v1/projects/{project.slug}/"
    bad = project_admin_client.patch(url, {"monitoring": {"max_class_psi": "high", "colour": 1,
                                                          "notify_emails": ["not-an-address"],
                                                          "action": "panic"}}, format="json")
    assert bad.status_code == 400
    assert {e["field"] for e in bad.json()["errors"]} == {
        "monitoring.max_class_psi", "monitoring.colour", "monitoring.notify_emails", "monitoring.action"}
    good = project_admin_client.patch(url, {"monitoring": {"max_class_psi": 0.1, "window_minutes": 15}},
                                      format="json")
    assert good.status_code == 200 and good.json()["monitoring"] == {"max_class_psi": 0.1, "window_minutes": 15}
    assert project_admin_client.patch(url, {"monitoring": []}, format="json").status_code == 400


def test_the_webhook_url_is_shown_without_its_path_and_kept_when_sent_back(project, project_admin_client) -> None:
    url, secret_url = f"/api/v1/projects/{project.slug}/", "https://hooks.example.com/services/T0/B0/s3cr3t?x=1"
    shown = project_admin_client.patch(url, {"monitoring": {"webhook_url": secret_url}}, format="json").json()
    assert shown["monitoring"] == {"webhook_url": "https://hooks.example.com/…"} and "s3cr3t" not in str(shown)
    changed = project_admin_client.patch(url, {"monitoring": {**shown["monitoring"], "max_class_psi": 0.3}},
                                         format="json")
    assert changed.status_code == 200
    project.refresh_from_db()
    assert project.monitoring == {"webhook_url": secret_url, "max_class_psi": 0.3}
    project_admin_client.patch(url, {"monitoring": {"webhook_url": ""}}, format="json")
    project.refresh_from_db()
    assert project.monitoring == {"webhook_url": ""}


def test_alerts_api_page_and_acknowledging_by_role(project, version, stream) -> None:
    stream.send(100, at=REFERENCE_AT)
    stream.send(60, at=DRIFT_WINDOW, classes=[3] * 60)
    [alert_id] = _run(project, DRIFT_WINDOW).alert_ids
    viewer, reviewer = member(project, "vic", ProjectRole.VIEWER), member(project, "rob", ProjectRole.REVIEWER)
    engineer = member(project, "eve", ProjectRole.ML_ENGINEER)
    listed = token_client(viewer).get(f"/api/v1/projects/{project.slug}/alerts/?status=open").json()
    assert [a["id"] for a in listed["results"]] == [alert_id] and listed["results"][0]["deployment"] == "edge-1"
    assert token_client(viewer).get(f"/api/v1/projects/{project.slug}/alerts/?status=x").status_code == 400
    windows = token_client(viewer).get(f"/api/v1/projects/{project.slug}/monitor-windows/").json()["results"]
    assert {w["deployment"] for w in windows} == {"edge-1", None}
    refused = token_client(reviewer).post(f"/api/v1/alerts/{alert_id}/acknowledge/", {}, format="json")
    assert refused.status_code == 403 and "ml engineer role" in refused.json()["detail"]
    too_long = token_client(engineer).post(f"/api/v1/alerts/{alert_id}/acknowledge/", {"note": "x" * 2001},
                                           format="json")
    assert too_long.status_code == 400 and Alert.objects.get().status == AlertStatus.OPEN
    done = token_client(engineer).post(f"/api/v1/alerts/{alert_id}/acknowledge/", {"note": "new camera"},
                                       format="json").json()
    assert done["status"] == "acknowledged" and done["acknowledged_by_name"] == "eve"
    assert done["acknowledge_note"] == "new camera"
    again = token_client(engineer).post(f"/api/v1/alerts/{alert_id}/acknowledge/", {"note": "later"}, format="json")
    assert again.json()["acknowledge_note"] == "new camera" and again.json()["acknowledged_at"] == done[
        "acknowledged_at"]
    assert token_client(viewer).get(f"/api/v1/projects/{project.slug}/alerts/?status=open").json()["results"] == []
    page = Client()
    page.force_login(viewer)
    html = page.get(f"/projects/{project.slug}/alerts/").content.decode()
    assert "predicted-class mix" in html and "acknowledged" in html and "by eve" in html
    assert 'class="acknowledge"' not in html and "Acknowledging needs the ML engineer role" in html


def test_the_page_acknowledges_and_lists_open_alerts_first(project, version, stream) -> None:
    stream.send(100, at=REFERENCE_AT)
    stream.send(60, at=QUIET_WINDOW, classes=[5] * 60)
    stream.send(60, at=DRIFT_WINDOW, classes=[3] * 60)
    [older] = _run(project, QUIET_WINDOW).alert_ids
    [alert_id] = _run(project, DRIFT_WINDOW).alert_ids
    page = Client()
    page.force_login(member(project, "eve", ProjectRole.ML_ENGINEER))
    html = page.get(f"/projects/{project.slug}/alerts/").content.decode()
    assert html.count('class="acknowledge"') == 2 and "scheduled review batch" in html
    assert html.index(f'id="alert-{alert_id}"') < html.index(f'id="alert-{older}"')  # newest first
    response = page.post(f"/alerts/{alert_id}/acknowledge", {"note": "checked"})
    assert response.status_code == 302 and response["Location"] == f"/projects/{project.slug}/alerts/"
    alert = Alert.objects.get(pk=alert_id)
    assert alert.status == AlertStatus.ACKNOWLEDGED and alert.acknowledged_by_name == "eve"
    html = page.get(f"/projects/{project.slug}/alerts/").content.decode()
    assert html.index(f'id="alert-{older}"') < html.index(f'id="alert-{alert_id}"')  # open ones first
    assert html.count('class="acknowledge"') == 1 and "2 open" not in html and "1 open" in html


def test_the_monitor_command(project, version, stream) -> None:
    stream.send(100, at=REFERENCE_AT)
    out = StringIO()
    call_command("hitl", "monitor", "--project", project.slug, stdout=out)  # now: a window with nothing
    assert f"{project.slug}: window" in out.getvalue() and "0 new alert(s)" in out.getvalue()
    call_command("hitl", "monitor", "--project", project.slug, stdout=out)
    assert "0 measured now" in out.getvalue()
    keys = StringIO()
    call_command("hitl", "monitor", "--project", project.slug, "--webhook-key", stdout=keys)
    assert keys.getvalue().strip() == alert_webhook_key(project).decode()
    with pytest.raises(CommandError, match="no project 'nope'"):
        call_command("hitl", "monitor", "--project", "nope")
    call_command("hitl", "configure-project", "--project", project.slug, "--monitoring",
                 '{"window_minutes": 15, "action": "none"}', stdout=out)
    project.refresh_from_db()
    assert project.monitoring == {"window_minutes": 15, "action": "none"}
    with pytest.raises(CommandError, match="monitoring.window_minutes: must be between 5 and 10080"):
        call_command("hitl", "configure-project", "--project", project.slug, "--monitoring", '{"window_minutes": 1}')


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_the_beat_task_raises_the_alert_and_its_batch_is_selected_in_the_worker(
    project, version, stream, wait_until,
) -> None:
    from workers.celery import app

    week = 7 * 24 * 60  # a window the test will not see end
    project_update(project_id=project.id, changes={"monitoring": {**RULES, "window_minutes": week}})
    start, _ = window_bounds(now=datetime.now(UTC), minutes=week)
    serving_since(stream.deployment, start - timedelta(days=1))
    stream.send(100, at=start - timedelta(hours=2))
    stream.send(60, at=start + timedelta(minutes=1), classes=[3] * 60)
    app.send_task("workers.tasks.monitor_all")
    wait_until(lambda: Alert.objects.filter(project=project).exists(), "the monitor's alert")
    alert = Alert.objects.get(project=project)
    assert alert.metric == "class_psi" and alert.window_start == start
    wait_until(lambda: ReviewBatch.objects.get(pk=alert.review_batch_id).status != "pending", "the batch")
    assert ReviewBatch.objects.get(pk=alert.review_batch_id).status == ReviewBatchStatus.SELECTED


def _self_signed(folder) -> tuple[str, str]:
    """A certificate for localhost and its key, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=1))
            .not_valid_after(now + timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_file), str(key_file)


def test_an_https_webhook_checks_the_certificate_for_the_name_it_resolved(receiver, tmp_path, monkeypatch) -> None:
    import ssl

    from hitl.services.alerts import webhook_post

    cert, key = _self_signed(tmp_path)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    receiver.server.socket = server_context.wrap_socket(receiver.server.socket, server_side=True)
    port = receiver.server.server_address[1]
    document = {"id": 1}
    with override_settings(HITL_ALERT_WEBHOOK_ALLOW_PRIVATE=True, HITL_ALERT_WEBHOOK_TIMEOUT=2):
        with pytest.raises(NotificationFailed, match="CERTIFICATE_VERIFY_FAILED"):  # not trusted yet
            webhook_post(url=f"https://localhost:{port}/hook", key=b"k", document=document)
        trusting = ssl.create_default_context(cafile=cert)
        monkeypatch.setattr(ssl, "_create_default_https_context", lambda *a, **kw: trusting)
        # the name is resolved once, the address checked and connected to, the certificate checked for the name
        assert webhook_post(url=f"https://localhost:{port}/hook", key=b"k", document=document) == 200
        with pytest.raises(NotificationFailed, match="IP address mismatch|doesn't match|CERTIFICATE_VERIFY_FAILED"):
            webhook_post(url=f"https://127.0.0.1:{port}/hook", key=b"k", document=document)
    assert [r["path"] for r in receiver.requests] == ["/hook"]


def test_windows_missed_while_the_monitor_was_down_are_judged_on_its_next_run(project, version, stream) -> None:
    stream.send(100, at=REFERENCE_AT)
    stream.send(60, at=QUIET_WINDOW)
    assert _run(project, QUIET_WINDOW).missed_windows == 0
    # beat is down for two windows; the deployment drifts in the first of them only
    stream.send(60, at=DRIFT_WINDOW, classes=[3] * 60)
    stream.send(60, at=DRIFT_WINDOW + timedelta(hours=1))
    stream.send(60, at=DRIFT_WINDOW + timedelta(hours=2))
    run = _run(project, DRIFT_WINDOW + timedelta(hours=2))
    assert (run.window_start, run.missed_windows, run.windows_measured) == (DRIFT_WINDOW + timedelta(hours=2), 2, 6)
    judged = MonitorWindow.objects.filter(deployment__isnull=False).order_by("window_start")
    assert [w.window_start for w in judged] == [QUIET_WINDOW + timedelta(hours=h) for h in range(4)]
    [alert] = Alert.objects.filter(pk__in=run.alert_ids)
    assert alert.metric == "class_psi" and alert.window_start == DRIFT_WINDOW and alert.review_batch is not None
    assert _run(project, DRIFT_WINDOW + timedelta(hours=2)).windows_measured == 0  # judged once


def test_a_catch_up_skips_windows_before_a_deployment_existed_and_counts_all_it_sent(
    project, version, stream, write_images,
) -> None:
    project_update(project_id=project.id, changes={"monitoring": {**RULES, "min_predictions_per_window": 10}})
    stream.send(100, at=REFERENCE_AT)
    stream.send(60, at=QUIET_WINDOW)
    _run(project, QUIET_WINDOW)
    stream.send(60, at=DRIFT_WINDOW)  # by v1; edge-1 then switches to v2 before the monitor runs again
    v2 = make_version(project, "v2", seed=1)
    Deployment.objects.filter(name="edge-1").update(model_version=v2)
    late, _ = deployment_create(project=project, name="edge-2", environment=Environment.EDGE, model_version=v2)
    serving_since(late, DRIFT_WINDOW + timedelta(minutes=90))  # during the outage
    run = _run(project, DRIFT_WINDOW + timedelta(hours=1))
    assert run.missed_windows == 1
    windows = {(w.deployment.name, w.window_start): w for w in MonitorWindow.objects.filter(
        deployment__isnull=False, window_start__gte=DRIFT_WINDOW).select_related("deployment")}
    assert set(windows) == {("edge-1", DRIFT_WINDOW), ("edge-1", DRIFT_WINDOW + timedelta(hours=1)),
                            ("edge-2", DRIFT_WINDOW + timedelta(hours=1))}  # not the hour before edge-2 existed
    sent = windows[("edge-1", DRIFT_WINDOW)].metrics
    assert (sent["predictions"], sent["version_predictions"]) == (60, 0)  # volume counts v1's predictions too
    volume = Alert.objects.filter(pk__in=run.alert_ids, metric="prediction_volume")
    assert {(a.deployment.name, a.window_start) for a in volume} == {
        ("edge-1", DRIFT_WINDOW + timedelta(hours=1)), ("edge-2", DRIFT_WINDOW + timedelta(hours=1))}


def test_alerts_a_dead_run_measured_but_never_acted_on_are_acted_on_by_the_next(project, version, stream) -> None:
    from hitl.monitorspec import monitoring_rules
    from hitl.services.monitoring import _measure

    stream.send(100, at=REFERENCE_AT)
    stream.send(60, at=DRIFT_WINDOW, classes=[3] * 60)
    project.refresh_from_db()  # the rules the stream fixture set
    _measure(project, monitoring_rules(project.monitoring), DRIFT_WINDOW, DRIFT_WINDOW + timedelta(hours=1))
    [left] = Alert.objects.all()  # committed with its window; the run died before its action
    assert (left.action_detail, left.review_batch) == ("", None)
    run = _run(project, DRIFT_WINDOW)
    assert run.windows_measured == 0 and run.alert_ids == [left.pk]
    left.refresh_from_db()
    assert left.review_batch == ReviewBatch.objects.get() and "scheduled review batch" in left.action_detail
    assert _run(project, DRIFT_WINDOW).alert_ids == []  # acted on once


def test_a_catch_up_notifies_once_per_kind_of_alert(project, version, stream, monkeypatch) -> None:
    sent: list[tuple] = []
    monkeypatch.setattr("hitl.services.monitoring.enqueue", lambda *task: sent.append(task))
    stream.send(100, at=REFERENCE_AT)
    stream.send(60, at=QUIET_WINDOW)
    _run(project, QUIET_WINDOW)
    for hour in range(3):  # the deployment drifts through three windows while beat is down
        stream.send(60, at=DRIFT_WINDOW + timedelta(hours=hour), classes=[3] * 60)
    run = _run(project, DRIFT_WINDOW + timedelta(hours=2))
    alerts = Alert.objects.filter(pk__in=run.alert_ids, metric="class_psi").order_by("window_start")
    assert len(alerts) == 3 and run.missed_windows == 2
    newest = {a.pk for a in Alert.objects.filter(pk__in=run.alert_ids, window_start=DRIFT_WINDOW + timedelta(hours=2))}
    assert sent and {alert for _, alert in sent} == newest  # the newest window's alert of each kind only
    assert all(task == "workers.tasks.alert_notify" for task, _ in sent)


def test_a_long_outage_judges_the_newest_missed_windows_only(project, version, settings) -> None:
    MonitorWindow.objects.create(project=project, model_version=version, window_start=QUIET_WINDOW,
                                 window_end=DRIFT_WINDOW, n_predictions=0, metrics={})
    due = windows_due(project, now=DRIFT_WINDOW + timedelta(days=10, minutes=1), minutes=60)
    assert len(due) == settings.HITL_MONITOR_CATCH_UP_WINDOWS == 48 and due[-1][1] == DRIFT_WINDOW + timedelta(days=10)
    assert all(b - a == timedelta(hours=1) and a2 == b for (a, b), (a2, _) in zip(due, due[1:]))
    assert windows_due(project, now=DRIFT_WINDOW + timedelta(minutes=5), minutes=60) == [(QUIET_WINDOW, DRIFT_WINDOW)]
