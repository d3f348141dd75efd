"""1,000 annotation events made on a real Label Studio; 20% of their webhook deliveries dropped,
20% duplicated, all delivered in a shuffled (seeded) order to hitl's real receiver, a real worker
applying them; then one reconcile. hitl's labels must equal Label Studio's annotations exactly.

How the deliveries are captured: Label Studio's webhook for the project (provisioned by hitl,
with the project's real secret) is pointed at a small local capture server, so every payload and
header is exactly what Label Studio sent. The test then replays the captured deliveries to
hitl's webhook URL with the faults injected.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import requests
from label_studio_sdk import LabelStudio

from hitl.models import Label, LabelStatus
from hitl.services.ingestion import predictions_ingest
from hitl.services.selection import review_batch_request
from labeling.client import LabelStudioClient
from labeling.mapping import choice_result
from labeling.models import AnnotationState, EventState, LabelStudioAnnotation, WebhookEvent
from labeling.services.provisioning import ls_project_provision
from labeling.services.pull import ls_reconcile
from labeling.services.push import ls_push
from labeling.services.webhooks import WEBHOOK_HEADER, webhook_url
from workers.pipelines.selection import review_batch_select

pytestmark = [pytest.mark.labelstudio, pytest.mark.worker, pytest.mark.django_db(transaction=True)]
SEED = 20261130
TASKS = 400  # each gets an annotation; 150 are deleted and annotated anew
UPDATES, DELETES, SECOND_UPDATES = 250, 150, 50  # 400 + 250 + 150 + 150 + 50 = 1,000 events
DROP, DUPLICATE = 0.2, 0.2
SDK_THREADS = 4


class CaptureServer:
    """Answers every POST at once and keeps (secret header, body) in arrival order."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[str, bytes]] = []
        lock, deliveries = threading.Lock(), self.deliveries

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with lock:
                    deliveries.append((self.headers.get(WEBHOOK_HEADER, ""), body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/capture"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.deliveries) < count and time.monotonic() < deadline:
            time.sleep(0.1)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def capture() -> CaptureServer:
    server = CaptureServer()
    yield server
    server.close()


def _plan_values(labels: list[str], rng: random.Random, first: str, count: int) -> list[str]:
    """``count`` successive new values, each different from the one before."""
    values = [first]
    for _ in range(count):
        values.append(rng.choice([x for x in labels if x != values[-1]]))
    return values


def make_events(sdk: LabelStudio, task_ids: list[int], labels: list[str],
                rng: random.Random) -> tuple[Counter[int], list[int]]:
    """Create, update, delete and re-create annotations in Label Studio, from a plan drawn
    before any call (so the seed fixes it, whatever the threads' timing); returns how many
    updates each annotation got, and the deleted annotations."""
    first_updates = Counter(rng.choice(task_ids) for _ in range(UPDATES))
    first_plan = {t: _plan_values(labels, rng, rng.choice(labels), first_updates[t]) for t in task_ids}
    deleted_tasks = rng.sample(task_ids, DELETES)
    second_updates = Counter(rng.choice(deleted_tasks) for _ in range(SECOND_UPDATES))
    second_plan = {t: _plan_values(labels, rng, rng.choice(labels), second_updates[t]) for t in deleted_tasks}
    updates: Counter[int] = Counter()

    def annotate(task_id: int, values: list[str]) -> int:
        """Create the annotation, then apply its updates in order."""
        annotation_id = sdk.annotations.create(id=task_id, result=choice_result(values[0]), lead_time=3.0).id
        for value in values[1:]:
            sdk.annotations.update(id=annotation_id, result=choice_result(value))
            updates[annotation_id] += 1
        return annotation_id

    with ThreadPoolExecutor(SDK_THREADS) as pool:
        first = dict(zip(task_ids, pool.map(lambda t: annotate(t, first_plan[t]), task_ids)))
        list(pool.map(lambda t: sdk.annotations.delete(id=first[t]), deleted_tasks))
        list(pool.map(lambda t: annotate(t, second_plan[t]), deleted_tasks))
    return updates, [first[t] for t in deleted_tasks]


def in_plan_order(deliveries: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """The captured deliveries task by task, each annotation's events in the order they
    happened. The capture order depends on the threads' timing; this one does not, so the seed
    alone decides which events the faults hit."""
    events = [json.loads(body) for _, body in deliveries]
    task_of = {e["annotation"]["id"]: e["annotation"]["task"] for e in events if "annotation" in e}

    def key(index: int) -> tuple[int, int, int, str]:
        event = events[index]
        if event["action"] == "ANNOTATIONS_DELETED":
            annotation_id = event["annotations"][0]["id"]
            return task_of[annotation_id], annotation_id, 1, ""
        annotation = event["annotation"]
        return annotation["task"], annotation["id"], 0, annotation["updated_at"]

    return [deliveries[i] for i in sorted(range(len(deliveries)), key=key)]


def inject_faults(deliveries: list[tuple[str, bytes]], rng: random.Random) -> tuple[list[int], dict[str, int]]:
    """Drop 20%, duplicate 20%, shuffle everything: the delivery order as indices."""
    order = list(range(len(deliveries)))
    rng.shuffle(order)
    dropped, duplicated = int(len(order) * DROP), int(len(order) * DUPLICATE)
    kept = order[dropped:]
    sent = kept + kept[:duplicated]
    rng.shuffle(sent)
    highest, overtaken, seen = -1, 0, set()
    for index in sent:
        if index in seen:
            continue
        seen.add(index)
        overtaken += index < highest  # a later event arrived before this one
        highest = max(highest, index)
    return sent, {"dropped": dropped, "duplicated": duplicated, "reordered": overtaken}


def label_studio_annotations(sdk: LabelStudio, ls_project_id: int) -> dict[int, tuple[int, str]]:
    """Every annotation in Label Studio: annotation id -> (hitl item id, chosen label)."""
    live = {}
    for task in sdk.tasks.list(project=ls_project_id, fields="all", page_size=500):
        for annotation in task.annotations:
            live[annotation["id"]] = (task.data["hitl_item_id"], annotation["result"][0]["value"]["choices"][0])
    return live


def hitl_labels(project) -> dict[int, str]:
    return dict(Label.objects.filter(item__project=project, status=LabelStatus.CURRENT, source="label_studio")
                .values_list("item_id", "value"))


def test_dropped_duplicated_and_reordered_webhooks_end_exactly_like_label_studio(
        label_studio, live_server, settings, project, deployment_and_token, write_images, celery_worker, capture,
        wait_until) -> None:
    started = time.monotonic()
    settings.LABEL_STUDIO_URL, settings.LABEL_STUDIO_API_KEY = label_studio.url, label_studio.token
    settings.HITL_PUBLIC_URL = live_server.url
    paths = write_images(range(TASKS))
    probs = np.random.default_rng(SEED).dirichlet(np.ones(10) * 0.5, size=TASKS)
    predictions_ingest(deployment=deployment_and_token[0], payload={"predictions": [
        {"image_path": p, "probabilities": q.tolist()} for p, q in zip(paths, probs)]})
    batch = review_batch_request(project=project, requested_by="t", size=TASKS, audit_fraction=0)
    review_batch_select(batch_id=batch.id)
    link = ls_project_provision(project_id=project.id).link
    assert ls_push(project_id=project.id).pushed == TASKS
    sdk = LabelStudio(base_url=label_studio.url, api_key=label_studio.token, timeout=30)
    hook = sdk.webhooks.get(id=link.webhook_id)
    LabelStudioClient(label_studio.url, label_studio.token).update_webhook(link.webhook_id, url=capture.url,
                                                                         headers=hook.headers)
    task_ids = sorted(t.id for t in sdk.tasks.list(project=link.ls_project_id, page_size=500))
    assert len(task_ids) == TASKS
    set_up = time.monotonic()
    print(f"\nset up in {set_up - started:.0f} s", flush=True)

    rng = random.Random(SEED)
    updates, deleted = make_events(sdk, task_ids, project.labels, rng)
    capture.wait_for(1000)
    made = time.monotonic()
    print(f"{len(capture.deliveries)} events made in {made - set_up:.0f} s", flush=True)
    actions = Counter(json.loads(body)["action"] for _, body in capture.deliveries)
    assert actions == {"ANNOTATION_CREATED": TASKS + DELETES, "ANNOTATION_UPDATED": UPDATES + SECOND_UPDATES,
                       "ANNOTATIONS_DELETED": DELETES}
    assert {secret for secret, _ in capture.deliveries} == {hook.headers[WEBHOOK_HEADER]}

    deliveries = in_plan_order(capture.deliveries)
    sent, faults = inject_faults(deliveries, rng)
    url = webhook_url(link)
    with requests.Session() as http:
        statuses = Counter(http.post(url, data=deliveries[i][1], timeout=10, headers={
            "Content-Type": "application/json", WEBHOOK_HEADER: deliveries[i][0]}).status_code for i in sent)
    assert statuses == {202: len(sent)}
    wait_until(lambda: not WebhookEvent.objects.filter(state=EventState.PENDING).exists(), "webhook events", 300)
    assert not WebhookEvent.objects.filter(state=EventState.FAILED).exists()
    delivered = time.monotonic()
    print(f"delivered and applied in {delivered - made:.0f} s", flush=True)

    live = label_studio_annotations(sdk, link.ls_project_id)
    expected = {item_id: value for item_id, value in live.values()}
    assert len(live) == len(expected) == TASKS  # one annotation per task left in Label Studio
    wrong_before = sum(hitl_labels(project).get(item) != value for item, value in expected.items())
    assert wrong_before > 0  # the dropped events mattered
    result = ls_reconcile(project_id=project.id)
    reconciled = time.monotonic()

    # Same items, same values.
    assert hitl_labels(project) == expected
    # None doubled: one applied record per live annotation, holding the item's current label, and
    # no annotation left more label versions than it had versions in Label Studio.
    records = {r.ls_annotation_id: r for r in LabelStudioAnnotation.objects.filter(ls_project=link).select_related("label")}
    for annotation_id, (item_id, value) in live.items():
        record = records[annotation_id]
        assert record.state == AnnotationState.APPLIED and record.label.status == LabelStatus.CURRENT
        assert (record.label.item_id, record.label.value) == (item_id, value)
    versions = Counter(Label.objects.filter(item__project=project, external_id__startswith="ls-annotation:")
                       .values_list("external_id", flat=True))
    over = {key: n for key, n in versions.items() if n > 1 + updates[int(key.split(":")[1])]}
    assert over == {}
    assert Label.objects.filter(item__project=project, status=LabelStatus.CURRENT).count() == TASKS
    # Deletions applied: every deleted annotation hitl heard of is deleted in hitl, its label gone
    # (one whose every event was dropped left no trace to delete).
    assert set(records) - set(live) <= set(deleted)
    assert all(records[r].state == AnnotationState.DELETED for r in deleted if r in records)
    assert not Label.objects.filter(external_id__in=[f"ls-annotation:{r}" for r in deleted],
                                    status=LabelStatus.CURRENT).exists()
    assert ls_reconcile(project_id=project.id).deleted == 0 and hitl_labels(project) == expected

    figures = {
        "events": len(capture.deliveries), **dict(actions), **faults, "deliveries": len(sent),
        "labels_wrong_before_reconcile": wrong_before, "reconcile_deleted": result.deleted,
        "deleted_never_seen": sum(r not in records for r in deleted),
        "labels_lost": sum(item not in hitl_labels(project) for item in expected),
        "labels_doubled": len(over), "seconds_setup": round(set_up - started, 1),
        "seconds_make_events": round(made - set_up, 1), "seconds_deliver_and_apply": round(delivered - made, 1),
        "seconds_reconcile": round(reconciled - delivered, 1), "seconds_total": round(time.monotonic() - started, 1),
    }
    print("\nLabel Studio fault figures:", json.dumps(figures))
