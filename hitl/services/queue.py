"""The one way hitl code enqueues Celery work: by task name, after the transaction commits."""

from __future__ import annotations

from django.db import transaction

from workers.celery import app


def enqueue(task_name: str, *args: int | str) -> None:
    """Send ``task_name`` once the surrounding transaction commits (at once outside one).

    Tasks take primitive ids and re-read their rows, so the row they need must be committed
    before a worker can pick the message up. A broker that cannot take the message (Redis
    restarting) is logged, not raised: the work is committed and its row says it is pending, so
    the beat (``requeue_stalled_work``, ``reconcile_all``) re-sends it; raising here would answer
    a 500 for a request whose data is already stored.
    """
    transaction.on_commit(lambda: app.send_task(task_name, args=list(args)), robust=True)
