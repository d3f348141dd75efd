"""The one way hitl code enqueues Celery work: by task name, after the transaction commits."""

from __future__ import annotations

from django.db import transaction

from workers.celery import app


def enqueue(task_name: str, *args: int | str) -> None:
    """Send ``task_name`` once the surrounding transaction commits (at once outside one).

    Tasks take primitive ids and re-read their rows, so the row they need must be committed
    before a worker can pick the message up.
    """
    transaction.on_commit(lambda: app.send_task(task_name, args=list(args)))
