"""The loop through a real Celery worker process, Redis and PostgreSQL (no eager mode)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hitl.models import CycleStatus, ModelVersion, Prediction, RetrainingCycle, ReviewBatch
from hitl.services.ingestion import items_register
from tests.conftest import probabilities

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


@pytest.fixture()
def labeled_project(project, labeled_items):
    labeled_items(range(150), folder="train")
    project.gate_rules = {"first_model_needs_golden_set": False}
    project.save()
    return project


def test_ingested_predictions_are_scored_by_the_worker(deployment_client, write_images, wait_until) -> None:
    paths = write_images(range(50))
    response = deployment_client.post("/api/v1/predictions/", json.dumps({"predictions": [
        {"image_path": p, "probabilities": q} for p, q in zip(paths, probabilities(np.random.default_rng(1), 50))
    ]}), content_type="application/json")
    assert response.status_code == 201
    wait_until(lambda: not Prediction.objects.filter(scored_at__isnull=True).exists(), "scoring")
    assert Prediction.objects.get(item_id=response.json()["item_ids"][0]).scores.count() == 3


def test_cycle_and_selection_run_in_the_worker(labeled_project, operator_client, write_images, wait_until) -> None:
    items_register(project=labeled_project, image_paths=write_images(range(150, 190), folder="pool"))
    response = operator_client.post(f"/api/v1/projects/{labeled_project.slug}/cycles/", {}, format="json")
    assert response.status_code == 202, response.json()
    cycle_id = response.json()["id"]
    wait_until(lambda: RetrainingCycle.objects.get(pk=cycle_id).is_finished, "the cycle")
    detail = operator_client.get(f"/api/v1/cycles/{cycle_id}/").json()
    assert detail["status"] == "succeeded" and detail["decision"] == "promoted", detail
    assert detail["snapshots"][0]["n_items"] > 0
    v1 = ModelVersion.objects.get(project=labeled_project, name="v1")
    # Promotion sends predict_items: hitl's own model ranks the 40 unlabeled pool items.
    wait_until(lambda: Prediction.objects.filter(model_version=v1, scored_at__isnull=False).count() == 40,
               "pool predictions of v1")
    response = operator_client.post(f"/api/v1/projects/{labeled_project.slug}/review-batches/",
                                    {"size": 10, "audit_fraction": 0.2}, format="json")
    assert response.status_code == 202
    batch_id = response.json()["id"]
    wait_until(lambda: ReviewBatch.objects.get(pk=batch_id).status != "pending", "selection")
    queue = operator_client.get(f"/api/v1/projects/{labeled_project.slug}/review-queue/").json()["results"]
    assert len(queue) == 10 and {t["reason"] for t in queue} == {"strategy", "audit"}


def test_a_killed_worker_loses_no_cycle(labeled_project, operator_client, celery_worker, wait_until) -> None:
    """SIGKILL the pool mid-training: the broker redelivers (acks_late, reject_on_worker_lost),
    PostgreSQL frees the dead worker's advisory lock, and a second attempt finishes the cycle."""
    response = operator_client.post(f"/api/v1/projects/{labeled_project.slug}/cycles/",
                                    {"train_config": {"epochs": 150}}, format="json")
    cycle_id = response.json()["id"]
    wait_until(lambda: RetrainingCycle.objects.get(pk=cycle_id).progress.get("epoch", 0) >= 2, "training to start")
    celery_worker.kill_pool()
    wait_until(lambda: RetrainingCycle.objects.get(pk=cycle_id).is_finished, "the cycle after the crash", timeout=600)
    cycle = RetrainingCycle.objects.get(pk=cycle_id)
    assert cycle.status == CycleStatus.SUCCEEDED, cycle.error
    assert cycle.attempts == 2
    assert ModelVersion.objects.filter(project=labeled_project).count() == 1


def test_cancelling_stops_training(labeled_project, operator_client, wait_until) -> None:
    response = operator_client.post(f"/api/v1/projects/{labeled_project.slug}/cycles/",
                                    {"train_config": {"epochs": 400}}, format="json")
    cycle_id = response.json()["id"]
    wait_until(lambda: RetrainingCycle.objects.get(pk=cycle_id).progress.get("epoch", 0) >= 1, "training to start")
    cancel = operator_client.post(f"/api/v1/cycles/{cycle_id}/cancel/")
    assert cancel.status_code == 200 and cancel.json()["status"] == "cancelled"
    # The worker notices at the next epoch and stops; nothing is recorded as a candidate.
    wait_until(lambda: _stopped(cycle_id), "training to stop", timeout=60)
    cycle = RetrainingCycle.objects.get(pk=cycle_id)
    assert cycle.progress["epoch"] < 400 and cycle.candidate_version is None
    assert not ModelVersion.objects.filter(project=labeled_project).exists()


def _stopped(cycle_id: int) -> bool:
    before = RetrainingCycle.objects.get(pk=cycle_id).progress.get("epoch")
    import time

    time.sleep(1.0)
    return RetrainingCycle.objects.get(pk=cycle_id).progress.get("epoch") == before
