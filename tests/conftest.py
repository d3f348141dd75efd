"""Shared fixtures. Tests run against the real PostgreSQL and Redis on this machine."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import override_settings
from PIL import Image
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from hitl.media import model_directory
from hitl.models import Deployment, Environment, ModelVersion, Project
from hitl.services.projects import deployment_create, model_version_create, model_version_promote, project_create
from workers.celery import configure_queues, delete_queues
from workers.ml.architectures import build_model, input_spec_for
from workers.ml.checkpoint import CheckpointMeta, save_checkpoint
from workers.ml.datasets import FASHION_MNIST_LABELS, ArrayDataset, load_fashion_mnist

LABELS = FASHION_MNIST_LABELS


def pytest_configure(config: pytest.Config) -> None:
    engine = settings.DATABASES["default"]["ENGINE"]
    if "postgresql" not in engine:
        raise pytest.UsageError(
            "hitl's tests run against PostgreSQL: set DATABASE_URL=postgres://postgres@127.0.0.1:5432/hitl "
            "(or run `make test`)"
        )


@pytest.fixture(scope="session")
def queue_prefix() -> str:
    return f"hitl-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session", autouse=True)
def isolated_queues(queue_prefix: str) -> Iterator[None]:
    """Messages of this test session go to queues of their own, never to a running worker's."""
    configure_queues(queue_prefix)
    yield
    delete_queues(queue_prefix)


@pytest.fixture(scope="session")
def media_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("media")
    (root / "storage").mkdir()
    with override_settings(MEDIA_ROOT=root, STORAGE_ROOT=root / "storage"):
        yield root


@pytest.fixture(autouse=True)
def _media(media_root: Path) -> Path:
    return media_root


@pytest.fixture(scope="session")
def fashion() -> ArrayDataset:
    return load_fashion_mnist("test")


@pytest.fixture()
def write_images(media_root: Path, fashion: ArrayDataset):
    """Write Fashion-MNIST test images as PNGs under the storage root; returns storage paths."""

    def write(indices: range | list[int], folder: str = "imgs") -> list[str]:
        directory = media_root / "storage" / folder
        directory.mkdir(parents=True, exist_ok=True)
        paths = []
        for index in indices:
            Image.fromarray(fashion.images[index]).save(directory / f"{index}.png")
            paths.append(f"{folder}/{index}.png")
        return paths

    return write


@pytest.fixture()
def project(db) -> Project:
    return project_create(slug=f"p-{uuid.uuid4().hex[:6]}", name="Test project", labels=list(LABELS),
                          train_config={"epochs": 2}, batch_size=20)


def make_version(project: Project, name: str, *, seed: int = 0, promote: bool = False) -> ModelVersion:
    """A real (untrained) small CNN checkpoint recorded as a model version."""
    torch.manual_seed(seed)
    model = build_model("small_cnn", len(project.labels))
    directory = model_directory(project.slug, name)
    files = save_checkpoint(model, CheckpointMeta("small_cnn", list(project.labels), input_spec_for("small_cnn")),
                            Path(settings.MEDIA_ROOT) / directory, onnx=False)
    version = model_version_create(project=project, name=name, architecture="small_cnn", labels=list(project.labels),
                                   parent=None, directory=directory, files=files)
    if promote:
        model_version_promote(model_version_id=version.id, actor="test", reason="fixture")
        version.refresh_from_db()
    return version


@pytest.fixture()
def version(project: Project) -> ModelVersion:
    return make_version(project, "v1", promote=True)


@pytest.fixture()
def deployment_and_token(project: Project, version: ModelVersion) -> tuple[Deployment, str]:
    return deployment_create(project=project, name="edge-1", environment=Environment.EDGE, model_version=version)


@pytest.fixture()
def deployment_client(deployment_and_token: tuple[Deployment, str]) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Deployment {deployment_and_token[1]}")
    return client


@pytest.fixture()
def reviewer(db):
    return get_user_model().objects.create_user("rita", password="rita-pass-123")


@pytest.fixture()
def operator(db):
    return get_user_model().objects.create_user("otto", password="otto-pass-123", is_staff=True)


def token_client(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


@pytest.fixture()
def reviewer_client(reviewer) -> APIClient:
    return token_client(reviewer)


@pytest.fixture()
def operator_client(operator) -> APIClient:
    return token_client(operator)


def probabilities(rng: np.random.Generator, n: int, k: int = 10) -> list[list[float]]:
    raw = rng.dirichlet(np.ones(k) * 0.5, size=n)
    return raw.tolist()
