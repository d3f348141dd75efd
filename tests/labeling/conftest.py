"""Fixtures for the labeling tests: review tasks and pushed-task rows without a server, and a
project connected to the real Label Studio server of tests/conftest.py (`label_studio`)."""

from __future__ import annotations

import socket

import numpy as np
import pytest
from label_studio_sdk import LabelStudio

from hitl.services.ingestion import predictions_ingest
from hitl.services.selection import review_batch_request
from labeling.models import LabelStudioProject, LabelStudioTask, PushState
from labeling.services.provisioning import ls_project_provision
from tests.conftest import LABEL_STUDIO_REVIEWER as REVIEWER  # noqa: F401 - imported from here by tests
from workers.pipelines.selection import review_batch_select


@pytest.fixture()
def review_tasks(project, ingest):
    ingest(range(10))
    batch = review_batch_request(project=project, requested_by="t", size=6, audit_fraction=0)
    review_batch_select(batch_id=batch.id)
    return list(batch.tasks.select_related("prediction", "item").order_by("rank"))


@pytest.fixture()
def pushed(project, review_tasks):
    """A link and pushed-task rows as if `ls_push` had run (Label Studio task ids 101...)."""
    link = LabelStudioProject.objects.create(project=project, ls_project_id=7)
    rows = [LabelStudioTask.objects.create(ls_project=link, review_task=t, ls_task_id=101 + i, state=PushState.PUSHED)
            for i, t in enumerate(review_tasks)]
    return link, rows


# --- a real Label Studio server: the `label_studio` fixture is in tests/conftest.py (one server
# for this package and the worker-kill tests in tests/reliability) -----------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def connected(label_studio, live_server, settings, project, deployment_and_token, write_images, quiet_worker):
    """A project with 12 items, an 8-task review batch and a provisioned Label Studio project."""
    settings.LABEL_STUDIO_URL, settings.LABEL_STUDIO_API_KEY = label_studio.url, label_studio.token
    settings.HITL_PUBLIC_URL = live_server.url
    paths = write_images(range(12))
    probs = np.random.default_rng(0).dirichlet(np.ones(10) * 0.5, size=12)
    predictions_ingest(deployment=deployment_and_token[0], payload={"predictions": [
        {"image_path": p, "probabilities": q.tolist()} for p, q in zip(paths, probs)]})
    batch = review_batch_request(project=project, requested_by="t", size=8, audit_fraction=0.25)
    review_batch_select(batch_id=batch.id)
    link = ls_project_provision(project_id=project.id).link
    return project, link


@pytest.fixture()
def reviewer_sdk(label_studio) -> LabelStudio:
    return LabelStudio(base_url=label_studio.url, api_key=label_studio.token)
