"""(b) Redis restarted while a batch selection and a retraining cycle are queued.

Redis runs without persistence here, as a cache-configured or crashed Redis does: the restart
loses both queued messages. Nothing in the broker can bring them back; hitl's beat task
(``requeue_stalled_work``) re-sends work whose row is still pending, and the services make a
re-sent (even a twice re-sent) task harmless. The worker process is never restarted.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import redis

from hitl.models import (
    CycleStatus,
    EvaluationSnapshot,
    ModelVersion,
    Prediction,
    RetrainingCycle,
    ReviewBatch,
    ReviewBatchStatus,
    ReviewTask,
    TrustEvent,
    UncertaintyScore,
)
from hitl.services.cycles import cycle_request
from hitl.services.selection import review_batch_request
from labeling.models import EventState, WebhookEvent
from tests.conftest import probabilities
from tests.reliability.conftest import STALLED_AFTER, TableLock, report_section, wait_for_worker
from workers.celery import app as celery_app
from workers.ml.uncertainty import SCORERS

pytestmark = [pytest.mark.faults, pytest.mark.worker, pytest.mark.django_db(transaction=True)]
BATCH_SIZE = 10


def _queued(client: redis.Redis, prefix: str) -> int:
    return sum(client.llen(f"{prefix}.{kind}") for kind in ("cpu", "gpu"))


def test_work_queued_in_a_restarted_redis_completes_once(
    project,
    labeled_items,
    ingest,
    broker,
    fault_worker,
    queue_prefix,
    wait_for,
) -> None:
    started = time.monotonic()
    labeled_items(range(150), folder="train")
    # the candidate is kept out of production (no golden set this big): the batch ranks v1's
    # predictions whichever of the two runs first
    project.gate_rules = {"min_golden_size": 1_000_000}
    project.save()
    version = ingest(range(150, 190)).model_version
    wait_for(
        lambda: not Prediction.objects.filter(scored_at__isnull=True).exists(),
        "scoring of the pool",
    )

    # Keep the worker's one pool process busy, so what follows stays queued in Redis.
    event = WebhookEvent.objects.create(
        action="PROJECT_UPDATED", payload={"action": "PROJECT_UPDATED"}, state=EventState.PROCESSED
    )
    busy = TableLock(WebhookEvent._meta.db_table)
    celery_app.send_task("labeling.tasks.process_webhook_event", args=[event.id])
    busy.wait_for_waiter(fault_worker)
    batch = review_batch_request(
        project=project, requested_by="test", size=BATCH_SIZE, audit_fraction=0.2, strategy="margin"
    )
    cycle = cycle_request(project=project, requested_by="test")
    client = redis.Redis.from_url(broker.url)
    queued = _queued(client, queue_prefix)
    assert queued == 2  # the selection (cpu) and the retraining (gpu)

    broker.restart()
    client = redis.Redis.from_url(broker.url)
    lost = queued - _queued(client, queue_prefix)
    assert lost == 2
    busy.release()
    wait_for_worker(fault_worker)  # the same worker process reconnected by itself
    time.sleep(STALLED_AFTER + 1)
    assert ReviewBatch.objects.get(pk=batch.pk).status == ReviewBatchStatus.PENDING
    assert RetrainingCycle.objects.get(pk=cycle.pk).status == CycleStatus.PENDING

    # The beat: fired twice at once, then every few seconds until both are done. Each firing
    # re-sends whatever is still pending, so the same work may be queued several times.
    resends = 0

    def beat() -> None:
        nonlocal resends
        celery_app.send_task("workers.tasks.requeue_stalled_work")
        resends += 1

    beat()
    beat()
    recovery = wait_for(
        lambda: (
            ReviewBatch.objects.get(pk=batch.pk).status != ReviewBatchStatus.PENDING
            and RetrainingCycle.objects.get(pk=cycle.pk).is_finished
        ),
        "the re-sent selection and cycle",
        timeout=180,
        every=beat,
    )

    batch.refresh_from_db()
    cycle.refresh_from_db()
    assert batch.status == ReviewBatchStatus.SELECTED, batch.error
    tasks = list(
        ReviewTask.objects.filter(batch__project=project).values_list("batch_id", "item_id")
    )
    assert len(tasks) == BATCH_SIZE and {b for b, _ in tasks} == {batch.id}
    assert len({item for _, item in tasks}) == BATCH_SIZE
    assert cycle.status == CycleStatus.SUCCEEDED, cycle.error
    assert cycle.attempts == 1  # trained once, however often it was re-sent
    assert ModelVersion.objects.filter(project=project).exclude(pk=version.pk).count() == 1
    assert EvaluationSnapshot.objects.filter(cycle=cycle).count() == 2
    assert TrustEvent.objects.filter(project=project, kind="model_evaluated").count() == 2

    report_section(
        "redis",
        f"""
## Redis restarted with work queued (`tests/reliability/test_redis_restart.py`)

A disposable `redis-server` without persistence; one real Celery worker process (never
restarted) and the test database. The worker's only pool process was kept busy so that a batch
selection and a retraining cycle stayed queued; then Redis was killed and started again.

| figure | value |
| --- | --- |
| messages queued when Redis was restarted | {queued} |
| messages lost by the restart | {lost} |
| Redis restarts (faults injected) | {broker.restarts} |
| beat firings that re-sent pending work (the first two at once) | {resends} |
| selections stored / review tasks | 1 / {len(tasks)} (batch size {BATCH_SIZE}) |
| cycle attempts / candidates trained | {cycle.attempts} / 1 |
| work lost after recovery | 0 |
| work run twice to a different result | 0 |
| seconds from the first beat to both finished | {recovery:.1f} |
| wall time of the test | {time.monotonic() - started:.1f} s |
""",
    )


def test_ingestion_while_redis_is_down_is_stored_and_scored_later(
    deployment_client, write_images, broker, fault_worker, wait_for,
) -> None:
    """The broker is down when a bulk commits: the deployment still gets its 201 (the data is
    stored), and the beat has the predictions scored once Redis is back."""
    paths = write_images(range(500, 520), folder="imgs/down")
    probs = probabilities(np.random.default_rng(3), len(paths))
    body = {"predictions": [{"image_path": p, "probabilities": q} for p, q in zip(paths, probs)]}
    broker.stop()
    try:
        posted = time.monotonic()
        response = deployment_client.post("/api/v1/predictions/", json.dumps(body),
                                          content_type="application/json")
        answer_seconds = time.monotonic() - posted
    finally:
        broker.start()
    assert response.status_code == 201, response.content
    assert response.json()["created"] == len(paths)
    wait_for_worker(fault_worker)
    # Its scoring message never reached Redis.
    assert Prediction.objects.filter(scored_at__isnull=True).count() == len(paths)
    time.sleep(STALLED_AFTER + 1)
    beats = 0

    def beat() -> None:
        nonlocal beats
        celery_app.send_task("workers.tasks.requeue_stalled_work")
        beats += 1

    beat()
    recovery = wait_for(lambda: not Prediction.objects.filter(scored_at__isnull=True).exists(),
                        "scoring after the beat", timeout=60, every=beat)
    assert UncertaintyScore.objects.count() == len(paths) * len(SCORERS)
    report_section("redis-down", f"""
## Redis down while a bulk is ingested (`tests/reliability/test_redis_restart.py`)

The bulk commits, then publishing its scoring message fails: hitl logs the failure and still
answers 201 (the data is stored; a 500 would make the deployment resend what is already there).
The beat re-sends the scoring once Redis is back.

| figure | value |
| --- | --- |
| predictions posted while Redis was down / answered | {len(paths)} / {response.status_code} in {answer_seconds:.1f} s |
| scoring messages lost | 1 |
| beat firings until every prediction was scored | {beats} ({recovery:.1f} s) |
| predictions scored / scores stored | {len(paths)} / {len(paths) * len(SCORERS)} (one per scorer) |
""")
