"""(c) PostgreSQL restarted under ingestion load.

A live gunicorn serving hitl against a disposable PostgreSQL cluster; several client threads post
bulks of predictions as deployments do, retrying on a 503 as its Retry-After asks (capped at a
second here, to keep the test short). Mid-load the cluster is stopped (fast shutdown: every
session is cut off), left down for a moment and started again. The web server is not restarted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import requests
from django.conf import settings

from tests.reliability.conftest import (
    PostgresCluster,
    RedisServer,
    free_port,
    report_section,
    wait_port,
)

pytestmark = [pytest.mark.faults]
CLIENTS = 4
WEB_WORKERS = 2  # gunicorn workers of the server under test
BULKS_PER_CLIENT = 15
BULK_SIZE = 10
DOWN_SECONDS = 2.0
SEED = """
import os, django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from hitl.models import Environment
from hitl.services.projects import deployment_create, project_create
from tests.conftest import LABELS, make_version
project = project_create(slug="live", name="Live", labels=list(LABELS))
version = make_version(project, "v1", promote=True)
print(deployment_create(project=project, name="edge", environment=Environment.EDGE, model_version=version, storage_prefix="live")[1])
"""


@dataclass
class Live:
    url: str
    token: str
    server: subprocess.Popen
    log: Path
    database: str


@pytest.fixture()
def web_server(
    postgres_cluster: PostgresCluster, broker: RedisServer, media_root: Path, tmp_path: Path
) -> Iterator[Live]:
    database = f"live_{uuid.uuid4().hex[:8]}"
    postgres_cluster.execute("postgres", f"CREATE DATABASE {database}")
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "hitl.settings",
        "DATABASE_URL": postgres_cluster.url(database),
        "HITL_MEDIA_ROOT": str(media_root),
        "HITL_STORAGE_ROOT": str(media_root / "storage"),
        "HITL_DATA_DIR": str(tmp_path),
        "CELERY_BROKER_URL": broker.url,
        "HITL_QUEUE_PREFIX": f"hitl-live-{uuid.uuid4().hex[:8]}",
        "HITL_SECRET_KEY": settings.SECRET_KEY,
        "HITL_DB_CONN_MAX_AGE": "60",
    }  # persistent connections: the restart breaks them under the app
    seeded = subprocess.run(
        [sys.executable, "-c", SEED],
        env=env,
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,  # its stderr is shown below
    )
    assert seeded.returncode == 0, seeded.stderr[-3000:]
    token = seeded.stdout.strip().splitlines()[-1]
    port = free_port()
    log = tmp_path / "gunicorn.log"
    with open(log, "w") as output:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "hitl.wsgi",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                str(WEB_WORKERS),
                "--threads",
                "2",
                "--timeout",
                "60",
            ],
            env=env,
            cwd=settings.BASE_DIR,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_port(port, server)
        # the port answers once the first worker is up; the test compares the full set of
        # workers before and after, so wait until every one has been forked
        deadline = time.monotonic() + 60
        while len(_children(server.pid)) < WEB_WORKERS:
            assert time.monotonic() < deadline and server.poll() is None, log.read_text()[-2000:]
            time.sleep(0.1)
        yield Live(f"http://127.0.0.1:{port}", token, server, log, database)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


@dataclass
class ClientLog:
    statuses: Counter = field(default_factory=Counter)
    acknowledged: list[int] = field(default_factory=list)  # bulk numbers
    duplicates_on_retry: int = 0
    unexpected: list[str] = field(default_factory=list)
    retry_after_missing: int = 0
    network_errors: int = 0


def _client(
    live: Live, bulks: list[tuple[int, list[str]]], log: ClientLog, deadline: float
) -> None:
    session = requests.Session()
    session.headers["Authorization"] = f"Deployment {live.token}"
    rng = np.random.default_rng(len(bulks))
    for number, paths in bulks:
        body = {
            "predictions": [
                {"image_path": p, "probabilities": q.tolist()}
                for p, q in zip(paths, rng.dirichlet(np.ones(10), size=len(paths)))
            ]
        }
        retried = False
        while time.monotonic() < deadline:
            try:
                response = session.post(
                    f"{live.url}/api/v1/predictions/",
                    data=json.dumps(body),
                    headers={"Content-Type": "application/json"},
                    timeout=30,
                )
            except requests.RequestException:
                log.network_errors += 1
                time.sleep(0.2)
                continue
            log.statuses[response.status_code] += 1
            if response.status_code == 201:
                log.acknowledged.append(number)
                if retried and response.json()["duplicates"]:
                    log.duplicates_on_retry += (
                        1  # the earlier try committed; only its answer was lost
                    )
                break
            if response.status_code == 503 and "Retry-After" in response.headers:
                retried = True
                time.sleep(min(float(response.headers["Retry-After"]), 1.0))
                continue
            if response.status_code == 503:
                log.retry_after_missing += 1
            log.unexpected.append(f"{response.status_code}: {response.text[:300]}")
            break


def _stored(cluster: PostgresCluster, database: str) -> dict[str, int]:
    """Predictions per stored item image path."""
    rows = cluster.execute(
        database,
        "SELECT i.image, count(p.id) FROM hitl_item i "
        "LEFT JOIN hitl_prediction p ON p.item_id = i.id GROUP BY i.image",
    )
    return dict(rows)


def test_postgres_restart_under_ingestion_load(
    web_server: Live, postgres_cluster: PostgresCluster, write_images
) -> None:
    started = time.monotonic()
    paths = write_images(range(CLIENTS * BULKS_PER_CLIENT * BULK_SIZE), folder="live")
    bulks = [
        (n, paths[n * BULK_SIZE : (n + 1) * BULK_SIZE]) for n in range(CLIENTS * BULKS_PER_CLIENT)
    ]
    logs = [ClientLog() for _ in range(CLIENTS)]
    deadline = time.monotonic() + 150
    threads = [
        threading.Thread(target=_client, args=(web_server, bulks[c::CLIENTS], logs[c], deadline))
        for c in range(CLIENTS)
    ]
    workers_before = set(_children(web_server.server.pid))
    for thread in threads:
        thread.start()
    while sum(len(log.acknowledged) for log in logs) < len(bulks) // 4:
        time.sleep(0.05)
    acknowledged_before = sum(len(log.acknowledged) for log in logs)
    restart_started = time.monotonic()
    postgres_cluster.restart(down_seconds=DOWN_SECONDS)
    restart_seconds = time.monotonic() - restart_started
    for thread in threads:
        thread.join(timeout=180)

    statuses = sum((log.statuses for log in logs), Counter())
    unexpected = [u for log in logs for u in log.unexpected]
    assert unexpected == []
    assert statuses[500] == 0
    assert statuses[503] > 0  # the clients did meet the restart
    assert sum(log.retry_after_missing for log in logs) == 0
    acknowledged = sorted(n for log in logs for n in log.acknowledged)
    assert acknowledged == list(range(len(bulks)))  # every bulk got through in the end
    assert acknowledged_before < len(bulks)  # and some only after the restart
    # Nothing half-stored, nothing twice: every bulk's images are there, each with one prediction.
    stored = _stored(postgres_cluster, web_server.database)
    for _, bulk in bulks:
        counts = [stored.get(f"storage/{p}") for p in bulk]
        assert counts == [1] * len(bulk) or counts == [None] * len(bulk), counts
    assert len(stored) == len(paths) and set(stored.values()) == {1}
    # The same web server recovered by itself: no worker was restarted, none died.
    assert web_server.server.poll() is None
    assert set(_children(web_server.server.pid)) == workers_before
    assert "Traceback" not in web_server.log.read_text()

    report_section(
        "postgres",
        f"""
## PostgreSQL restarted under ingestion load (`tests/reliability/test_postgres_restart.py`)

gunicorn (2 processes x 2 threads, persistent database connections with health checks) against a
disposable PostgreSQL cluster; {CLIENTS} client threads each posted {BULKS_PER_CLIENT} bulks of
{BULK_SIZE} predictions, retrying a bulk on a 503 after its Retry-After (capped at 1 s). After
{acknowledged_before} bulks were acknowledged the cluster was stopped (fast shutdown), left down
{DOWN_SECONDS:g} s and started again ({restart_seconds:.1f} s from stop to accepting connections).

| figure | value |
| --- | --- |
| bulks / predictions sent | {len(bulks)} / {len(paths)} |
| PostgreSQL restarts (faults injected) | {postgres_cluster.restarts} |
| requests answered 201 / 503 (with Retry-After) / 500 | {statuses[201]} / {statuses[503]} / {statuses[500]} |
| connection errors seen by clients | {sum(log.network_errors for log in logs)} |
| bulks acknowledged | {len(acknowledged)} of {len(bulks)} |
| retried bulks whose earlier try had committed (answered as duplicates) | {sum(log.duplicates_on_retry for log in logs)} |
| bulks half-stored | 0 |
| predictions lost / stored twice | 0 / 0 |
| web server restarts needed | 0 |
| wall time of the test | {time.monotonic() - started:.1f} s |
""",
    )


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False).stdout
    return [int(p) for p in out.split()]
