"""Temperature scaling in a cycle, stored with the version and its artifacts, applied by
hitl's inference; and a cycle's training resumed after its attempt died (inline; the real
worker kill is tests/workers/test_resume_worker.py)."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from hitl.media import media_path
from hitl.models import (
    CycleStatus,
    Label,
    LabelSource,
    ModelVersion,
    Prediction,
    RetrainingCycle,
    Split,
    TrustEvent,
)
from hitl.selectors import model_weights_file
from hitl.services.cycles import cycle_request, labeled_set
from hitl.services.ingestion import items_register
from hitl.services.labels import label_submit
from tests.conftest import train_until_killed
from workers.ml.calibration import calibrate
from workers.ml.checkpoint import ONNX_FILE, read_meta
from workers.ml.images import normalize
from workers.ml.inference import model_outputs, predict_logits, predict_proba
from workers.pipelines.cycles import cycle_train, resume_state_path
from workers.pipelines.inference import model_predict_items
from workers.pipelines.versions import item_images, load_version

pytestmark = pytest.mark.django_db


@pytest.fixture()
def labeled(labeled_items) -> list[int]:
    return labeled_items(range(200))


def _train_candidate(project, **config) -> ModelVersion:
    cycle = cycle_request(
        project=project, requested_by="test", train_config={"epochs": 3, **config}
    )
    cycle_train(cycle_id=cycle.id)
    cycle.refresh_from_db()
    assert cycle.status == CycleStatus.EVALUATING, cycle.error
    return cycle.candidate_version


def _holdout_logits(project, version: ModelVersion) -> tuple[np.ndarray, np.ndarray]:
    model, meta = load_version(version)
    data = labeled_set(project, Split.HOLDOUT)
    logits = predict_logits(
        model, item_images(data.image_paths, meta.input_spec), meta.input_spec
    ).numpy()
    return logits, np.array(data.targets)


def test_a_candidate_gets_a_temperature_fitted_on_held_out_labels(
    project, labeled, settings, reviewer_client
) -> None:
    settings.HITL_MIN_CALIBRATION_LABELS = 10
    holdout = labeled_set(project, Split.HOLDOUT)
    assert len(holdout) >= 10
    version = _train_candidate(project)
    calibration = version.calibration
    assert calibration["fitted"] is True and calibration["n"] == len(holdout)
    assert (
        calibration["labels_sha256"] == holdout.digest
    )  # the held-out labels, not the training ones
    # the same fit, redone here from the stored weights on the held-out labels, gives the same T
    logits, targets = _holdout_logits(project, version)
    expected = calibrate(logits, targets)
    assert (
        version.temperature == pytest.approx(expected.temperature, rel=1e-6)
        and version.temperature != 1.0
    )
    train = labeled_set(project, Split.TRAIN)
    model, meta = load_version(version)
    train_logits = predict_logits(
        model, item_images(train.image_paths, meta.input_spec), meta.input_spec
    ).numpy()
    assert calibrate(train_logits, np.array(train.targets)).temperature != pytest.approx(
        version.temperature
    )
    # what a user reads: NLL, ECE and the reliability bins before and after
    assert calibration["nll_after"] <= calibration["nll_before"]
    assert calibration["ece_before"] == pytest.approx(expected.ece_before)
    assert calibration["ece_after"] == pytest.approx(expected.ece_after)
    for key in ("reliability_before", "reliability_after"):
        assert sum(b["count"] for b in calibration[key]) == len(holdout), key
    # stored with the model: checkpoint metadata, ONNX graph, trust history
    path, _ = model_weights_file(version)
    assert read_meta(path).temperature == version.temperature
    event = TrustEvent.objects.filter(project=project, kind="model_trained").latest("sequence")
    assert event.payload["temperature"] == version.temperature
    assert event.payload["calibration_labels"] == len(holdout)
    listed = reviewer_client.get(f"/api/v1/projects/{project.slug}/model-versions/").json()[
        "results"
    ]
    shown = next(v for v in listed if v["name"] == version.name)
    assert shown["temperature"] == version.temperature
    assert shown["calibration"]["ece_after"] == calibration["ece_after"]


def test_the_onnx_graph_divides_by_the_temperature(project, labeled, settings) -> None:
    settings.HITL_MIN_CALIBRATION_LABELS = 10
    version = _train_candidate(project)
    model, meta = load_version(version)
    lazy = item_images(labeled_set(project, Split.HOLDOUT).image_paths[:16], meta.input_spec)
    images = torch.stack([lazy[i][0] for i in range(len(lazy))])  # decoded uint8 [n, c, h, w]
    raw = predict_logits(model, images, meta.input_spec).numpy()
    session = ort.InferenceSession(str(media_path(version.artifacts.get(kind="onnx").path)))
    assert version.artifacts.get(kind="onnx").path.endswith(ONNX_FILE)
    (onnx_logits,) = session.run(None, {"image": normalize(images, meta.input_spec).numpy()})
    np.testing.assert_allclose(onnx_logits, raw / version.temperature, rtol=1e-4, atol=1e-5)
    assert not np.allclose(onnx_logits, raw, rtol=1e-3)
    # the graph says so itself: labels, input spec and temperature in its metadata
    carried = json.loads(session.get_modelmeta().custom_metadata_map["hitl"])
    assert carried["temperature"] == version.temperature and carried["labels"] == version.labels


def test_too_few_held_out_labels_keep_temperature_one_and_say_why(
    project, labeled, settings
) -> None:
    holdout = labeled_set(project, Split.HOLDOUT)
    settings.HITL_MIN_CALIBRATION_LABELS = len(holdout) + 1
    version = _train_candidate(project)
    assert version.temperature == 1.0 and version.calibration["fitted"] is False
    assert f"only {len(holdout)} held-out human labels" in version.calibration["reason"]
    assert read_meta(model_weights_file(version)[0]).temperature == 1.0


def test_hitl_inference_applies_the_version_temperature(project, version, write_images) -> None:
    ModelVersion.objects.filter(pk=version.pk).update(temperature=2.5)
    version.refresh_from_db()
    ids = items_register(project=project, image_paths=write_images(range(300, 320), folder="pool"))
    assert model_predict_items(model_version_id=version.id) == len(ids)
    model, meta = load_version(version)
    stored = {
        p.item_id: p.probability_array for p in Prediction.objects.filter(model_version=version)
    }
    paths = dict(project.items.values_list("id", "image"))
    images = item_images([paths[i] for i in ids], meta.input_spec)
    expected = predict_proba(model, images, meta.input_spec, temperature=2.5)
    untempered = predict_proba(model, images, meta.input_spec)
    got = np.stack([stored[i] for i in ids])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert not np.allclose(got, untempered, atol=1e-4)


def test_selection_outputs_apply_the_temperature(project, version, write_images) -> None:
    """What model-based selection (BALD, committee, BADGE) ranks: probabilities and MC samples
    of the tempered logits."""
    model, meta = load_version(version)
    ids = items_register(project=project, image_paths=write_images(range(40, 60), folder="sel"))
    images = item_images(
        list(project.items.filter(id__in=ids).values_list("image", flat=True)), meta.input_spec
    )
    logits = predict_logits(model, images, meta.input_spec)
    out = model_outputs(model, images, meta.input_spec, mc_samples=3, temperature=3.0)
    np.testing.assert_allclose(out.probs, torch.softmax(logits / 3.0, dim=1).numpy(), atol=1e-6)
    plain = model_outputs(model, images, meta.input_spec, mc_samples=3)
    assert out.mc_probs.max(axis=1).mean() < plain.mc_probs.max(axis=1).mean()  # T > 1 softens
    with pytest.raises(ValueError, match="temperature"):
        model_outputs(model, images, meta.input_spec, temperature=0.0)


def test_a_redelivered_attempt_resumes_after_the_last_saved_epoch(
    project, labeled, monkeypatch
) -> None:
    cycle = cycle_request(project=project, requested_by="test", train_config={"epochs": 5})
    train_until_killed(monkeypatch, cycle.id, after_epoch=3)
    state = resume_state_path(project.slug, cycle.number)
    assert state.exists()
    cycle_train(cycle_id=cycle.id)
    cycle.refresh_from_db()
    assert cycle.status == CycleStatus.EVALUATING and cycle.attempts == 2
    metrics = read_meta(model_weights_file(cycle.candidate_version)[0]).metrics
    assert metrics["epoch_attempts"] == [1, 1, 1, 2, 2]  # epochs 1-3 ran once, in the first attempt
    assert metrics["resumed_from_epoch"] == 3 and metrics["epochs_run"] == 5
    assert not state.parent.exists()  # the training state goes once the candidate is recorded


def test_a_changed_label_manifest_starts_training_over(
    project, labeled, monkeypatch, write_images
) -> None:
    cycle = cycle_request(project=project, requested_by="test", train_config={"epochs": 4})
    train_until_killed(monkeypatch, cycle.id, after_epoch=2)
    # a reviewer labels one more training item while the worker is down
    new_items = items_register(
        project=project, image_paths=write_images(range(500, 520), folder="late")
    )
    item = project.items.filter(id__in=new_items, split=Split.TRAIN).first()
    label = label_submit(
        item_id=item.id, value=project.labels[0], source=LabelSource.IMPORT, reviewer_name="late"
    )
    cycle_train(cycle_id=cycle.id)
    cycle = RetrainingCycle.objects.get(pk=cycle.id)
    metrics = read_meta(model_weights_file(cycle.candidate_version)[0]).metrics
    assert metrics["epoch_attempts"] == [2, 2, 2, 2] and metrics["resumed_from_epoch"] == 0
    trained_on = set(cycle.candidate_version.training_labels.values_list("id", flat=True))
    assert label.id in trained_on and trained_on == set(labeled_set(project, Split.TRAIN).label_ids)
    assert Label.objects.filter(pk=label.id).exists()
