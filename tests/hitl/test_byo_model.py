"""Bring your own model: a torchvision state_dict registered with its labels and preprocessing,
loaded strictly and checked by a forward pass; a deployment downloads its artifacts, content-hashed."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from django.core.management import call_command
from django.core.management.base import CommandError
from safetensors.torch import save_file
from torchvision import models as tv_models

from hitl.media import media_path
from hitl.models import Environment, ModelVersion
from hitl.services.projects import deployment_create
from tests.conftest import LABELS
from workers.ml.architectures import InputSpec
from workers.ml.checkpoint import load_checkpoint
from workers.ml.data import TensorImages
from workers.ml.images import normalize
from workers.ml.inference import predict_logits

pytestmark = pytest.mark.django_db
SPEC = InputSpec(3, 64, (0.4, 0.45, 0.5), (0.2, 0.25, 0.3))


@pytest.fixture(scope="module")
def foreign_resnet() -> torch.nn.Module:
    """A torchvision resnet18 'fine-tuned elsewhere' (random weights, BatchNorm statistics moved)."""
    torch.manual_seed(11)
    model = tv_models.resnet18(num_classes=len(LABELS))
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 64, 64))  # running statistics away from their defaults
    return model.eval()


def _register(project, weights: Path, *extra: str) -> str:
    out = io.StringIO()
    call_command("hitl", "register-model", "--project", project.slug, "--name", "byo", "--weights", str(weights),
                 "--architecture", "resnet18", "--image-size", "64", "--mean", "0.4,0.45,0.5",
                 "--std", "0.2,0.25,0.3", *extra, stdout=out)
    return out.getvalue()


def _images() -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(0).integers(0, 256, (4, 3, 64, 64), dtype=np.uint8))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_torchvision_state_dict_registers_and_runs_with_workers_ml_alone(project, foreign_resnet, tmp_path, suffix):
    path = tmp_path / f"resnet{suffix}"
    state = {k: v.contiguous() for k, v in foreign_resnet.state_dict().items()}
    torch.save(state, path) if suffix == ".pth" else save_file(state, str(path))
    assert "registered" in _register(project, path)
    version = ModelVersion.objects.get(project=project, name="byo")
    assert version.architecture == "resnet18" and version.labels == list(LABELS)
    assert set(version.artifacts.values_list("kind", flat=True)) == {"weights", "onnx"}
    weights = version.artifacts.get(kind="weights")
    model, meta = load_checkpoint(media_path(weights.path), expected_sha256=weights.sha256)
    assert meta.input_spec == SPEC and meta.labels == list(LABELS)
    x = _images()
    with torch.inference_mode():
        expected = foreign_resnet(normalize(x, SPEC))
    torch.testing.assert_close(predict_logits(model, TensorImages(x), SPEC), expected, atol=1e-4, rtol=1e-4)


def test_a_deployment_downloads_its_models_artifacts_with_their_hashes(project, foreign_resnet, tmp_path, client):
    path = tmp_path / "resnet.pth"
    torch.save(foreign_resnet.state_dict(), path)
    _register(project, path)
    version = ModelVersion.objects.get(project=project, name="byo")
    _, token = deployment_create(project=project, name="cam-1", environment=Environment.EDGE, model_version=version)
    auth = {"HTTP_AUTHORIZATION": f"Deployment {token}"}
    assert client.get("/api/v1/deployment/model/").status_code in (401, 403)
    listing = client.get("/api/v1/deployment/model/", **auth).json()
    assert listing["model_version"] == "byo"
    files = {f["name"]: f for f in listing["files"]}
    assert set(files) == {"model.onnx", "model.safetensors", "model.json"}
    bodies = {}
    for name, entry in files.items():
        response = client.get(f"/api/v1/deployment/model/{name}", **auth)
        assert response.status_code == 200
        body = b"".join(response.streaming_content) if response.streaming else response.content
        assert hashlib.sha256(body).hexdigest() == entry["sha256"] == response["X-Content-SHA256"]
        assert len(body) == entry["size"]
        bodies[name] = body
    card = json.loads(bodies["model.json"])
    assert card["labels"] == list(LABELS) and card["preprocessing"]["size"] == 64
    assert card["preprocessing"]["mean"] == [0.4, 0.45, 0.5] and card["preprocessing"]["std"] == [0.2, 0.25, 0.3]
    session = onnxruntime.InferenceSession(bodies["model.onnx"])
    x = normalize(_images(), SPEC)
    (logits,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.inference_mode():
        np.testing.assert_allclose(logits, foreign_resnet(x).numpy(), atol=1e-3)
    assert client.get("/api/v1/deployment/model/other.bin", **auth).status_code == 404


def test_files_hitl_cannot_read_as_a_model_get_an_error_saying_what_is_accepted(project, foreign_resnet, tmp_path):
    text = tmp_path / "model.pth"
    text.write_text("this is not a model")
    mobilenet = tmp_path / "mobilenet.pth"
    torch.save(tv_models.mobilenet_v3_small(num_classes=len(LABELS)).state_dict(), mobilenet)
    three_class = tmp_path / "three.pth"
    torch.save(tv_models.resnet18(num_classes=3).state_dict(), three_class)
    odd = tmp_path / "model.bin"
    odd.write_bytes(b"\0" * 64)
    cases = [(text, "is not readable as model weights"), (mobilenet, "do not fit resnet18"),
             (three_class, "of another shape"), (odd, "unknown file type")]
    for path, message in cases:
        with pytest.raises(CommandError, match=message) as raised:
            _register(project, path)
        assert "accepts" in str(raised.value) or "--labels" in str(raised.value)
    assert not ModelVersion.objects.filter(project=project).exists()


def test_a_state_dict_without_architecture_says_how_to_register_it(project, foreign_resnet, tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save(foreign_resnet.state_dict(), path)
    with pytest.raises(CommandError, match="give --architecture and --labels"):
        call_command("hitl", "register-model", "--project", project.slug, "--name", "byo", "--weights", str(path),
                     stdout=io.StringIO())
