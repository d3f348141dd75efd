"""Exclusive work on one row across worker processes, with PostgreSQL advisory locks.

A session-level advisory lock is released by PostgreSQL itself when the holder's connection
ends, so a worker that dies mid-task never leaves a stale lock behind.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connection


def _key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextmanager
def exclusive(name: str, *, wait_seconds: float = 0) -> Iterator[bool]:
    """Yield True if this process now holds ``name`` exclusively, False if another still does
    after ``wait_seconds``.

    Without PostgreSQL (the embedded SQLite default runs one worker) it always yields True.
    """
    if connection.vendor != "postgresql":
        yield True
        return
    key = _key(name)
    deadline = time.monotonic() + wait_seconds
    with connection.cursor() as cursor:
        while True:
            cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
            acquired = bool(cursor.fetchone()[0])
            if acquired or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
    try:
        yield acquired
    finally:
        if acquired:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [key])
