"""A real Celery worker process against the test database, Redis and this session's queues."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from workers.celery import app as celery_app


class WorkerProcess:
    def __init__(self, popen: subprocess.Popen, log: Path, hostname: str) -> None:
        self.popen = popen
        self.log = log
        self.hostname = hostname

    def children(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.popen.pid)], capture_output=True, text=True).stdout
        return [int(pid) for pid in out.split()]

    def kill_pool(self) -> None:
        """SIGKILL every pool process, as the OOM killer or a lost machine would."""
        for pid in self.children():
            os.kill(pid, signal.SIGKILL)

    def log_tail(self) -> str:
        return self.log.read_text()[-4000:]


@pytest.fixture(scope="session")
def celery_worker(django_db_setup, django_db_blocker, media_root: Path, queue_prefix: str,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    db = connection.settings_dict
    url = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    hostname = f"{queue_prefix}@test"
    env = {**os.environ, "DATABASE_URL": url, "HITL_MEDIA_ROOT": str(media_root),
           "HITL_STORAGE_ROOT": str(media_root / "storage"), "HITL_QUEUE_PREFIX": queue_prefix,
           "HITL_DATA_DIR": str(log.parent), "CELERY_BROKER_URL": settings.CELERY_BROKER_URL}
    popen = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers", "worker", "--pool", "prefork", "--concurrency", "2",
         "--loglevel", "INFO", "--without-mingle", "--without-gossip", "--hostname", hostname,
         "-Q", f"{queue_prefix}.cpu,{queue_prefix}.gpu"],
        env=env, cwd=settings.BASE_DIR, stdout=open(log, "w"), stderr=subprocess.STDOUT,
    )
    worker = WorkerProcess(popen, log, hostname)
    deadline = time.monotonic() + 90
    while not celery_app.control.ping(destination=[hostname], timeout=1.0):
        if popen.poll() is not None or time.monotonic() > deadline:
            popen.kill()
            raise RuntimeError(f"the Celery worker did not start:\n{worker.log_tail()}")
    yield worker
    popen.send_signal(signal.SIGTERM)
    try:
        popen.wait(timeout=30)
    except subprocess.TimeoutExpired:
        popen.kill()


@pytest.fixture()
def wait_until(celery_worker: WorkerProcess) -> Callable[..., None]:
    def wait(condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if celery_worker.popen.poll() is not None:
                raise AssertionError(f"the worker died while waiting for {what}:\n{celery_worker.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}:\n{celery_worker.log_tail()}")
            time.sleep(0.2)

    return wait
