"""Concurrent bulks that share images, in real PostgreSQL transactions on separate connections.

Each thread has its own Django connection, so every bulk is its own transaction, exactly as two
gunicorn workers would run them. A second, raw psycopg connection holds uncommitted item rows to
put the transactions into a known interleaving.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from django.db import connection

from hitl.models import Item, Prediction
from hitl.services.ingestion import TRANSACTION_ATTEMPTS, predictions_ingest
from tests.conftest import LABELS

pytestmark = pytest.mark.django_db(transaction=True)
URL = "/api/v1/predictions/"


def _probs(index: int) -> list[float]:
    """One fixed prediction per image: a re-sent image is an identical duplicate."""
    return np.random.default_rng(index).dirichlet(np.ones(10)).tolist()


def _bulk(paths: dict[int, str], indices: list[int]) -> dict:
    return {"predictions": [{"image_path": paths[i], "probabilities": _probs(i)} for i in indices]}


def _in_threads(calls: list[Callable[[], Any]]) -> tuple[list[Any], list[BaseException]]:
    """Run each call in its own thread (its own database connection); return results and errors."""
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def run(position: int) -> None:
        try:
            results[position] = calls[position]()
        except BaseException as exc:  # noqa: BLE001 - the test reports whatever a bulk raised
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results, errors


def _raw_connection() -> psycopg.Connection:
    db = connection.settings_dict
    return psycopg.connect(
        host=db["HOST"], port=db["PORT"] or 5432, user=db["USER"], dbname=db["NAME"]
    )


def _lock_waiters() -> int:
    with _raw_connection() as conn:
        return conn.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()[0]


def _wait_for_lock_waiters(count: int, timeout: float = 3.0) -> None:
    """Give the bulks time to reach their lock waits (how many wait depends on the insert order)."""
    deadline = time.monotonic() + timeout
    while _lock_waiters() < count and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)


def _hold_item(project_id: int, sha256: str) -> psycopg.Connection:
    """An open transaction that has inserted the item for ``sha256`` and not yet committed."""
    conn = _raw_connection()
    conn.execute(
        f"INSERT INTO {Item._meta.db_table} "
        "(project_id, sha256, image, width, height, size_bytes, format, "
        "split, created_at) VALUES (%s, %s, 'held', 28, 28, 1, 'PNG', 'train', now())",
        [project_id, sha256],
    )
    return conn


def test_bulks_sharing_images_in_opposite_orders_do_not_deadlock(
    project,
    deployment_and_token,
    write_images,
    media_root: Path,
) -> None:
    """Bulk 1 is A,B and bulk 2 is B,C,A. Two held rows (A and C) make the interleaving certain:
    inserting in the order given, bulk 1 takes A and waits for B while bulk 2 holds B and waits
    for A, a deadlock PostgreSQL breaks by failing one bulk (a 500 to its deployment)."""
    deployment = deployment_and_token[0]
    a, b, c = write_images([0, 1, 2], folder="imgs/shared")
    sha = {
        p: hashlib.sha256((media_root / "storage" / p).read_bytes()).hexdigest() for p in (a, b, c)
    }
    paths = {0: a, 1: b, 2: c}
    hold_a, hold_c = _hold_item(project.id, sha[a]), _hold_item(project.id, sha[c])
    outcome: dict[str, Any] = {}

    def bulk(name: str, indices: list[int]) -> threading.Thread:
        def run() -> None:
            try:
                outcome[name] = predictions_ingest(
                    deployment=deployment, payload=_bulk(paths, indices)
                )
            except BaseException as exc:  # noqa: BLE001
                outcome[name] = exc
            finally:
                connection.close()

        thread = threading.Thread(target=run)
        thread.start()
        return thread

    first = bulk("first", [0, 1])
    _wait_for_lock_waiters(1)  # bulk 1 waits for the held A
    second = bulk("second", [1, 2, 0])
    _wait_for_lock_waiters(2)  # bulk 2 inserted B and waits for the held C
    hold_a.rollback()
    _wait_for_lock_waiters(2)  # bulk 1 inserted A and waits for bulk 2's B
    hold_c.rollback()  # bulk 2 inserts C, then waits for bulk 1's A
    first.join(timeout=30)
    second.join(timeout=30)
    hold_a.close()
    hold_c.close()

    failures = {
        name: repr(result) for name, result in outcome.items() if isinstance(result, BaseException)
    }
    assert failures == {}
    assert outcome["first"].created + outcome["second"].created == 3
    assert outcome["first"].items_created + outcome["second"].items_created == 3
    assert Item.objects.filter(project=project).count() == 3
    assert Prediction.objects.count() == 3


def test_many_overlapping_bulks_in_shuffled_orders_store_each_image_once(
    project,
    deployment_client,
    write_images,
) -> None:
    """Four deployments' worth of requests at once, three rounds, through the API: every bulk is
    a 201, and each image ends up as exactly one item with exactly one prediction."""
    paths = dict(enumerate(write_images(range(120), folder="imgs/pool")))
    rng = random.Random(7)
    seen: set[int] = set()
    for round_ in range(3):
        pool = list(range(round_ * 30, round_ * 30 + 60))  # each round overlaps the one before
        bulks = [rng.sample(pool, 40) for _ in range(4)]
        seen.update(i for indices in bulks for i in indices)

        def send(indices: list[int]) -> Callable[[], tuple[int, dict]]:
            def call() -> tuple[int, dict]:
                response = deployment_client.post(
                    URL, json.dumps(_bulk(paths, indices)), content_type="application/json"
                )
                return response.status_code, response.json()

            return call

        results, errors = _in_threads([send(indices) for indices in bulks])
        assert errors == []
        assert [status for status, _ in results] == [201] * 4, results
        for (_, data), indices in zip(results, bulks):
            assert data["created"] + data["duplicates"] == len(indices) and data["conflicts"] == []
        assert Item.objects.filter(project=project).count() == len(seen)
        assert Prediction.objects.count() == len(seen)


def test_a_differing_duplicate_is_reported_and_an_identical_one_is_not(
    deployment_client,
    write_images,
) -> None:
    paths = dict(enumerate(write_images(range(5), folder="imgs/dup")))
    first = deployment_client.post(
        URL, json.dumps(_bulk(paths, [0, 1, 2, 3, 4])), content_type="application/json"
    )
    assert first.status_code == 201
    item_ids = first.json()["item_ids"]
    again = _bulk(paths, [0, 1, 2, 3, 4])
    again["predictions"][3]["probabilities"] = _probs(99)
    response = deployment_client.post(URL, json.dumps(again), content_type="application/json")
    assert response.status_code == 201
    data = response.json()
    assert data["created"] == 0 and data["duplicates"] == 4
    assert data["conflicts"] == [{"index": 3, "item_id": item_ids[3], "field": "probabilities"}]
    stored = Prediction.objects.get(item_id=item_ids[3]).probability_array
    np.testing.assert_allclose(stored, _probs(3), rtol=1e-6)  # the first report stands


def test_a_differing_predicted_label_is_reported(deployment_client, write_images) -> None:
    paths = dict(enumerate(write_images(range(2), folder="imgs/label")))
    body = _bulk(paths, [0, 1])
    assert (
        deployment_client.post(URL, json.dumps(body), content_type="application/json").status_code
        == 201
    )
    argmax = int(np.argmax(_probs(1)))
    body["predictions"][1]["predicted_label"] = LABELS[(argmax + 1) % len(LABELS)]
    data = deployment_client.post(URL, json.dumps(body), content_type="application/json").json()
    assert [(c["index"], c["field"]) for c in data["conflicts"]] == [(1, "predicted_label")]
    assert data["duplicates"] == 1


@pytest.fixture()
def refused_predictions(deployment_and_token) -> Iterator[Callable[[], int]]:
    """PostgreSQL aborts every insert of this deployment's predictions as a deadlock victim (a
    trigger raising SQLSTATE 40P01); returns how many times it did (a sequence: not rolled back
    with the transaction). Other sessions' inserts (a worker's) are left alone."""
    table = Prediction._meta.db_table
    deployment_id = int(deployment_and_token[0].id)
    with connection.cursor() as cursor:
        cursor.execute("CREATE SEQUENCE refusals")
        cursor.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "PERFORM nextval('refusals'); "
            "RAISE EXCEPTION 'deadlock detected' USING ERRCODE = '40P01'; "
            "END $$"
        )
        cursor.execute(
            f"CREATE TRIGGER refuse BEFORE INSERT ON {table} FOR EACH ROW "
            f"WHEN (NEW.deployment_id = {deployment_id}) EXECUTE FUNCTION refuse()"
        )

    def refusals() -> int:
        with connection.cursor() as cursor:
            cursor.execute("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM refusals")
            return cursor.fetchone()[0]

    try:
        yield refusals
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TRIGGER IF EXISTS refuse ON {table}")
            cursor.execute("DROP FUNCTION IF EXISTS refuse()")
            cursor.execute("DROP SEQUENCE IF EXISTS refusals")


def test_a_bulk_refused_on_every_attempt_gets_a_503_with_retry_after(
    deployment_client,
    write_images,
    refused_predictions,
) -> None:
    paths = dict(enumerate(write_images(range(3), folder="imgs/refused")))
    response = deployment_client.post(
        URL, json.dumps(_bulk(paths, [0, 1, 2])), content_type="application/json"
    )
    assert response.status_code == 503
    assert response["Retry-After"] == "1"
    assert "send it again" in response.json()["detail"]
    assert refused_predictions() == TRANSACTION_ATTEMPTS
    assert Item.objects.count() == 0 and Prediction.objects.count() == 0  # nothing half-stored
