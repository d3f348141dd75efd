"""(d) A worker's pool process SIGKILLed in each task type: the work completes exactly once.

Each case stops its task at a known point (a query on a table the test holds ``ACCESS
EXCLUSIVE``), SIGKILLs the pool process running it, then lets the database go. The broker hands
the message back (acks_late + reject_on_worker_lost) and the next pool process runs it again.
Where the dead process still held the work's advisory lock when the redelivered task arrived,
the re-sent task returns at once and hitl's beat (``requeue_stalled_work``) re-sends the work
later: the test first waits for the redelivery alone, then fires the beat as production would.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.utils import timezone

import labeling.tasks  # noqa: F401 - registers the Label Studio tasks with the app
import workers.tasks  # noqa: F401 - registers hitl's tasks with the app
from hitl.models import (
    Alert,
    CycleStatus,
    Deployment,
    EvaluationSnapshot,
    Label,
    LabelStatus,
    ModelVersion,
    MonitorWindow,
    Prediction,
    RetrainingCycle,
    ReviewBatch,
    ReviewBatchStatus,
    ReviewTask,
    TrustEvent,
    TrustVerification,
    UncertaintyScore,
)
from hitl.services.cycles import cycle_request
from hitl.services.ingestion import items_register, predictions_ingest
from hitl.services.monitoring import project_monitor, window_bounds
from hitl.services.selection import review_batch_request
from hitl.services.trust import trust_record
from labeling.mapping import choice_result
from labeling.models import (
    EventState,
    LabelStudioAnnotation,
    LabelStudioProject,
    LabelStudioTask,
    PushState,
    WebhookEvent,
)
from tests.conftest import WorkerProcess
from tests.reliability.conftest import STALLED_AFTER, VISIBILITY_TIMEOUT, TableLock, report_section
from tests.reliability.test_worker_kill_label_studio import LABEL_STUDIO_KILL_CASES
from workers.celery import app as celery_app
from workers.ml.uncertainty import SCORERS
from workers.pipelines.scoring import predictions_score
from workers.pipelines.selection import review_batch_select

pytestmark = [pytest.mark.faults, pytest.mark.worker, pytest.mark.django_db(transaction=True)]
POOL = 40
BATCH_SIZE = 10
REDELIVERY_GRACE = 25  # seconds the redelivered message alone gets before the beat fires
RESULTS: dict[str, dict[str, Any]] = {}
WEEK_MINUTES = 7 * 24 * 60  # monitoring windows no test run crosses the end of


@dataclass
class Setup:
    project: Any
    version: ModelVersion
    ingest: Callable[..., Any]
    labeled_items: Callable[..., list[int]]
    write_images: Callable[..., list[str]]
    state: dict[str, Any]


@dataclass(frozen=True)
class KillCase:
    """``prepare`` builds the state (no task sent); ``start`` sends the task while ``table`` is
    locked; ``done`` says the work finished; ``check`` asserts it was done exactly once."""

    task: str
    table: str
    prepare: Callable[[Setup], None]
    start: Callable[[Setup], None]
    done: Callable[[Setup], bool]
    check: Callable[[Setup], None]


def _nothing(setup: Setup) -> None:
    pass


def _scored_pool(setup: Setup) -> None:
    setup.ingest(range(200, 200 + POOL))
    predictions_score(model_version_id=setup.version.id, wait=True)


def _all_scored(setup: Setup) -> bool:
    return not Prediction.objects.filter(scored_at__isnull=True).exists()


def _check_scores(setup: Setup) -> None:
    assert Prediction.objects.filter(model_version=setup.version).count() == POOL
    assert UncertaintyScore.objects.count() == POOL * len(SCORERS)


def _request_batch(strategy: str) -> Callable[[Setup], None]:
    def start(setup: Setup) -> None:
        setup.state["batch"] = review_batch_request(
            project=setup.project,
            requested_by="test",
            size=BATCH_SIZE,
            audit_fraction=0.2,
            strategy=strategy,
        ).id

    return start


def _lost_batch(setup: Setup) -> None:
    """A pending batch whose selection message was lost (created without sending it)."""
    _scored_pool(setup)
    batch = ReviewBatch.objects.create(
        project=setup.project,
        strategy="margin",
        size=BATCH_SIZE,
        audit_fraction=0.2,
        seed=1,
        requested_by="test",
    )
    ReviewBatch.objects.filter(pk=batch.pk).update(created_at=batch.created_at.replace(year=2000))
    setup.state["batch"] = batch.id


def _batch_selected(setup: Setup) -> bool:
    return ReviewBatch.objects.get(pk=setup.state["batch"]).status != ReviewBatchStatus.PENDING


def _check_batch(setup: Setup) -> None:
    batch = ReviewBatch.objects.get(pk=setup.state["batch"])
    assert batch.status == ReviewBatchStatus.SELECTED, batch.error
    items = list(
        ReviewTask.objects.filter(batch__project=setup.project).values_list("item_id", flat=True)
    )
    assert len(items) == BATCH_SIZE and len(set(items)) == BATCH_SIZE


def _labeled_project(setup: Setup) -> None:
    setup.labeled_items(range(150), folder="train")
    # no promotion (no golden set this big): nothing else is sent after the cycle
    setup.project.gate_rules = {"min_golden_size": 1_000_000}
    setup.project.save()


def _request_cycle(setup: Setup) -> None:
    setup.state["cycle"] = cycle_request(project=setup.project, requested_by="test").id


def _cycle_finished(setup: Setup) -> bool:
    return RetrainingCycle.objects.get(pk=setup.state["cycle"]).is_finished


def _check_cycle(setup: Setup) -> None:
    cycle = RetrainingCycle.objects.get(pk=setup.state["cycle"])
    assert cycle.status == CycleStatus.SUCCEEDED, cycle.error
    assert (
        ModelVersion.objects.filter(project=setup.project).exclude(pk=setup.version.pk).count() == 1
    )
    assert cycle.candidate_version is not None
    assert EvaluationSnapshot.objects.filter(cycle=cycle).count() == 2
    for kind in ("model_trained", "model_evaluated"):
        expected = 1 if kind == "model_trained" else 2
        assert TrustEvent.objects.filter(project=setup.project, kind=kind).count() == expected, kind
    setup.state["attempts"] = cycle.attempts


def _unpredicted_items(setup: Setup) -> None:
    setup.state["items"] = items_register(
        project=setup.project, image_paths=setup.write_images(range(300, 300 + POOL), folder="new")
    )


def _send(name: str, key: str | None = None) -> Callable[[Setup], None]:
    def start(setup: Setup) -> None:
        argument = setup.version.id if key == "version" else setup.state[key] if key else None
        celery_app.send_task(name, args=[] if argument is None else [argument])

    return start


def _all_predicted(setup: Setup) -> bool:
    return Prediction.objects.filter(model_version=setup.version).count() >= POOL


def _check_predictions(setup: Setup) -> None:
    items = list(
        Prediction.objects.filter(model_version=setup.version).values_list("item_id", flat=True)
    )
    assert sorted(items) == sorted(setup.state["items"])


def _pending_event(setup: Setup) -> None:
    """A Label Studio annotation webhook, stored and not yet processed, for a pushed review task."""
    setup.ingest(range(400, 410))
    batch = review_batch_request(project=setup.project, requested_by="test", size=3, audit_fraction=0)
    review_batch_select(batch_id=batch.id)
    task = batch.tasks.order_by("rank").first()
    link = LabelStudioProject.objects.create(project=setup.project, ls_project_id=7)
    LabelStudioTask.objects.create(ls_project=link, review_task=task, ls_task_id=101, state=PushState.PUSHED)
    annotation = {"id": 1, "task": 101, "result": choice_result("bag"), "updated_at": "2026-11-30T10:00:00Z",
                  "completed_by": {"id": 3, "email": "ann@example.com"}, "was_cancelled": False}
    payload = {"action": "ANNOTATION_CREATED", "project": {"id": 7}, "annotation": annotation}
    setup.state["event"] = WebhookEvent.objects.create(link=link, action="ANNOTATION_CREATED", ls_project_id=7,
                                                       payload=payload).id
    setup.state["item"] = task.item_id


def _event_processed(setup: Setup) -> bool:
    return WebhookEvent.objects.get(pk=setup.state["event"]).state != EventState.PENDING


def _check_event(setup: Setup) -> None:
    event = WebhookEvent.objects.get(pk=setup.state["event"])
    assert event.state == EventState.PROCESSED, event.error
    labels = list(Label.objects.filter(item_id=setup.state["item"]).values_list("value", "status", "external_id"))
    assert labels == [("bag", LabelStatus.CURRENT, "ls-annotation:1")]
    assert LabelStudioAnnotation.objects.filter(ls_annotation_id=1).count() == 1


def _drifted_deployment(setup: Setup) -> None:
    """A deployment whose last complete (week-long) window holds a new class mix: a reference of
    100 even predictions a day before it, then 60 of mostly one class in it."""
    deployment = setup.project.deployments.get()
    Deployment.objects.filter(pk=deployment.pk).update(created_at=timezone.now() - timedelta(days=30))
    setup.project.monitoring = {"window_minutes": WEEK_MINUTES, "reference_size": 100, "min_window_predictions": 50}
    setup.project.save(update_fields=["monitoring"])
    start, _ = window_bounds(now=timezone.now(), minutes=WEEK_MINUTES)
    for first, n, at, classes in ((500, 100, start - timedelta(days=1), [i % 10 for i in range(100)]),
                                  (600, 60, start + timedelta(minutes=1), [3] * 60)):
        paths = setup.write_images(range(first, first + n))
        rows = [[0.9 if j == c else 0.1 / 9 for j in range(10)] for c in classes]
        result = predictions_ingest(deployment=deployment, payload={"predictions": [
            {"image_path": p, "probabilities": q} for p, q in zip(paths, rows)]})
        Prediction.objects.filter(item_id__in=result.item_ids).update(received_at=at)
    setup.state["window_start"], setup.state["project"] = start, setup.project.id


def _trust_events(setup: Setup) -> None:
    for i in range(3):
        trust_record(project_id=setup.project.id, kind="model_evaluated", actor="test", payload={"i": i})
    setup.state["project"] = setup.project.id


def _trust_verified(setup: Setup) -> bool:
    return TrustVerification.objects.filter(project=setup.project).exists()


def _check_trust(setup: Setup) -> None:
    record = TrustVerification.objects.get(project=setup.project)
    assert record.ok and record.events == TrustEvent.objects.filter(project=setup.project).count() >= 3


def _monitor_alerted(setup: Setup) -> bool:
    return Alert.objects.filter(project=setup.project).exists()


def _check_monitor(setup: Setup) -> None:
    alert = Alert.objects.get(project=setup.project)
    assert alert.metric == "class_psi" and alert.window_start == setup.state["window_start"]
    assert MonitorWindow.objects.filter(project=setup.project).count() == 2  # the deployment's, the version's
    assert ReviewBatch.objects.filter(project=setup.project, requested_by="monitor").count() == 1
    assert alert.review_batch is not None


class _Receiver(BaseHTTPRequestHandler):
    received: list[bytes] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        _Receiver.received.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _alert_with_webhook(setup: Setup) -> None:
    """An alert raised with nothing to notify; then a webhook (the fault worker may call loopback)."""
    _drifted_deployment(setup)
    setup.project.monitoring = {**setup.project.monitoring, "action": "none"}
    setup.project.save(update_fields=["monitoring"])
    setup.state["alert"] = project_monitor(project_id=setup.project.id).alert_ids[0]
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Receiver.received = []
    setup.project.monitoring = {**setup.project.monitoring,
                                "webhook_url": f"http://127.0.0.1:{server.server_address[1]}/hook"}
    setup.project.save(update_fields=["monitoring"])


def _webhook_sent(setup: Setup) -> bool:
    return Alert.objects.filter(pk=setup.state["alert"], webhook_sent_at__isnull=False).exists()


def _check_webhook(setup: Setup) -> None:
    assert len(_Receiver.received) == 1
    assert json.loads(_Receiver.received[0])["alert"]["id"] == setup.state["alert"]


CASES = [
    KillCase(
        "workers.tasks.score_predictions",
        UncertaintyScore._meta.db_table,
        _nothing,
        lambda setup: setup.ingest(range(200, 200 + POOL)),
        _all_scored,
        _check_scores,
    ),
    KillCase(
        "workers.tasks.select_review_batch",
        ReviewTask._meta.db_table,
        _scored_pool,
        _request_batch("margin"),
        _batch_selected,
        _check_batch,
    ),
    KillCase(
        "workers.tasks.select_review_batch_with_model",
        ReviewTask._meta.db_table,
        _scored_pool,
        _request_batch("coreset"),
        _batch_selected,
        _check_batch,
    ),
    KillCase(
        "workers.tasks.retrain",
        TrustEvent._meta.db_table,
        _labeled_project,
        _request_cycle,
        _cycle_finished,
        _check_cycle,
    ),
    KillCase(
        "workers.tasks.evaluate",
        EvaluationSnapshot._meta.db_table,
        _labeled_project,
        _request_cycle,
        _cycle_finished,
        _check_cycle,
    ),
    KillCase(
        "workers.tasks.predict_items",
        Prediction._meta.db_table,
        _unpredicted_items,
        _send("workers.tasks.predict_items", "version"),
        _all_predicted,
        _check_predictions,
    ),
    KillCase(
        "workers.tasks.requeue_stalled_work",
        ReviewBatch._meta.db_table,
        _lost_batch,
        _send("workers.tasks.requeue_stalled_work"),
        _batch_selected,
        _check_batch,
    ),
    KillCase(
        "workers.tasks.monitor_project",
        MonitorWindow._meta.db_table,
        _drifted_deployment,
        _send("workers.tasks.monitor_project", "project"),
        _monitor_alerted,
        _check_monitor,
    ),
    KillCase(
        "workers.tasks.monitor_all",
        Deployment._meta.db_table,
        _drifted_deployment,
        _send("workers.tasks.monitor_all"),
        _monitor_alerted,
        _check_monitor,
    ),
    KillCase(
        "workers.tasks.trust_verify_project",
        TrustVerification._meta.db_table,
        _trust_events,
        _send("workers.tasks.trust_verify_project", "project"),
        _trust_verified,
        _check_trust,
    ),
    KillCase(
        "workers.tasks.trust_verify_all",
        TrustEvent._meta.db_table,
        _trust_events,
        _send("workers.tasks.trust_verify_all"),
        _trust_verified,
        _check_trust,
    ),
    KillCase(
        "workers.tasks.alert_notify",
        Alert._meta.db_table,
        _alert_with_webhook,
        _send("workers.tasks.alert_notify", "alert"),
        _webhook_sent,
        _check_webhook,
    ),
    KillCase(
        "labeling.tasks.process_webhook_event",
        Label._meta.db_table,
        _pending_event,
        _send("labeling.tasks.process_webhook_event", "event"),
        _event_processed,
        _check_event,
    ),
]
# A cycle's tasks take the cycle's advisory lock without waiting: while the killed process's
# session lingers, the redelivered task steps aside and the beat re-sends the work. Every other
# task must finish by its redelivery alone.
MAY_NEED_THE_BEAT = frozenset({"workers.tasks.retrain", "workers.tasks.evaluate"})


def test_every_task_type_has_a_kill_case() -> None:
    """Each task is killed here, or (talking to Label Studio at once) against a real Label Studio
    in test_worker_kill_label_studio.py."""
    ours = {name for name in celery_app.tasks if name.startswith(("workers.", "labeling."))}
    assert ours == {case.task for case in CASES} | LABEL_STUDIO_KILL_CASES


def _new_pool_process(worker: WorkerProcess, killed: list[int], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not (set(worker.children()) - set(killed)):
        if time.monotonic() > deadline:
            raise AssertionError(f"no new pool process after the kill:\n{worker.log_tail()}")
        time.sleep(0.1)


def _received(worker: WorkerProcess, task: str) -> int:
    """How often the worker has logged receiving a message of ``task``."""
    return len(re.findall(rf"Task {re.escape(task)}\[[0-9a-f-]+\] received", worker.log.read_text()))


def _wait(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


@pytest.mark.parametrize("case", CASES, ids=[case.task.rsplit(".", 1)[1] for case in CASES])
def test_a_task_killed_midway_completes_once(
    case: KillCase,
    project,
    version,
    ingest,
    labeled_items,
    write_images,
    fault_worker,
    wait_for,
) -> None:
    started = time.monotonic()
    setup = Setup(project, version, ingest, labeled_items, write_images, {})
    case.prepare(setup)
    _wait(lambda: fault_worker.children() and not _busy(), 30)  # work that prepare sent is done
    lock = TableLock(case.table)
    try:
        case.start(setup)
        lock.wait_for_waiter(fault_worker)
        received = _received(fault_worker, case.task)
        killed = fault_worker.children()
        fault_worker.kill_pool()
        _new_pool_process(fault_worker, killed)
        # Let the database go only once the redelivered task has started (and met what the
        # killed process's session still holds), then a moment more.
        _wait(lambda: _received(fault_worker, case.task) > received, 30)
        time.sleep(1.0)
    finally:
        lock.release()
    grace = 5 if case.task in MAY_NEED_THE_BEAT else REDELIVERY_GRACE
    by_redelivery = _wait(lambda: case.done(setup), grace)
    assert by_redelivery or case.task in MAY_NEED_THE_BEAT, f"{case.task} was not finished by its redelivery"
    beats = 0
    if not by_redelivery:

        def beat() -> None:
            nonlocal beats
            celery_app.send_task("workers.tasks.requeue_stalled_work")
            beats += 1

        beat()
        wait_for(lambda: case.done(setup), f"{case.task} after the kill", timeout=120, every=beat)
    case.check(setup)
    RESULTS[case.task] = {
        "killed": len(killed),
        "redelivery": by_redelivery,
        "beats": beats,
        "attempts": setup.state.get("attempts"),
        "seconds": time.monotonic() - started,
    }
    if len(RESULTS) == len(CASES):
        _report()


def _busy() -> bool:
    """Whether the worker still has something to do from the case's preparation."""
    return Prediction.objects.filter(scored_at__isnull=True).exists()


def _report_row(case: KillCase, result: dict[str, Any]) -> str:
    completed_by = (
        "redelivery" if result["redelivery"] else f"redelivery + beat ({result['beats']} firings)"
    )
    attempts = "-" if result["attempts"] is None else result["attempts"]
    return (
        f"| `{case.task}` | `{case.table}` | {result['killed']} | {completed_by} | {attempts} | 0 | 0 "
        f"| {result['seconds']:.1f} |"
    )


def _report() -> None:
    rows = "\n".join(_report_row(case, RESULTS[case.task]) for case in CASES)
    report_section(
        "worker-kill",
        f"""
## A worker SIGKILLed in each task type (`tests/reliability/test_worker_kill.py`)

One real Celery worker process with one pool process, the test database and a disposable Redis.
Each task was stopped at a query on the table named (held `ACCESS EXCLUSIVE` by the test), its
pool process was SIGKILLed, then the table was let go. "Completed by" says whether the broker's
redelivery alone finished the work, or whether the redelivered task stepped aside and the
beat's re-send finished it: PostgreSQL ends a dead client's session only once its blocked query
returns, so until then that session still held the cycle's advisory lock (retrain, evaluate) or the
prediction rows it had claimed, which scoring skips (`SKIP LOCKED`): scoring
retries shortly (`Busy`) when rows it skipped are still unscored. Label Studio's push and
reconcile tasks ({", ".join(f"`{t}`" for t in sorted(LABEL_STUDIO_KILL_CASES))}) are killed
against a real Label Studio in the next section.

| task | stopped at | pool processes killed | completed by | cycle attempts | lost | duplicated | seconds |
| --- | --- | --- | --- | --- | --- | --- | --- |
{rows}
""",
    )


def test_a_worker_killed_whole_mid_cycle_loses_nothing(
    project, version, ingest, labeled_items, write_images, fault_worker, wait_for,
) -> None:
    """The machine is lost: the worker's main process and its pool are SIGKILLed while a cycle
    finishes training, so no process is left to hand the message back. A new worker starts; the
    message stays unacknowledged in Redis until its visibility timeout, and the beat re-sends the
    cycle (its heartbeat stopped) long before that: the cycle finishes, with one candidate."""
    started = time.monotonic()
    setup = Setup(project, version, ingest, labeled_items, write_images, {})
    _labeled_project(setup)
    lock = TableLock(TrustEvent._meta.db_table)
    try:
        _request_cycle(setup)
        lock.wait_for_waiter(fault_worker)
        fault_worker.kill_all()
    finally:
        lock.release()
    fault_worker.start()
    beats = 0

    def beat() -> None:
        nonlocal beats
        celery_app.send_task("workers.tasks.requeue_stalled_work")
        beats += 1

    recovery = wait_for(lambda: _cycle_finished(setup), "the cycle after losing its worker", timeout=120,
                        every=beat)
    _check_cycle(setup)
    assert setup.state["attempts"] == 2  # the lost attempt, then the one that finished
    report_section("worker-lost", f"""
## A worker lost whole mid-cycle (`tests/reliability/test_worker_kill.py`)

The worker's main process and pool process were SIGKILLed together while the cycle was writing
its trained candidate (stopped at `{TrustEvent._meta.db_table}`), as when a machine is lost: no
process was left to hand the message back, which stays unacknowledged in Redis until the
visibility timeout (`HITL_VISIBILITY_TIMEOUT`, {VISIBILITY_TIMEOUT} s here, 4 h by default). A new
worker process was started and the beat re-sent the cycle once its heartbeat was older than
`HITL_STALLED_AFTER_SECONDS` ({STALLED_AFTER} s here).

| figure | value |
| --- | --- |
| worker processes killed (main + pool) | 2 |
| beat firings until the cycle finished | {beats} |
| cycle attempts / candidates stored / evaluation snapshots | {setup.state["attempts"]} / 1 / 2 |
| lost / duplicated | 0 / 0 |
| seconds from the new worker to the cycle finished | {recovery:.1f} |
| wall time of the test | {time.monotonic() - started:.1f} s |
""")
