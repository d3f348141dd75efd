import hashlib
import importlib.util
import json
import re
from datetime import timedelta

import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

from hitl.media import media_path
from hitl.models import (
    Alert,
    CycleStatus,
    EvaluationSet,
    Label,
    ModelStage,
    ModelVersion,
    MonitorWindow,
    ProjectRole,
    RetrainingCycle,
    ReviewReason,
    ReviewTask,
    ReviewTaskStatus,
    TrustEvent,
)
from hitl.selectors import golden_accuracy_history
from hitl.services.cycles import cycle_progress_record, cycle_training_start
from hitl.services.labels import label_submit
from hitl.services.selection import review_batch_request
from tests.conftest import member
from tests.workbench import trained_cycles
from workers.pipelines.selection import review_batch_select
from workers.tasks import trust_verify_project

pytestmark = pytest.mark.django_db


@pytest.fixture()
def open_tasks(project, ingest) -> list[ReviewTask]:
    ingest(range(6))
    batch = review_batch_request(project=project, requested_by="t", size=4)
    review_batch_select(batch_id=batch.id)
    return list(batch.tasks.select_related("prediction").order_by("rank"))


def test_pages_need_a_login(client, project) -> None:
    for url in ["/", f"/projects/{project.slug}/review/", f"/projects/{project.slug}/cycles/"]:
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/login/")


def test_review_queue_shows_open_tasks(client, reviewer, project, open_tasks) -> None:
    client.force_login(reviewer)
    page = client.get(f"/projects/{project.slug}/review/").content.decode()
    assert page.count('class="card"') == 4
    assert open_tasks[0].prediction.predicted_label in page
    assert f"/api/v1/items/{open_tasks[0].item_id}/image" in page


def test_accept_correct_and_skip(client, reviewer, project, open_tasks) -> None:
    client.force_login(reviewer)
    accepted, corrected, skipped = open_tasks[:3]
    client.post(f"/review-tasks/{accepted.id}/label", {"value": accepted.prediction.predicted_label, "shown_at": "0"})
    other = next(label for label in project.labels if label != corrected.prediction.predicted_label)
    response = client.post(f"/review-tasks/{corrected.id}/label", {"value": other}, follow=True)
    assert f"Corrected to &#x27;{other}&#x27;" in response.content.decode()
    client.post(f"/review-tasks/{skipped.id}/label", {"action": "skip"})
    labels = {label.item_id: label for label in Label.objects.all()}
    assert labels[accepted.item_id].value == accepted.prediction.predicted_label
    assert labels[accepted.item_id].source == "web" and labels[accepted.item_id].reviewer == reviewer
    assert labels[accepted.item_id].lead_time_seconds is None  # a nonsense shown_at is not recorded
    assert labels[corrected.item_id].value == other
    assert labels[corrected.item_id].prediction_id == corrected.prediction_id
    statuses = dict(ReviewTask.objects.values_list("id", "status"))
    assert statuses[accepted.id] == statuses[corrected.id] == ReviewTaskStatus.DONE
    assert statuses[skipped.id] == ReviewTaskStatus.SKIPPED and skipped.item_id not in labels


def test_an_unknown_label_is_an_error_message(client, reviewer, open_tasks) -> None:
    client.force_login(reviewer)
    response = client.post(f"/review-tasks/{open_tasks[0].id}/label", {"value": "zebra"}, follow=True)
    assert "unknown label &#x27;zebra&#x27;" in response.content.decode()
    assert not Label.objects.exists()


# --- The workbench pages: dashboard, models, trust, cycle progress and pictures (issue 11).



def chart_data(page: str, element_id: str) -> object:
    """The JSON a page hands one of its charts (Django's json_script)."""
    found = re.search(rf'<script id="{re.escape(element_id)}" type="application/json">(.*?)</script>', page, re.S)
    assert found, f"no chart data {element_id!r} on the page"
    return json.loads(found.group(1))


@pytest.fixture()
def trained(project, labeled_items):
    return trained_cycles(project, labeled_items)


def test_cycle_page_hands_its_charts_the_snapshot(client, project, trained) -> None:
    first, second = trained
    client.force_login(member(project, "vic", ProjectRole.VIEWER))
    page = client.get(f"/cycles/{second.pk}/").content.decode()
    assert "chart.umd.min.js" in page and "chartjs-chart-matrix.min.js" in page and "<script>" not in page
    candidate = second.snapshots.get(role="candidate", eval_set=EvaluationSet.GOLDEN)
    production = second.snapshots.get(role="production", eval_set=EvaluationSet.GOLDEN)
    heatmap = chart_data(page, "confusion-golden-candidate")
    assert len(heatmap["cells"]) == 100 and sum(c["v"] for c in heatmap["cells"]) == candidate.n_items == 45
    diagonal = sum(c["v"] for c in heatmap["cells"] if c["x"] == c["y"])
    assert diagonal == round(candidate.accuracy * 45)
    recall = chart_data(page, "recall-golden-candidate")
    coat = recall["labels"].index("coat")
    assert recall["recall"][coat] == candidate.metrics["per_class"]["coat"]["recall"]
    assert recall["intervals"][coat] == [candidate.intervals["per_class_recall"]["coat"]["lower"],
                                         candidate.intervals["per_class_recall"]["coat"]["upper"]]
    deltas = chart_data(page, "deltas-data")
    assert deltas["delta"][0] == pytest.approx(candidate.accuracy - production.accuracy)
    assert deltas["accuracy_difference"] == candidate.intervals["versus_production"]["accuracy_difference"]
    reliability = chart_data(page, "reliability-data")
    assert reliability["golden"] and [b["y"] for b in reliability["golden"]] == [
        b["accuracy"] for b in candidate.metrics["reliability"]]
    calibration = second.candidate_version.calibration
    assert calibration["fitted"] and reliability["temperature"] == calibration["temperature"]
    assert [(b["x"], b["count"]) for b in reliability["before"]] == [
        (b["confidence"], b["count"]) for b in calibration["reliability_before"]]
    assert [b["y"] for b in reliability["after"]] == [b["accuracy"] for b in calibration["reliability_after"]]
    assert f"after temperature {calibration['temperature']:.2f}" in page
    progress = chart_data(page, "progress-data")
    assert [r["epoch"] for r in progress["history"]] == [1, 2] and progress["active"] is False
    assert (progress["epoch"], progress["epochs"]) == (2, 2)  # where training ended
    assert progress["train_loss"] == progress["history"][-1]["train_loss"] and progress["eta_seconds"] is None
    assert 'id="gate-rules"' in page and "non_inferiority" in page
    assert "Approve and promote" not in page and "Cancel this cycle" not in page  # a viewer may not


def test_progress_keeps_every_epoch_estimates_time_left_and_a_cycle_is_cancelled_from_its_page(
        client, project, labeled_items) -> None:
    labeled_items(range(10))
    cycle = RetrainingCycle.objects.create(project=project, number=1, requested_by="t", train_config={"epochs": 4})
    cycle_training_start(cycle_id=cycle.id)
    for epoch in (1, 2):
        assert cycle_progress_record(cycle_id=cycle.id, epoch=epoch, epochs=4, train_loss=1.0 / epoch,
                                     train_accuracy=0.5, attempt=1)
    cycle_training_start(cycle_id=cycle.id)  # the worker died: attempt 2 resumes after epoch 2
    cycle_progress_record(cycle_id=cycle.id, epoch=3, epochs=4, train_loss=0.3, train_accuracy=0.6, attempt=2,
                          resumed_from_epoch=2)
    cycle.refresh_from_db()
    assert [(r["epoch"], r["attempt"]) for r in cycle.progress["history"]] == [(1, 1), (2, 1), (3, 2)]
    # attempt 2 started 30 s before its first epoch ended: one epoch left, about 30 s
    started = timezone.now() - timedelta(seconds=60)
    history = cycle.progress["history"]
    history[-1]["at"] = (started + timedelta(seconds=30)).isoformat()
    RetrainingCycle.objects.filter(pk=cycle.pk).update(started_at=started, progress={**cycle.progress,
                                                                                    "history": history})
    viewer = member(project, "vic", ProjectRole.VIEWER)
    client.force_login(viewer)
    progress = client.get(f"/cycles/{cycle.pk}/progress").json()
    assert progress["epoch"] == 3 and progress["epochs"] == 4 and progress["active"] is True
    assert progress["eta_seconds"] == pytest.approx(30, abs=0.5)
    assert [r["train_loss"] for r in progress["history"]] == [1.0, 0.5, 0.3]
    page = client.get(f"/cycles/{cycle.pk}/").content.decode()
    assert 'data-active="true"' in page and "cycle-progress.js" in page and "Cancel this cycle" not in page

    assert client.post(f"/cycles/{cycle.pk}/cancel").status_code == 403
    assert RetrainingCycle.objects.get(pk=cycle.pk).status == CycleStatus.TRAINING
    client.force_login(member(project, "otto", ProjectRole.ML_ENGINEER))
    assert "Cancel this cycle" in client.get(f"/cycles/{cycle.pk}/").content.decode()
    response = client.post(f"/cycles/{cycle.pk}/cancel", follow=True)
    assert "Cycle 1 cancelled." in response.content.decode()
    assert client.get(f"/cycles/{cycle.pk}/progress").json()["active"] is False
    response = client.post(f"/cycles/{cycle.pk}/cancel", follow=True)  # twice: a message, nothing changes
    assert "already cancelled" in response.content.decode()
    # an attempt that starts over replaces the epochs from its own on
    cycle_progress_record(cycle_id=cycle.id, epoch=1, epochs=4, train_loss=2.0, train_accuracy=0.1, attempt=3)
    assert [r["epoch"] for r in RetrainingCycle.objects.get(pk=cycle.pk).progress["history"]] == [1]


def test_models_page_lineage_downloads_approval_and_rollback(client, project, trained) -> None:
    first, second = trained
    v1, v2 = first.candidate_version, second.candidate_version
    client.force_login(member(project, "vic", ProjectRole.VIEWER))
    url = f"/projects/{project.slug}/models/"
    page = client.get(url).content.decode()
    assert page.index('data-model="v1"') < page.index('data-model="v2"')  # the child below its parent
    v2_row = page.split('data-model="v2"')[1].split("</tr>")[0]
    assert "padding-left: 2rem" in v2_row and "from v1" in v2_row and "awaiting_approval" in v2_row
    assert f'<td class="num">{v2.training_labels.count()}</td>' in v2_row
    golden = second.snapshots.get(role="candidate", eval_set=EvaluationSet.GOLDEN)
    assert f"{golden.accuracy:.3f}" in v2_row and f"{golden.intervals['accuracy']['lower']:.3f}" in v2_row
    assert "<form" not in page.split('id="registry"')[1]  # a viewer sees no action

    artifact = v2.artifacts.get(kind="weights")
    response = client.get(f"/projects/{project.slug}/models/v2/weights")
    body = b"".join(response.streaming_content)
    assert response.status_code == 200 and hashlib.sha256(body).hexdigest() == artifact.sha256
    assert media_path(artifact.path).read_bytes() == body and response["X-Content-SHA256"] == artifact.sha256
    assert client.get(f"/projects/{project.slug}/models/v2/config").status_code == 404
    onnx = media_path(v2.artifacts.get(kind="onnx").path)  # swapped for a link to a file outside: refused
    outside = onnx.parent.parent.parent.parent / "secret.bin"
    outside.write_bytes(b"secret")
    onnx.unlink()
    onnx.symlink_to(outside)
    assert client.get(f"/projects/{project.slug}/models/v2/onnx").status_code == 404
    assert client.get(f"/projects/{project.slug}/models/v9/weights").status_code == 404
    assert client.post(f"/cycles/{second.pk}/decide", {"decision": "approve", "reason": "x", "next": url}).status_code == 403

    client.force_login(member(project, "otto", ProjectRole.ML_ENGINEER))
    page = client.get(url).content.decode()
    assert page.count('class="actions approve"') == 1 and 'class="actions rollback"' not in page
    response = client.post(f"/cycles/{second.pk}/decide", {"decision": "approve", "reason": "charts checked",
                                                          "next": url})
    assert response.status_code == 302 and response["Location"] == url
    assert ModelVersion.objects.get(pk=v2.pk).stage == ModelStage.PRODUCTION
    page = client.get(url).content.decode()
    assert "Cycle 2: approved by otto: charts checked" in page and page.count('class="actions rollback"') == 1
    response = client.post(f"/projects/{project.slug}/rollback", {"model_version": "v1", "reason": "drift",
                                                                   "next": "https://evil.example/"})
    assert response["Location"] == f"/projects/{project.slug}/cycles/"  # only a path on this site
    assert ModelVersion.objects.get(pk=v1.pk).stage == ModelStage.PRODUCTION
    assert TrustEvent.objects.filter(project=project, kind="model_rolled_back", actor="otto").exists()
    # production over time: v1 by the gate, v1 measured by cycle 2, v2 approved, v1 rolled back to
    history = golden_accuracy_history(project)
    assert [(p.model_version, p.source.split(";")[0]) for p in history] == [
        ("v1", "entered production (promotion gate (cycle 1))"), ("v1", "measured as production"),
        ("v2", "entered production (otto)"), ("v1", "entered production (otto)")]
    rolled_back = TrustEvent.objects.filter(project=project, kind="model_promoted").order_by("sequence").last()
    assert history[-1].at == rolled_back.created_at and history[-1].accuracy == history[1].accuracy


def test_trust_page_verifies_the_chain_charts_accuracy_and_exports(client, project, trained) -> None:
    first, second = trained
    client.force_login(member(project, "vic", ProjectRole.VIEWER))
    url = f"/projects/{project.slug}/trust/"
    page = client.get(url).content.decode()
    events = TrustEvent.objects.filter(project=project).count()
    assert 'badge promoted">verified' in page and f"{events} events" in page
    assert page.count("<tr data-kind=") == events and 'data-kind="gate_evaluated"' in page
    chart = chart_data(page, "accuracy-data")
    v1_golden = first.snapshots.get(role="candidate", eval_set=EvaluationSet.GOLDEN)
    # v1 entered production with its golden accuracy; cycle 2 measured it again as production
    assert [(p["version"], p["y"]) for p in chart["golden"]] == [
        ("v1", v1_golden.accuracy), ("v1", second.snapshots.get(role="production", eval_set="golden").accuracy)]
    assert chart["audit"] == []

    response = client.get(f"/projects/{project.slug}/trust/export")
    lines = b"".join(response.streaming_content).decode().splitlines()
    assert response["Content-Disposition"].endswith('-trust.jsonl"') and len(lines) == events + 1
    spec = importlib.util.spec_from_file_location(
        "verify_trust_export", settings.BASE_DIR / "scripts" / "verify_trust_export.py")
    verifier = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(verifier)
    keys = verifier.load_keys(settings.HITL_TRUST_PUBLIC_KEYS.read_bytes())
    assert verifier.verify(lines, keys, None) is None

    with connection.cursor() as cursor:
        cursor.execute("UPDATE hitl_trustevent SET actor = 'mallory' WHERE project_id = %s AND sequence = 3",
                       [project.id])
    # an event older than the last full check is re-read by the next one (beat's, hourly)
    assert 'badge promoted">verified' in client.get(url).content.decode()
    assert trust_verify_project(project.id) is False
    page = client.get(url).content.decode()
    assert 'badge rejected">broken' in page and "at event 3 (edited)" in page


def test_dashboard_shows_production_live_accuracy_queue_and_last_cycle(client, project, version, ingest) -> None:
    ingest(range(12))
    batch = review_batch_request(project=project, requested_by="t", size=6, audit_fraction=0.5)
    review_batch_select(batch_id=batch.id)
    audit = list(batch.tasks.filter(reason=ReviewReason.AUDIT).select_related("prediction"))
    assert len(audit) == 3
    for i, task in enumerate(audit):  # the reviewer agrees with the model on 2 of 3 audited items
        value = task.prediction.predicted_label if i < 2 else next(
            label for label in project.labels if label != task.prediction.predicted_label)
        label_submit(item_id=task.item_id, value=value, source="web", reviewer_name="rita", review_task_id=task.id)
    cycle = RetrainingCycle.objects.create(project=project, number=7, requested_by="t", status=CycleStatus.FAILED,
                                           error="boom")
    client.force_login(member(project, "vic", ProjectRole.VIEWER))
    page = client.get(f"/projects/{project.slug}/").content.decode()
    production = page.split('id="production"')[1].split('id="live-accuracy"')[0]
    assert "v1" in production and "not evaluated on a golden set yet" in production
    live = page.split('id="live-accuracy"')[1].split('id="queue"')[0]
    assert ">0.667<" in live and "on 3 audited items of v1" in live
    queue = page.split('id="queue"')[1].split('id="last-cycle"')[0]
    assert ">3</a> open" in queue and "3 by strategy · 0 audit · 0 golden" in queue
    last = page.split('id="last-cycle"')[1]
    assert f"/cycles/{cycle.pk}/" in last and "Cycle 7" in last and "failed" in last
    assert "No open alert." in page and "No drift data yet" in page
    chart = chart_data(page, "accuracy-data")
    assert [(p["version"], round(p["y"], 3), p["n"]) for p in chart["audit"]] == [("v1", 0.667, 3)]
    low, high = chart["audit"][0]["low"], chart["audit"][0]["high"]
    assert 0 < low < 2 / 3 < high < 1
    nav = page.split("<nav>")[1].split("</nav>")[0]
    assert all(f"/projects/{project.slug}/{path}" in nav for path in ("", "review/", "cycles/", "models/", "trust/"))


@pytest.mark.parametrize("path", ["/cycles/99999999999999999999/progress", "/cycles/9223372036854775808/",
                                  "/projects/{slug}/models/{long}/weights", "/projects/{slug}/models/v1/%00",
                                  "/projects/{slug}/models/v%001/weights"])
def test_hostile_ids_and_names_on_the_pages_are_not_found(client, project, version, path) -> None:
    client.force_login(member(project, "vic", ProjectRole.VIEWER))
    assert client.get(path.format(slug=project.slug, long="v" * 5000)).status_code == 404


def test_dashboard_shows_open_alerts_and_a_drift_sparkline(client, project, version, deployment_and_token) -> None:
    deployment = deployment_and_token[0]
    start = timezone.now() - timedelta(hours=3)
    windows = [MonitorWindow.objects.create(
        project=project, deployment=deployment, model_version=version, window_start=start + timedelta(hours=h),
        window_end=start + timedelta(hours=h + 1), n_predictions=100,
        metrics={"judged": True, "class_psi": psi, "confidence_psi": psi / 2}) for h, psi in enumerate([0.01, 0.02, 0.6])]
    MonitorWindow.objects.create(project=project, deployment=deployment, model_version=version,
                                 window_start=start + timedelta(hours=3), window_end=start + timedelta(hours=4),
                                 n_predictions=3, metrics={"judged": False, "not_judged": "3 predictions"})
    common = {"project": project, "deployment": deployment, "model_version": version, "window": windows[2],
              "window_start": windows[2].window_start, "window_end": windows[2].window_end}
    Alert.objects.create(**common, metric="class_psi", value=0.6, threshold=0.25, message="class mix PSI 0.600")
    Alert.objects.create(**common, metric="confidence_psi", value=0.3, threshold=0.25, message="confidence PSI 0.300",
                         status="acknowledged", acknowledged_at=timezone.now())
    client.force_login(member(project, "vic", ProjectRole.VIEWER))
    page = client.get(f"/projects/{project.slug}/").content.decode()
    alerts = page.split('id="alerts"')[1].split("</div>\n</div>")[0]
    assert alerts.count('class="alert"') == 1 and "class mix PSI 0.600" in alerts and "confidence PSI 0.300" not in alerts
    chart = chart_data(page, "drift-data")
    assert [d["name"] for d in chart["deployments"]] == [deployment.name]
    assert [p["class_psi"] for p in chart["deployments"][0]["points"]] == [0.01, 0.02, 0.6]  # the unjudged one left out
