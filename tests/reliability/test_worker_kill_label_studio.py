"""(d) continued: the Label Studio tasks, each SIGKILLed midway against a real Label Studio.

The fault worker of this package is restarted with Label Studio's settings, its URL pointing at a
small proxy in front of the real server (`tests/conftest.py` starts it):

* ``push_review_tasks`` is stopped where a crash costs the most: Label Studio has created the
  tasks (the proxy forwarded the import and holds Label Studio's answer), the worker has not yet
  recorded their ids. Redelivered, the push must find them by hitl's review-task id instead of
  importing them again.
* ``reconcile`` is stopped halfway through the annotations: the test holds one item's row
  (``FOR UPDATE``), so the annotations before it are applied and committed, that one waits.
* ``reconcile_all`` is stopped after it has sent the push and reconcile of the project, at its
  query on the webhook events (table held ``ACCESS EXCLUSIVE``); redelivered, it sends them again.

After the kill, the broker hands the message back (acks_late + reject_on_worker_lost) and the next
pool process runs it. Where the dead process still held the sync's advisory lock, the redelivered
task meets ``Busy`` and Celery retries it shortly. Then: every review task is in Label Studio
exactly once, and every annotation became exactly one label.
"""

from __future__ import annotations

import http.client
import json
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import pytest
from django.utils import timezone
from label_studio_sdk import LabelStudio

import labeling.tasks  # noqa: F401 - registers the Label Studio tasks with the app
from hitl.models import Label, LabelStatus, ReviewTask, ReviewTaskStatus
from hitl.services.selection import review_batch_request
from labeling.client import LabelStudioClient
from labeling.mapping import choice_result
from labeling.models import (
    AnnotationState,
    EventState,
    LabelStudioAnnotation,
    LabelStudioTask,
    PushState,
    WebhookEvent,
)
from labeling.services.provisioning import ls_project_provision
from labeling.services.push import ls_push
from tests.conftest import LabelStudioServer
from tests.reliability.conftest import (
    FaultWorker,
    RowLock,
    TableLock,
    free_port,
    report_section,
)
from workers.celery import app as celery_app
from workers.pipelines.selection import review_batch_select

pytestmark = [
    pytest.mark.faults,
    pytest.mark.labelstudio,
    pytest.mark.worker,
    pytest.mark.django_db(transaction=True),
]
# The tasks killed here (test_worker_kill.py checks that every task is killed somewhere).
LABEL_STUDIO_KILL_CASES = frozenset(
    {"labeling.tasks.push_review_tasks", "labeling.tasks.reconcile", "labeling.tasks.reconcile_all"}
)
TASKS = 12  # review tasks in the first batch; reconcile_all's case adds a second batch of as many
SEED = 20261130
RESULTS: dict[str, dict[str, Any]] = {}


class LabelStudioProxy:
    """Forwards every request to Label Studio. ``hold`` makes it forward the next matching
    request, keep Label Studio's answer and wait: the caller has done its work in Label Studio
    but cannot know it."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.rule: tuple[str, re.Pattern[str]] | None = None
        self.held = threading.Event()
        self.release = threading.Event()
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                upstream = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=120)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                upstream.request(self.command, self.path, body=body or None, headers=headers)
                answer = upstream.getresponse()
                data = answer.read()
                upstream.close()
                if proxy.take_hold(self.command, self.path):
                    proxy.held.set()
                    proxy.release.wait(timeout=300)
                try:
                    self.send_response(answer.status)
                    for key, value in answer.getheaders():
                        if key.lower() not in ("connection", "keep-alive", "transfer-encoding", "content-length"):
                            self.send_header(key, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    self.close_connection = True  # the caller was killed while its answer was held

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _forward

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def hold(self, method: str, path: str) -> None:
        self.held.clear()
        self.release.clear()
        self.rule = (method, re.compile(path))

    def take_hold(self, method: str, path: str) -> bool:
        with self.lock:
            if self.rule is None or self.rule[0] != method or not self.rule[1].search(path):
                return False
            self.rule = None  # one request only: the redelivered task passes
            return True

    def let_go(self) -> None:
        self.rule = None
        self.release.set()

    def close(self) -> None:
        self.let_go()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def proxy(label_studio: LabelStudioServer) -> Iterator[LabelStudioProxy]:
    server = LabelStudioProxy(label_studio.url)
    yield server
    server.close()


@pytest.fixture(scope="module")
def label_studio_worker(fault_worker: FaultWorker, label_studio: LabelStudioServer,
                        proxy: LabelStudioProxy) -> Iterator[FaultWorker]:
    """The package's fault worker, restarted to reach Label Studio through the proxy (with a
    timeout longer than any hold), and restarted as it was afterwards."""
    before = dict(fault_worker.env)
    fault_worker.stop()
    fault_worker.env.update({"LABEL_STUDIO_URL": proxy.url, "LABEL_STUDIO_API_KEY": label_studio.token,
                             "HITL_LS_TIMEOUT": "120", "HITL_PUBLIC_URL": _nowhere()})
    fault_worker.start()
    yield fault_worker
    fault_worker.stop()
    fault_worker.env.clear()
    fault_worker.env.update(before)
    fault_worker.start()


def _nowhere() -> str:
    return f"http://127.0.0.1:{free_port()}"  # nothing listens: Label Studio's webhooks are lost


@dataclass
class Setup:
    project: Any
    link: Any
    client: LabelStudioClient
    sdk: LabelStudio
    state: dict[str, Any]


def _review_batch(setup: Setup, ingest: Callable[..., Any], first: int) -> None:
    ingest(range(first, first + TASKS + 4), seed=first)
    batch = review_batch_request(project=setup.project, requested_by="test", size=TASKS, audit_fraction=0.25)
    review_batch_select(batch_id=batch.id)


def _annotate_all(setup: Setup) -> None:
    """Each pushed task gets an annotation in Label Studio (its webhook goes nowhere)."""
    rng = random.Random(SEED)
    for task in setup.client.iter_tasks(setup.link.ls_project_id):
        if not task.get("annotations"):
            setup.sdk.annotations.create(id=task["id"], result=choice_result(rng.choice(setup.project.labels)))


def _ls_tasks(setup: Setup) -> list[dict]:
    return list(setup.client.iter_tasks(setup.link.ls_project_id))


def _log_since(worker: FaultWorker, offset: int) -> str:
    return worker.log.read_text()[offset:]


def _received(worker: FaultWorker, task: str) -> int:
    return len(re.findall(rf"Task {re.escape(task)}\[[0-9a-f-]+\] received", worker.log.read_text()))


def _succeeded(worker: FaultWorker, task: str, since: int) -> int:
    """How often ``task`` finished since the log had ``since`` characters."""
    return len(re.findall(rf"Task {re.escape(task)}\[[0-9a-f-]+\] succeeded", _log_since(worker, since)))


def _retried(worker: FaultWorker, task: str, since: int) -> int:
    """How often ``task`` was retried (``Busy``: the killed process's session still held its lock)."""
    return len(re.findall(rf"Task {re.escape(task)}\[[0-9a-f-]+\] retry:", _log_since(worker, since)))


def _new_pool_process(worker: FaultWorker, killed: list[int], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not (set(worker.children()) - set(killed)):
        assert time.monotonic() < deadline, f"no new pool process after the kill:\n{worker.log_tail()}"
        time.sleep(0.1)


def _kill_pool(worker: FaultWorker, task: str) -> int:
    """SIGKILL the pool process (it is running ``task``) and wait for its successor and for the
    broker to hand the message back; returns how many processes were killed."""
    received = _received(worker, task)
    killed = worker.children()
    worker.kill_pool()
    _new_pool_process(worker, killed)
    deadline = time.monotonic() + 30
    while _received(worker, task) <= received:
        assert time.monotonic() < deadline, f"{task} was not redelivered:\n{worker.log_tail()}"
        time.sleep(0.2)
    return len(killed)


# --- the checks: exactly once ---------------------------------------------------------------------


def _check_pushed_once(setup: Setup) -> None:
    """Every open review task is in Label Studio exactly once, under the id hitl recorded."""
    remote = _ls_tasks(setup)
    by_review_task: dict[int, list[int]] = {}
    for task in remote:
        by_review_task.setdefault(task["data"]["hitl_review_task_id"], []).append(task["id"])
    duplicated = {k: v for k, v in by_review_task.items() if len(v) > 1}
    assert not duplicated, f"review tasks imported more than once: {duplicated}"
    review_tasks = set(ReviewTask.objects.filter(batch__project=setup.project).values_list("id", flat=True))
    assert set(by_review_task) == review_tasks
    recorded = dict(LabelStudioTask.objects.filter(ls_project=setup.link).values_list("review_task_id", "ls_task_id"))
    assert recorded == {k: v[0] for k, v in by_review_task.items()}
    assert set(LabelStudioTask.objects.filter(ls_project=setup.link).values_list("state", flat=True)) == {PushState.PUSHED}


def _check_applied_once(setup: Setup) -> None:
    """Every annotation in Label Studio became exactly one label, the current one of its item."""
    annotations = {a["id"]: (t["data"]["hitl_item_id"], a["result"][0]["value"]["choices"][0])
                   for t in _ls_tasks(setup) for a in t.get("annotations") or []}
    assert annotations
    records = list(LabelStudioAnnotation.objects.filter(ls_project=setup.link).values_list("ls_annotation_id", "state"))
    assert sorted(records) == sorted((a, AnnotationState.APPLIED) for a in annotations)
    labels = list(Label.objects.filter(item__project=setup.project, source="label_studio")
                  .values_list("external_id", "item_id", "value", "status"))
    assert sorted(labels) == sorted((f"ls-annotation:{a}", item, value, LabelStatus.CURRENT)
                                    for a, (item, value) in annotations.items())
    annotated_items = {item for item, _ in annotations.values()}
    assert not ReviewTask.objects.filter(item_id__in=annotated_items, status=ReviewTaskStatus.OPEN).exists()


# --- the cases ------------------------------------------------------------------------------------


def test_a_push_killed_after_label_studio_took_the_tasks_imports_none_twice(setup, proxy, label_studio_worker,
                                                                            wait_for) -> None:
    started, task = time.monotonic(), "labeling.tasks.push_review_tasks"
    since = len(label_studio_worker.log.read_text())
    proxy.hold("POST", r"^/api/projects/\d+/import")
    celery_app.send_task(task, args=[setup.project.id])
    assert proxy.held.wait(60), f"the push never reached Label Studio's import:\n{label_studio_worker.log_tail()}"
    assert len(_ls_tasks(setup)) == TASKS  # Label Studio has them ...
    assert set(LabelStudioTask.objects.values_list("state", flat=True)) == {PushState.RESERVED}  # ... hitl has no ids
    killed = _kill_pool(label_studio_worker, task)
    proxy.let_go()
    took = wait_for(lambda: _succeeded(label_studio_worker, task, since) >= 1, "the redelivered push", timeout=90)
    _check_pushed_once(setup)
    assert re.search(rf"Task {re.escape(task)}\[[0-9a-f-]+\] succeeded in [0-9.]+s: 0\n",
                     _log_since(label_studio_worker, since))  # it recovered them all and imported none
    _record(label_studio_worker, task, "the import's answer (Label Studio had created the tasks)", killed, TASKS,
            None, took, started, since)


def test_a_reconcile_killed_halfway_applies_every_annotation_once(setup, label_studio_worker, wait_for) -> None:
    started, task = time.monotonic(), "labeling.tasks.reconcile"
    since = len(label_studio_worker.log.read_text())
    ls_push(project_id=setup.project.id, client=setup.client)
    _annotate_all(setup)
    order = _ls_tasks(setup)  # the order reconcile meets them in
    halfway = TASKS // 2
    lock = RowLock("hitl_item", order[halfway]["data"]["hitl_item_id"])
    try:
        celery_app.send_task(task, args=[setup.project.id])
        lock.wait_for_waiter(label_studio_worker)
        applied_before = LabelStudioAnnotation.objects.filter(state=AnnotationState.APPLIED).count()
        assert applied_before == halfway  # the annotations before the held item are in
        killed = _kill_pool(label_studio_worker, task)
        time.sleep(1.0)
    finally:
        lock.release()
    took = wait_for(lambda: _succeeded(label_studio_worker, task, since) >= 1, "the redelivered reconcile",
                    timeout=120)
    _check_applied_once(setup)
    _record(label_studio_worker, task, f"annotation {halfway + 1} of {TASKS} (its item's row held)", killed, TASKS,
            applied_before, took, started, since)


def test_reconcile_all_killed_midway_pushes_and_applies_everything_once(setup, ingest, label_studio_worker,
                                                                        wait_for) -> None:
    started, task = time.monotonic(), "labeling.tasks.reconcile_all"
    since = len(label_studio_worker.log.read_text())
    ls_push(project_id=setup.project.id, client=setup.client)
    _annotate_all(setup)  # none of these reached hitl: their webhooks went nowhere
    _review_batch(setup, ingest, first=100)  # and a second batch, not pushed yet
    annotated = next(t for t in _ls_tasks(setup) if t.get("annotations"))
    payload = {"action": "ANNOTATION_CREATED", "project": {"id": setup.link.ls_project_id},
               "task": {"id": annotated["id"], "data": annotated["data"]},
               "annotation": {**annotated["annotations"][0], "task": annotated["id"]}}
    stalled = WebhookEvent.objects.create(  # an event whose message was lost: the beat re-sends it
        link=setup.link, action="ANNOTATION_CREATED", ls_project_id=setup.link.ls_project_id,
        payload=json.loads(json.dumps(payload, default=str)))  # as JSON: the SDK's times are datetimes
    WebhookEvent.objects.filter(pk=stalled.pk).update(received_at=timezone.now() - timedelta(minutes=5))
    lock = TableLock(WebhookEvent._meta.db_table)
    try:
        celery_app.send_task(task)
        lock.wait_for_waiter(label_studio_worker)
        killed = _kill_pool(label_studio_worker, task)
        time.sleep(1.0)
    finally:
        lock.release()

    def everything_ran_twice() -> bool:  # once sent by the killed run, once by the redelivered one
        return all(_succeeded(label_studio_worker, name, since) >= 2
                   for name in ("labeling.tasks.push_review_tasks", "labeling.tasks.reconcile"))

    took = wait_for(lambda: everything_ran_twice() and _succeeded(label_studio_worker, task, since) >= 1
                    and WebhookEvent.objects.get(pk=stalled.pk).state != EventState.PENDING,
                    "the redelivered reconcile_all and the work it sent", timeout=180)
    assert WebhookEvent.objects.get(pk=stalled.pk).state == EventState.PROCESSED
    _check_pushed_once(setup)
    _check_applied_once(setup)
    _record(label_studio_worker, task, f"`{WebhookEvent._meta.db_table}` (push and reconcile already sent)", killed,
            2 * TASKS, None, took, started, since)


@pytest.fixture()
def setup(project, ingest, settings, label_studio: LabelStudioServer, label_studio_worker: FaultWorker) -> Setup:
    """A project with a selected review batch, connected to a new Label Studio project whose
    webhook goes nowhere (so only the tasks under test bring annotations back)."""
    settings.LABEL_STUDIO_URL, settings.LABEL_STUDIO_API_KEY = label_studio.url, label_studio.token
    settings.HITL_PUBLIC_URL = _nowhere()
    client = LabelStudioClient(label_studio.url, label_studio.token)
    setup = Setup(project, None, client, LabelStudio(base_url=label_studio.url, api_key=label_studio.token), {})
    _review_batch(setup, ingest, first=0)
    setup.link = ls_project_provision(project_id=project.id, client=client).link
    return setup


def _record(worker: FaultWorker, task: str, stopped_at: str, killed: int, tasks: int, done_before: int | None,
            took: float, started: float, since: int) -> None:
    RESULTS[task] = {"stopped_at": stopped_at, "killed": killed, "tasks": tasks, "done_before": done_before,
                     "retries": _retried(worker, task, since), "took": took, "seconds": time.monotonic() - started}
    if set(RESULTS) == LABEL_STUDIO_KILL_CASES:
        _report()


def _report_row(task: str, r: dict[str, Any]) -> str:
    applied = "-" if r["done_before"] is None else r["done_before"]
    retries = f"{r['retries']} `Busy` retr{'y' if r['retries'] == 1 else 'ies'}"
    completed_by = f"redelivery + {retries}" if r["retries"] else "redelivery"
    return (f"| `{task}` | {r['stopped_at']} | {r['killed']} | {r['tasks']} | {applied} | {completed_by} | 0 | 0 "
            f"| {r['took']:.1f} | {r['seconds']:.1f} |")


def _report() -> None:
    rows = "\n".join(_report_row(task, result) for task, result in sorted(RESULTS.items()))
    report_section("worker-kill-label-studio", f"""
## The Label Studio tasks SIGKILLed midway (`tests/reliability/test_worker_kill_label_studio.py`)

The same fault worker, restarted to reach a real Label Studio 1.23.2 through a proxy the test
controls. The push was stopped after Label Studio had created its tasks and before hitl recorded
their ids (the proxy held Label Studio's answer); the reconcile halfway through the annotations
(one item's row held `FOR UPDATE`: the annotations before it applied and committed); reconcile_all
after it had sent the project's push and reconcile. Then the pool process was SIGKILLed and the
hold let go. "Completed by" says whether the redelivered message finished the work at once, or
first met the advisory lock the killed process's session still held (`Busy`: PostgreSQL ends
that session only once its blocked query returns) and finished on Celery's retry. "Lost" and
"duplicated" are checked against Label Studio itself: every review task there exactly once under
the id hitl recorded, every annotation exactly one current label.

| task | stopped at | pool processes killed | review tasks | annotations applied before the kill | completed by | lost | duplicated | seconds from letting go to done | seconds |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |
{rows}
""")
