"""Training options have upper bounds and an exact device syntax, initial weights lie under the
models folder: one check (hitl.mlspec, projects.validate_project_settings) for API, CLI and admin,
and a worker checks the weights file again when it reads it."""

from __future__ import annotations

import os
from io import StringIO
from pathlib import Path

import pytest
import torch
from django.core.management import CommandError, call_command
from django.test import override_settings
from django.urls import reverse
from safetensors.torch import save_file

from hitl.errors import InvalidInput
from hitl.mlspec import TRAIN_OPTIONS, train_config_clean
from hitl.models import CycleStatus, Project, RetrainingCycle
from hitl.services.cycles import cycle_request
from hitl.services.projects import project_create, project_update
from workers.ml.architectures import build_model
from workers.pipelines.cycles import cycle_train

pytestmark = pytest.mark.django_db

TOO_MUCH = [("epochs", 1001), ("batch_size", 4097), ("learning_rate", 1.5), ("weight_decay", 2.0),
            ("label_smoothing", 0.6), ("seed", 2**32), ("seed", -1), ("epochs", 0), ("learning_rate", 0),
            ("learning_rate", float("nan")), ("weight_decay", float("inf")), ("epochs", 2.5), ("epochs", True),
            ("augment", 1), ("device", "gpu"), ("device", "cuda:64"), ("device", "cuda:01"), ("device", 0)]


@pytest.mark.parametrize(("option", "value"), TOO_MUCH)
def test_each_bad_option_is_named(option: str, value: object) -> None:
    with pytest.raises(InvalidInput) as caught:
        train_config_clean({"epochs": 3, option: value})
    assert [e.field for e in caught.value.errors] == [f"train_config.{option}"]


def test_the_bounds_themselves_are_accepted() -> None:
    top = {name: o.high for name, o in TRAIN_OPTIONS.items() if o.high is not None}
    cleaned = train_config_clean({**top, "device": "cuda:63", "augment": True})
    assert {name: cleaned[name] for name in top} == top and cleaned["device"] == "cuda:63"
    with pytest.raises(InvalidInput, match="unknown training option"):
        train_config_clean({"speed": 11})


def test_api_refuses_bad_options_with_the_field_and_writes_nothing(operator_client, project_admin_client,
                                                                   project) -> None:
    cycles = f"/api/v1/projects/{project.slug}/cycles/"
    for option, value in [("epochs", 100_000), ("device", "cuda:x"), ("batch_size", 10**9)]:
        response = operator_client.post(cycles, {"train_config": {option: value}}, format="json")
        assert response.status_code == 400, response.content
        assert response.json()["errors"][0]["field"] == f"train_config.{option}"
    assert not RetrainingCycle.objects.filter(project=project).exists()
    patch = project_admin_client.patch(f"/api/v1/projects/{project.slug}/",
                                  {"train_config": {"device": "cuda1"}, "batch_size": 50}, format="json")
    assert patch.status_code == 400
    assert [e["field"] for e in patch.json()["errors"]] == ["train_config.device"]
    project.refresh_from_db()
    assert project.train_config == {"epochs": 2} and project.batch_size == 20


def test_cli_refuses_bad_epochs(project) -> None:
    with pytest.raises(CommandError, match="train_config.epochs: must be between 1 and 1000"):
        call_command("hitl", "start-cycle", "--project", project.slug, "--epochs", "5000", stdout=StringIO())
    with pytest.raises(CommandError, match="train_config.epochs"):
        call_command("hitl", "start-cycle", "--project", project.slug, "--epochs", "0", stdout=StringIO())
    with pytest.raises(CommandError, match="train_config.epochs"):
        call_command("hitl", "configure-project", "--project", project.slug, "--epochs", "1001", stdout=StringIO())
    assert not RetrainingCycle.objects.filter(project=project).exists()


def test_admin_refuses_bad_options(admin_client, project) -> None:
    url = reverse("admin:hitl_project_change", args=[project.id])
    form = admin_client.get(url).context["adminform"].form
    data = {name: "" if form[name].value() is None else form[name].value() for name in form.fields}
    refused = admin_client.post(url, {**data, "train_config": '{"device": "tpu", "epochs": 9999}'})
    assert refused.status_code == 200
    errors = refused.context["adminform"].form.errors["train_config"]
    assert any("train_config.device" in e for e in errors) and any("train_config.epochs" in e for e in errors)
    project.refresh_from_db()
    assert project.train_config == {"epochs": 2}


@pytest.fixture()
def models_root(tmp_path: Path):
    root = tmp_path / "models"
    root.mkdir()
    with override_settings(MODELS_ROOT=root):
        yield root


def weights_file(path: Path) -> Path:
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in build_model("small_cnn", 10).state_dict().items()}, str(path))
    return path


def test_initial_weights_must_be_a_regular_file_under_the_models_folder(models_root: Path, tmp_path: Path,
                                                                         project) -> None:
    inside = weights_file(models_root / "start.safetensors")
    outside = weights_file(tmp_path / "outside.safetensors")
    (models_root / "escape.safetensors").symlink_to(outside)
    (models_root / "folder").mkdir()
    os.mkfifo(models_root / "pipe")
    bad = {str(outside): "outside the models folder", "escape.safetensors": "outside the models folder",
           "../outside.safetensors": "outside the models folder", "folder": "not a regular file",
           "pipe": "not a regular file", "missing.pt": "no file at", "/etc/passwd": "outside the models folder",
           "a\x00b": "at most 500", "x" * 501: "at most 500"}
    for value, message in bad.items():
        with pytest.raises(InvalidInput, match=message) as caught:
            project_update(project_id=project.id, changes={"initial_weights": value})
        assert caught.value.errors[0].field == "initial_weights"
    project.refresh_from_db()
    assert project.initial_weights == ""
    for value in ("start.safetensors", str(inside)):  # relative to the folder, or absolute
        assert project_update(project_id=project.id, changes={"initial_weights": value}).initial_weights == value
    created = project_create(slug="from-weights", name="", labels=["a", "b"], initial_weights="start.safetensors")
    assert created.initial_weights == "start.safetensors"
    with pytest.raises(InvalidInput, match="outside the models folder"):
        project_create(slug="escapes", name="", labels=["a", "b"], initial_weights=str(outside))
    assert not Project.objects.filter(slug="escapes").exists()


def test_api_refuses_initial_weights_outside_the_models_folder(project_admin_client, project, models_root,
                                                               tmp_path: Path) -> None:
    outside = weights_file(tmp_path / "outside.safetensors")
    response = project_admin_client.patch(f"/api/v1/projects/{project.slug}/", {"initial_weights": str(outside)},
                                     format="json")
    assert response.status_code == 400 and response.json()["errors"][0]["field"] == "initial_weights"


def test_the_worker_checks_initial_weights_again_when_it_reads_them(models_root: Path, tmp_path: Path, project,
                                                                     labeled_items) -> None:
    labeled_items(range(30))
    weights_file(models_root / "start.safetensors")
    project_update(project_id=project.id, changes={"initial_weights": "start.safetensors",
                                                   "train_config": {"epochs": 1}})
    (models_root / "start.safetensors").unlink()  # swapped for a link out of the folder after the check
    (models_root / "start.safetensors").symlink_to(weights_file(tmp_path / "elsewhere.safetensors"))
    cycle = cycle_request(project=project, requested_by="test")
    cycle_train(cycle_id=cycle.id)
    cycle.refresh_from_db()
    assert cycle.status == CycleStatus.FAILED and "outside the models folder" in cycle.error
    (models_root / "start.safetensors").unlink()
    weights_file(models_root / "start.safetensors")
    cycle = cycle_request(project=project, requested_by="test")
    cycle_train(cycle_id=cycle.id)
    cycle.refresh_from_db()
    assert cycle.status == CycleStatus.EVALUATING, cycle.error
