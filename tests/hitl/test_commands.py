from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from hitl.models import Deployment, ModelVersion, Project, RetrainingCycle, ReviewBatch
from hitl.services.projects import token_digest

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = StringIO()
    call_command("hitl", *args, stdout=out)
    return out.getvalue()


def test_operator_workflow(project, version) -> None:
    weights = Path(settings.MEDIA_ROOT) / version.artifacts.get(kind="weights").path
    assert "created project cats" in run("create-project", "--slug", "cats", "--labels", ",".join(project.labels))
    assert "(production)" in run("register-model", "--project", "cats", "--name", "v0", "--weights", str(weights), "--promote")
    out = run("create-deployment", "--project", "cats", "--name", "edge-1", "--environment", "edge")
    token = out.split("API token (shown once, store it now): ")[1].strip()
    deployment = Deployment.objects.get(token_digest=token_digest(token))
    assert deployment.model_version == ModelVersion.objects.get(project__slug="cats", name="v0")
    assert "queued review batch" in run("select-batch", "--project", "cats", "--size", "5")
    assert "queued cycle 1" in run("start-cycle", "--project", "cats", "--epochs", "2")
    assert ReviewBatch.objects.filter(project__slug="cats").count() == 1
    assert RetrainingCycle.objects.get(project__slug="cats").train_config["epochs"] == 2
    assert "model v0" in run("status", "--project", "cats")
    assert "chain intact" in run("verify-trust", "--project", "cats")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["create-project", "--slug", "Bad Slug", "--labels", "a,b"], "slug"),
        (["create-project", "--slug", "ok", "--labels", "a"], "at least two"),
        (["status", "--project", "nope"], "no project 'nope'"),
        (["register-model", "--project", "PROJECT", "--name", "x", "--weights", "/nonexistent"], "not a hitl checkpoint"),
        (["create-deployment", "--project", "PROJECT", "--name", "d", "--environment", "moon"], "environment"),
        (["start-cycle", "--project", "PROJECT", "--epochs", "-3"], "epochs"),
    ],
)
def test_bad_input_is_a_clear_error(project, version, args, message) -> None:
    args = [project.slug if a == "PROJECT" else a for a in args]
    with pytest.raises(CommandError, match=message):
        run(*args)
    assert Project.objects.count() == 1


def test_configure_project(project) -> None:
    out = run("configure-project", "--project", project.slug, "--strategy", "hybrid", "--mc-samples", "12",
              "--class-balance", "on", "--epochs", "7")
    project.refresh_from_db()
    assert (project.selection_strategy, project.mc_samples, project.class_balance) == ("hybrid", 12, True)
    assert project.train_config["epochs"] == 7 and "selection_strategy=hybrid" in out
    with pytest.raises(CommandError, match="mc_samples: must be between 2 and 200"):
        run("configure-project", "--project", project.slug, "--mc-samples", "1")


def test_registering_an_existing_name_leaves_that_model_alone(project, version, tmp_path) -> None:
    artifact = version.artifacts.get(kind="weights")
    weights = Path(settings.MEDIA_ROOT) / artifact.path
    before = weights.read_bytes()
    with pytest.raises(CommandError, match="already exists"):
        run("register-model", "--project", project.slug, "--name", "v1", "--weights", str(weights))
    with pytest.raises(CommandError, match="lowercase letters"):
        run("register-model", "--project", project.slug, "--name", "../../escape", "--weights", str(weights))
    assert weights.read_bytes() == before


def test_rotating_a_deployment_token(deployment_and_token, project, client) -> None:
    deployment, old = deployment_and_token
    out = run("rotate-token", "--project", project.slug, "--name", deployment.name)
    new = out.split("store it now): ")[1].strip()
    assert new != old
    ok = client.post("/api/v1/predictions/", "{}", content_type="application/json", HTTP_AUTHORIZATION=f"Deployment {new}")
    refused = client.post("/api/v1/predictions/", "{}", content_type="application/json", HTTP_AUTHORIZATION=f"Deployment {old}")
    assert ok.status_code == 400 and refused.status_code == 401
