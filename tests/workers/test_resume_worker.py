"""A real Celery worker killed mid-training: the redelivered task resumes from the last epoch."""

from __future__ import annotations

import pytest

from hitl.models import CycleStatus, RetrainingCycle, Split
from hitl.selectors import model_weights_file
from hitl.services.cycles import labeled_set
from workers.ml.checkpoint import load_training_state, read_meta
from workers.pipelines.cycles import resume_state_path

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]
EPOCHS = 40


def test_a_killed_worker_resumes_training_from_its_last_epoch(
    project,
    labeled_items,
    operator_client,
    celery_worker,
    wait_until,
) -> None:
    labeled_items(range(150), folder="train")
    manifest = labeled_set(project, Split.TRAIN)
    response = operator_client.post(
        f"/api/v1/projects/{project.slug}/cycles/",
        {"train_config": {"epochs": EPOCHS}},
        format="json",
    )
    assert response.status_code == 202, response.json()
    cycle = RetrainingCycle.objects.get(pk=response.json()["id"])
    state_path = resume_state_path(project.slug, cycle.number)

    def epoch() -> int:
        return RetrainingCycle.objects.get(pk=cycle.id).progress.get("epoch", 0)

    wait_until(lambda: epoch() >= 3, "three epochs")
    celery_worker.kill_pool()
    saved = load_training_state(state_path)  # what the dead attempt left: its last whole epoch
    assert saved is not None and saved["epoch"] >= 3, "no training state survived the kill"
    assert saved["label_ids"] == manifest.label_ids
    killed_at = saved["epoch_attempts"].count(1)  # the new attempt may have saved an epoch already
    # the redelivered task's attempt reports that it resumed, and goes on from there
    wait_until(
        lambda: (
            RetrainingCycle.objects.get(pk=cycle.id).progress.get("attempt") == 2
            or RetrainingCycle.objects.get(pk=cycle.id).candidate_version_id is not None
        ),
        "the second attempt",
        timeout=180,
    )
    wait_until(
        lambda: RetrainingCycle.objects.get(pk=cycle.id).is_finished,
        "the cycle after the kill",
        timeout=240,
    )
    cycle.refresh_from_db()
    assert cycle.status == CycleStatus.SUCCEEDED, cycle.error
    assert cycle.attempts == 2
    metrics = read_meta(model_weights_file(cycle.candidate_version)[0]).metrics
    # every epoch ran exactly once: up to the kill in attempt 1, the rest in attempt 2
    assert metrics["resumed_from_epoch"] >= killed_at
    resumed_from = metrics["resumed_from_epoch"]
    assert metrics["epoch_attempts"] == [1] * resumed_from + [2] * (EPOCHS - resumed_from)
    assert metrics["epochs_run"] == EPOCHS
    # and on the same label manifest the cycle started with
    trained_on = sorted(cycle.candidate_version.training_labels.values_list("id", flat=True))
    assert trained_on == manifest.label_ids
    assert not state_path.parent.exists()
