"""Disposable Redis and PostgreSQL servers, a Celery worker on them, and the figures report.

The machine's own PostgreSQL and Redis are shared and must never be restarted, so every fault
here is injected into servers these fixtures start on free loopback ports and remove afterwards:
a ``redis-server`` without persistence (a restart loses every queued message, as a crashed
Redis does) and a throwaway PostgreSQL cluster (``initdb`` + ``pg_ctl``, run as the ``postgres``
OS user, trust authentication).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kombu.exceptions
import psycopg
import pytest
import redis
from django.conf import settings
from django.db import connection

from tests.conftest import WorkerProcess, artifacts_folder
from workers.celery import app as celery_app


def _postgres_bin() -> Path:
    """The newest installed PostgreSQL's programs (Debian layout), or ``HITL_PG_BIN``."""
    if "HITL_PG_BIN" in os.environ:
        return Path(os.environ["HITL_PG_BIN"])
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if not found:
        raise RuntimeError(
            "no PostgreSQL server programs (initdb, pg_ctl) found: install postgresql or set HITL_PG_BIN"
        )
    return found[-1].parent


DOCS_REPORT = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"
REPORT_INTRO = """# Reliability: faults injected into the real parts

Each section below is written by the test named in it, from what that run measured. Nothing here
is estimated: `HITL_WRITE_DOCS=1 pytest -m faults tests/reliability` refreshes the figures (a
plain run writes its report to test-artifacts/reliability.md and leaves this file alone).
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, process: subprocess.Popen | None = None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited before listening on port {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s")


class RedisServer:
    """``redis-server`` with no persistence: stopping it loses every message it held."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.process: subprocess.Popen | None = None
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        with open(self.directory / "redis.log", "a") as log:
            self.process = subprocess.Popen(
                [
                    "redis-server",
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                    "--dir",
                    str(self.directory),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_port(self.port, self.process)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()  # as a crash: nothing is saved (and nothing would be: --save "")
            self.process.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()
        self.restarts += 1


class PostgresCluster:
    """A throwaway PostgreSQL cluster in a temporary folder, owned by the ``postgres`` user."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.directory = directory
        self.data = directory / "data"
        self.bin = _postgres_bin()
        self.restarts = 0

    def url(self, database: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def _as_postgres(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *command], check=True, capture_output=True, timeout=120)

    def init(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
        self._as_postgres(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
            "-E",
            "UTF8",
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.directory} "
            "-c fsync=off -c full_page_writes=off -c max_connections=60"
        )
        self._as_postgres(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.directory / "pg.log"),
            "-o",
            options,
            "-w",
            "start",
        )

    def stop(self) -> None:
        """A fast shutdown: every open session is cut off, as in a failover or a restart."""
        self._as_postgres(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"
        )

    def restart(self, down_seconds: float = 0) -> None:
        self.stop()
        time.sleep(down_seconds)
        self.start()
        self.restarts += 1

    def execute(self, database: str, sql: str, params: list | None = None) -> list[tuple]:
        with psycopg.connect(self.url(database), autocommit=True) as conn:
            cursor = conn.execute(sql, params)
            return cursor.fetchall() if cursor.description else []


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    directory = Path(tempfile.mkdtemp(prefix="hitl-redis-"))
    server = RedisServer(directory)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    directory = Path(tempfile.mkdtemp(prefix="hitl-pg-"))
    cluster = PostgresCluster(directory)
    cluster.init()
    cluster.start()
    yield cluster
    try:
        cluster.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def use_broker(url: str) -> None:
    """Point this process's Celery app (the one ``enqueue`` publishes with) at ``url``."""
    celery_app.conf.broker_url = url
    if celery_app._pool is not None:
        celery_app._pool.force_close_all()
    celery_app._pool = None
    celery_app.amqp._producer_pool = None


@pytest.fixture(scope="package")
def broker(redis_server: RedisServer) -> Iterator[RedisServer]:
    """This package's messages go through the disposable Redis (never the shared one, whose
    other sessions' unacknowledged messages a short visibility timeout would disturb); the tests
    after it publish where they did before."""
    before = celery_app.conf.broker_url
    use_broker(redis_server.url)
    yield redis_server
    use_broker(before)


# A message a killed worker held is restored by the next worker after this many seconds.
VISIBILITY_TIMEOUT = 20
# The worker re-sends work pending for longer than this when the beat task runs.
STALLED_AFTER = 2


class FaultWorker(WorkerProcess):
    """A Celery worker process that can be killed whole (main process and pool, as when its
    machine is lost) and started again under the same name."""

    def __init__(self, env: dict[str, str], log: Path, hostname: str, queues: str) -> None:
        self.env, self.queues, self.starts = env, queues, 0
        super().__init__(None, log, hostname)  # type: ignore[arg-type]
        self.start()

    def start(self) -> None:
        with open(self.log, "a") as output:
            self.popen = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "workers",
                    "worker",
                    "--pool",
                    "prefork",
                    "--concurrency",
                    "1",
                    "--loglevel",
                    "INFO",
                    "--without-mingle",
                    "--without-gossip",
                    "--hostname",
                    self.hostname,
                    "-Q",
                    self.queues,
                ],
                env=self.env,
                cwd=settings.BASE_DIR,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        self.starts += 1
        wait_for_worker(self)

    def kill_all(self) -> None:
        pool = self.children()
        self.popen.kill()
        for pid in pool:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.popen.wait(timeout=10)

    def stop(self) -> None:
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.popen.kill()


@pytest.fixture(scope="package")
def fault_worker(
    django_db_setup,
    django_db_blocker,
    media_root: Path,
    queue_prefix: str,
    broker: RedisServer,
    trust_files: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[FaultWorker]:
    """One Celery worker process (one pool process, so a queued message stays queued while it
    is busy) against the test database and the disposable Redis, stopped after this package so
    that it takes no later test's messages."""
    db = connection.settings_dict
    log = tmp_path_factory.mktemp("fault-worker") / "worker.log"
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "HITL_MEDIA_ROOT": str(media_root),
        "HITL_STORAGE_ROOT": str(media_root / "storage"),
        "HITL_QUEUE_PREFIX": queue_prefix,
        "HITL_DATA_DIR": str(log.parent),
        "CELERY_BROKER_URL": broker.url,
        "HITL_SECRET_KEY": settings.SECRET_KEY,
        "HITL_STALLED_AFTER_SECONDS": str(STALLED_AFTER),
        "HITL_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
        "HITL_ALERT_WEBHOOK_ALLOW_PRIVATE": "true",  # the alert webhook case calls a loopback receiver
        **trust_files,
    }
    worker = FaultWorker(
        env, log, f"{queue_prefix}@faults", f"{queue_prefix}.cpu,{queue_prefix}.gpu"
    )
    yield worker
    worker.stop()
    from tests.conftest import _wait_for_other_sessions_to_end

    _wait_for_other_sessions_to_end(django_db_blocker)


def wait_for_worker(worker: WorkerProcess, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not _ping(worker):
        if worker.popen.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the Celery worker did not answer:\n{worker.log_tail()}")


def _ping(worker: WorkerProcess) -> bool:
    try:
        return bool(celery_app.control.ping(destination=[worker.hostname], timeout=1.0))
    except (OSError, redis.RedisError, kombu.exceptions.OperationalError):
        return False  # this process's connection to a restarted Redis: the next ping reconnects


@pytest.fixture()
def wait_for(fault_worker: WorkerProcess) -> Callable[..., float]:
    """Wait for ``condition``; return the seconds it took. Fails with the worker's log."""

    def wait(
        condition: Callable[[], bool],
        what: str,
        timeout: float = 120,
        every: Callable[[], Any] | None = None,
        every_seconds: float = 3.0,
    ) -> float:
        start = time.monotonic()
        last = start
        while not condition():
            if fault_worker.popen.poll() is not None:
                raise AssertionError(
                    f"the worker died while waiting for {what}:\n{fault_worker.log_tail()}"
                )
            now = time.monotonic()
            if now - start > timeout:
                raise AssertionError(f"timed out waiting for {what}:\n{fault_worker.log_tail()}")
            if every is not None and now - last >= every_seconds:
                every()
                last = now
            time.sleep(0.2)
        return time.monotonic() - start

    return wait


def report_section(key: str, markdown: str) -> None:
    """Write (or replace) this test's section of the fault report, between its markers: in
    docs/reliability.md when HITL_WRITE_DOCS=1, else in test-artifacts/reliability.md (a copy of
    the docs' report with this run's figures), so a test run leaves the checkout clean."""
    begin, end = f"<!-- faults:{key} -->", f"<!-- /faults:{key} -->"
    report = DOCS_REPORT if os.environ.get("HITL_WRITE_DOCS") == "1" else artifacts_folder() / "reliability.md"
    source = report if report.exists() else DOCS_REPORT
    text = source.read_text() if source.exists() else REPORT_INTRO
    block = f"{begin}\n{markdown.strip()}\n{end}"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.DOTALL)
    text = (
        pattern.sub(lambda _: block, text)
        if pattern.search(text)
        else text.rstrip() + "\n\n" + block + "\n"
    )
    report.write_text(text)


class TableLock:
    """Hold ``LOCK TABLE ... ACCESS EXCLUSIVE`` on a separate connection: any worker query that
    touches the table waits there, which stops a task at a known point."""

    def __init__(self, table: str) -> None:
        self.table = table
        self.conn = _test_database()
        self.conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")

    def waiters(self) -> int:
        """Sessions (other than this one) waiting for a lock in a query on the table."""
        with psycopg.connect(
            host=self.conn.info.host,
            port=self.conn.info.port,
            user=self.conn.info.user,
            dbname=self.conn.info.dbname,
            autocommit=True,
        ) as probe:
            return probe.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND query ILIKE %s",
                [f"%{self.table}%"],
            ).fetchone()[0]

    def wait_for_waiter(self, worker: WorkerProcess, timeout: float = 60) -> float:
        start = time.monotonic()
        while self.waiters() == 0:
            if time.monotonic() - start > timeout:
                self.release()
                raise AssertionError(
                    f"no task reached {self.table} in {timeout}s:\n{worker.log_tail()}"
                )
            time.sleep(0.1)
        return time.monotonic() - start

    def release(self) -> None:
        if not self.conn.closed:
            self.conn.rollback()
            self.conn.close()


class RowLock(TableLock):
    """Hold one row ``FOR UPDATE`` on a separate connection: a task that locks that row waits
    there, with the work it did on the rows before it already committed."""

    def __init__(self, table: str, pk: int) -> None:
        self.table = table
        self.conn = _test_database()
        self.conn.execute(f"SELECT 1 FROM {table} WHERE id = %s FOR UPDATE", [pk])


def _test_database() -> psycopg.Connection:
    db = connection.settings_dict
    return psycopg.connect(host=db["HOST"], port=db["PORT"] or 5432, user=db["USER"], dbname=db["NAME"])
