"""Retraining cycles run inline (the worker integration tests run them through Celery)."""

from __future__ import annotations

import time

import psycopg
import pytest
from django.conf import settings
from django.db import connection

from hitl.errors import Conflict, InvalidInput
from hitl.locks import _key
from hitl.models import (
    CycleDecision,
    CycleStatus,
    EvaluationSnapshot,
    Item,
    Label,
    LabelStatus,
    ModelStage,
    ModelVersion,
    Split,
    TrustEvent,
)
from hitl.services.cycles import cycle_cancel, cycle_request
from hitl.services.trust import trust_verify
from workers.pipelines.cycles import cycle_evaluate, cycle_train

pytestmark = pytest.mark.django_db


@pytest.fixture()
def labeled(labeled_items) -> list[int]:
    """150 real Fashion-MNIST items labeled with their ground truth."""
    return labeled_items(range(150))


def run_cycle(project, **config):
    cycle = cycle_request(project=project, requested_by="test", train_config=config or None)
    cycle_train(cycle_id=cycle.id)
    cycle_evaluate(cycle_id=cycle.id)
    cycle.refresh_from_db()
    return cycle


def test_first_cycle_trains_and_promotes_v1(project, labeled) -> None:
    project.gate_rules = {"first_model_needs_golden_set": False}
    project.save()
    cycle = run_cycle(project)
    assert cycle.status == CycleStatus.SUCCEEDED and cycle.decision == CycleDecision.PROMOTED
    v1 = cycle.candidate_version
    assert v1.name == "v1" and v1.stage == ModelStage.PRODUCTION and v1.parent is None
    train_labels = Label.objects.filter(item__split=Split.TRAIN, status=LabelStatus.CURRENT)
    assert set(v1.training_labels.values_list("id", flat=True)) == set(train_labels.values_list("id", flat=True))
    snapshot = EvaluationSnapshot.objects.get(cycle=cycle)
    holdout = Label.objects.filter(item__split=Split.HOLDOUT, status=LabelStatus.CURRENT)
    assert snapshot.label_ids == sorted(holdout.values_list("id", flat=True))
    assert snapshot.n_items == holdout.count() > 10 and snapshot.eval_set == "hard_cases"
    assert snapshot.intervals["accuracy"]["lower"] <= snapshot.accuracy <= snapshot.intervals["accuracy"]["upper"]
    assert set(snapshot.metrics) >= {"accuracy", "per_class", "confusion_matrix", "ece", "macro_f1"}
    assert {a.kind for a in v1.artifacts.all()} == {"weights", "onnx"}
    assert cycle.attempts == 1 and cycle.progress["stage"] == "done"


def test_second_cycle_compares_candidate_and_production_on_the_same_labels(project, labeled) -> None:
    project.gate_rules = {"first_model_needs_golden_set": False}
    project.save()
    run_cycle(project)
    cycle = run_cycle(project, epochs=3)
    v1 = ModelVersion.objects.get(project=project, name="v1")
    assert cycle.base_version == v1 and cycle.candidate_version.parent == v1
    snapshots = {s.role: s for s in cycle.snapshots.all()}
    assert set(snapshots) == {"candidate", "production"}
    assert snapshots["candidate"].label_ids == snapshots["production"].label_ids
    assert snapshots["candidate"].eval_set_sha256 == snapshots["production"].eval_set_sha256
    assert {s.eval_set for s in snapshots.values()} == {"hard_cases"}
    # no golden set: the hard cases are reported, but only the golden set decides
    assert cycle.decision == CycleDecision.REJECTED and "no labeled golden-set items" in cycle.decision_reason
    v1.refresh_from_db()
    assert v1.stage == ModelStage.PRODUCTION
    check = trust_verify(project_id=project.id)
    assert check.ok and check.events >= 6


def test_running_train_and_evaluate_twice_is_harmless(project, labeled) -> None:
    cycle = cycle_request(project=project, requested_by="test")
    cycle_train(cycle_id=cycle.id)
    cycle_train(cycle_id=cycle.id)
    assert ModelVersion.objects.filter(project=project).count() == 1
    cycle_evaluate(cycle_id=cycle.id)
    events = TrustEvent.objects.count()
    cycle_evaluate(cycle_id=cycle.id)
    cycle_train(cycle_id=cycle.id)
    assert EvaluationSnapshot.objects.filter(cycle=cycle).count() == 1
    assert TrustEvent.objects.count() == events
    cycle.refresh_from_db()
    assert cycle.status == CycleStatus.SUCCEEDED and cycle.attempts == 1


def test_a_cycle_another_worker_holds_is_left_alone(project, labeled) -> None:
    cycle = cycle_request(project=project, requested_by="test")
    db = settings.DATABASES["default"]
    with psycopg.connect(host=db["HOST"], port=db["PORT"], user=db["USER"], dbname=connection.settings_dict["NAME"]) as other:
        other.execute("SELECT pg_advisory_lock(%s)", [_key(f"cycle:{cycle.id}")])
        cycle_train(cycle_id=cycle.id)
        cycle.refresh_from_db()
        assert cycle.status == CycleStatus.PENDING and cycle.attempts == 0
        other_pid = other.info.backend_pid
    with connection.cursor() as cursor:  # its backend frees the lock as it exits, just after the close
        for _ in range(100):
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [other_pid])
            if cursor.fetchone()[0] == 0:
                break
            time.sleep(0.05)
    cycle_train(cycle_id=cycle.id)  # the lock went with the other connection
    cycle.refresh_from_db()
    assert cycle.status == CycleStatus.EVALUATING


def test_one_active_cycle_per_project(project, labeled) -> None:
    first = cycle_request(project=project, requested_by="test")
    with pytest.raises(Conflict, match="cycle 1 is still pending"):
        cycle_request(project=project, requested_by="test")
    cycle_cancel(cycle_id=first.id, actor="otto")
    first.refresh_from_db()
    assert first.status == CycleStatus.CANCELLED and "otto" in first.decision_reason
    with pytest.raises(Conflict, match="already cancelled"):
        cycle_cancel(cycle_id=first.id, actor="otto")
    cycle_train(cycle_id=first.id)
    first.refresh_from_db()
    assert first.status == CycleStatus.CANCELLED and first.candidate_version is None
    assert cycle_request(project=project, requested_by="test").number == 2


def test_a_cycle_without_training_labels_fails_clearly(project) -> None:
    cycle = cycle_request(project=project, requested_by="test")
    cycle_train(cycle_id=cycle.id)
    cycle.refresh_from_db()
    assert cycle.status == CycleStatus.FAILED and "no human labels" in cycle.error


def test_a_training_error_fails_the_cycle_with_the_reason(project, labeled, media_root) -> None:
    missing = Item.objects.filter(project=project, split=Split.TRAIN).first()
    (media_root / missing.image).unlink()
    cycle = cycle_request(project=project, requested_by="test")
    cycle_train(cycle_id=cycle.id)
    cycle.refresh_from_db()
    assert cycle.status == CycleStatus.FAILED and "No such file" in cycle.error
    assert not ModelVersion.objects.filter(project=project).exists()


def test_bad_training_options_are_refused(project) -> None:
    with pytest.raises(InvalidInput, match="train_config.epochs: must be between 1 and 1000"):
        cycle_request(project=project, requested_by="test", train_config={"epochs": 0})
    with pytest.raises(InvalidInput, match="train_config: must be an object of training options"):
        cycle_request(project=project, requested_by="test", train_config=[["epochs", 3]])
    with pytest.raises(InvalidInput, match="train_config.speed: unknown training option"):
        cycle_request(project=project, requested_by="test", train_config={"speed": 11})


def test_tampering_with_the_trust_history_is_detected(project, labeled) -> None:
    run_cycle(project)
    assert trust_verify(project_id=project.id).ok
    event = TrustEvent.objects.filter(project=project, kind="model_trained").get()
    event.payload["training_labels"] = 10_000
    event.save()
    check = trust_verify(project_id=project.id)
    assert not check.ok and check.first_bad_sequence == event.sequence and "does not match" in check.problem
    assert check.head_hash is None  # no head to vouch for


@pytest.mark.django_db(transaction=True)
def test_retrain_in_parallel_trains_once(project, labeled_items) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connections

    labeled_items(range(60))
    cycle = cycle_request(project=project, requested_by="test")

    def train() -> None:
        try:
            cycle_train(cycle_id=cycle.id)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda _: train(), range(3)))
    cycle.refresh_from_db()
    assert cycle.status == CycleStatus.EVALUATING and cycle.attempts == 1
    assert ModelVersion.objects.filter(project=project).count() == 1
