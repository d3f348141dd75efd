"""The Celery app. Short CPU work and long (GPU) work go to separate queues.

Run a worker for both queues with ``celery -A workers worker``; on a GPU machine run
``celery -A workers worker -Q <prefix>.gpu --concurrency 1``.
"""

from __future__ import annotations

import os
from pathlib import Path

from celery import Celery
from django.conf import settings
from kombu import Queue
from kombu.exceptions import OperationalError as BrokerError

from hitl.errors import TRANSIENT_DB_ERRORS, Busy

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hitl.settings")

app = Celery("hitl")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.include = ["workers.tasks", "labeling.tasks"]

# Routing lives here, in configuration, as Celery intends; the task decorators carry policy.
GPU_TASKS = frozenset({
    "workers.tasks.retrain",
    "workers.tasks.evaluate",
    "workers.tasks.predict_items",
    "workers.tasks.select_review_batch_with_model",
})


def configure_queues(prefix: str) -> None:
    """Name this installation's queues ``<prefix>.cpu`` and ``<prefix>.gpu``."""
    app.conf.hitl_queue_prefix = prefix
    app.conf.task_queues = (Queue(f"{prefix}.cpu"), Queue(f"{prefix}.gpu"))
    app.conf.task_default_queue = f"{prefix}.cpu"


def route_task(name: str, args: object, kwargs: object, options: object, task: object = None, **kw: object) -> dict:
    queue_class = "gpu" if name in GPU_TASKS else "cpu"
    return {"queue": f"{app.conf.hitl_queue_prefix}.{queue_class}"}


def delete_queues(prefix: str) -> None:
    """Remove a throwaway installation's queues (a demo's or a test session's) from Redis."""
    if not app.conf.broker_url.startswith("redis://"):
        return
    import redis

    client = redis.Redis.from_url(app.conf.broker_url)
    for key in client.scan_iter(f"*{prefix}.*"):
        client.delete(key)


def use_embedded_broker(folder: Path) -> None:
    """Use kombu's filesystem transport under ``folder``: Celery with no Redis running.

    For a single machine only (the demo's embedded default): a message is taken off the queue
    when a worker reads it, so a worker killed mid-task loses that task.
    """
    queue, processed, control = folder / "queue", folder / "processed", folder / "control"
    for path in (queue, processed, control):
        path.mkdir(parents=True, exist_ok=True)
    app.conf.broker_url = "filesystem://"
    app.conf.broker_transport_options = {
        "data_folder_in": str(queue), "data_folder_out": str(queue), "processed_folder": str(processed),
        "control_folder": str(control), "polling_interval": 0.2,
    }


app.conf.task_routes = (route_task,)
configure_queues(settings.HITL_QUEUE_PREFIX)
if settings.CELERY_BROKER_URL.startswith("filesystem://"):
    use_embedded_broker(settings.DATA_DIR / "broker")

app.conf.beat_schedule = {
    "requeue-stalled-work": {"task": "workers.tasks.requeue_stalled_work",
                             "schedule": float(settings.HITL_STALLED_AFTER_SECONDS)},
    "label-studio-reconcile": {"task": "labeling.tasks.reconcile_all",
                               "schedule": float(settings.LABEL_STUDIO_RECONCILE_SECONDS)},
    "monitor-deployments": {"task": "workers.tasks.monitor_all",
                            "schedule": float(settings.HITL_MONITOR_INTERVAL_SECONDS)},
    "verify-trust-chains": {"task": "workers.tasks.trust_verify_all",
                            "schedule": float(settings.HITL_TRUST_FULL_CHECK_SECONDS)},
}

# Task policy: one decorator per kind of work. Both acknowledge a message only after the task
# ran (acks_late) and hand it back if the worker process dies (reject_on_worker_lost), so a
# killed worker loses nothing: the broker redelivers and the services' status checks make the
# repeat harmless. Transient failures (database or broker briefly unreachable) are retried with
# backoff; anything else is a bug or bad data, which the services record on the row.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (*TRANSIENT_DB_ERRORS, BrokerError, ConnectionError, Busy)
RETRY_POLICY = {"autoretry_for": TRANSIENT_ERRORS, "retry_backoff": 5, "retry_backoff_max": 300,
                "retry_jitter": True, "max_retries": 8}
CPU_TASK_OPTIONS = {"acks_late": True, "reject_on_worker_lost": True, "soft_time_limit": 600,
                    "time_limit": 660, **RETRY_POLICY}
GPU_TASK_OPTIONS = {**CPU_TASK_OPTIONS, "soft_time_limit": 3 * 3600, "time_limit": 3 * 3600 + 120}
cpu_task = app.task(**CPU_TASK_OPTIONS)
gpu_task = app.task(**GPU_TASK_OPTIONS)
# Alert notifications are also retried when a receiver (mail server, webhook) fails: 12 retries,
# the backoff doubling from 30 s up to an hour (with jitter).
NOTIFY_TASK_OPTIONS = {**CPU_TASK_OPTIONS, "soft_time_limit": 120, "time_limit": 150, "max_retries": 12,
                       "retry_backoff": 30, "retry_backoff_max": 3600}
