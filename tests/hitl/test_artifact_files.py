"""A deployment's artifact download (and its model card, read from the weights' header) reads
only regular files inside MEDIA_ROOT/models: a model file (or a folder above it) swapped for a
symbolic link, or a FIFO, is refused, never served."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import threading
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from hitl.media import media_path, model_artifact_file
from hitl.models import ModelArtifact
from hitl.services.projects import checkpoint_meta_from_file, checkpoint_meta_read

pytestmark = pytest.mark.django_db
URL = "/api/v1/deployment/model/model.safetensors"


@pytest.fixture()
def weights(version, deployment_and_token) -> tuple[Path, dict[str, str]]:
    path = media_path(ModelArtifact.objects.get(model_version=version, kind="weights").path)
    return path, {"HTTP_AUTHORIZATION": f"Deployment {deployment_and_token[1]}"}


@pytest.fixture()
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret_key"
    path.write_bytes(b"HITL_SECRET_KEY=not-for-deployments")
    return path


def _body(response) -> bytes:
    return b"".join(response.streaming_content) if response.streaming else response.content


def test_the_weights_file_is_served_with_its_hash(client, weights) -> None:
    path, auth = weights
    response = client.get(URL, **auth)
    body = _body(response)
    assert response.status_code == 200 and body == path.read_bytes()
    assert hashlib.sha256(body).hexdigest() == response["X-Content-SHA256"]


def test_a_weights_file_swapped_for_a_symbolic_link_is_refused(client, weights, secret) -> None:
    path, auth = weights
    path.unlink()
    path.symlink_to(secret)
    response = client.get(URL, **auth)
    assert response.status_code == 404 and b"not-for-deployments" not in _body(response)


def test_a_model_folder_swapped_for_a_symbolic_link_is_refused(client, weights, secret) -> None:
    path, auth = weights
    elsewhere = secret.parent / "elsewhere"
    shutil.move(path.parent, elsewhere)
    (elsewhere / path.name).write_bytes(secret.read_bytes())
    path.parent.symlink_to(elsewhere, target_is_directory=True)
    response = client.get(URL, **auth)
    assert response.status_code == 404 and b"not-for-deployments" not in _body(response)


@pytest.mark.django_db(transaction=True)  # the request runs in a thread, on its own connection
def test_a_fifo_in_place_of_the_weights_is_refused_at_once(client, weights) -> None:
    path, auth = weights
    path.unlink()
    os.mkfifo(path)
    answered: list[int] = []

    def get() -> None:
        try:
            answered.append(client.get(URL, **auth).status_code)
        finally:
            connection.close()

    request = threading.Thread(target=get, daemon=True)
    request.start()
    request.join(timeout=10)
    if not answered:  # blocked opening the FIFO: a writer lets the request go before failing
        with open(path, "wb"):
            pass
        request.join(timeout=10)
        pytest.fail("opening the FIFO blocked the request")
    assert answered == [404]


def test_an_artifact_path_outside_the_models_folder_is_refused(client, weights, version) -> None:
    _, auth = weights
    outside = Path(settings.MEDIA_ROOT) / "items" / "not-a-model.safetensors"
    outside.parent.mkdir(parents=True, exist_ok=True)
    outside.write_bytes(b"HITL_SECRET_KEY=not-for-deployments")
    ModelArtifact.objects.filter(model_version=version, kind="weights").update(path="models/../items/not-a-model.safetensors")
    response = client.get(URL, **auth)
    assert response.status_code == 404 and b"not-for-deployments" not in _body(response)


def test_the_model_card_reads_the_weights_header_through_the_same_checks(client, weights, secret, version) -> None:
    path, auth = weights
    with model_artifact_file(ModelArtifact.objects.get(model_version=version, kind="weights").path) as handle:
        assert checkpoint_meta_from_file(handle, "weights") == checkpoint_meta_read(path)
    card = client.get("/api/v1/deployment/model/model.json", **auth)
    assert card.status_code == 200 and card.json()["labels"] == list(version.labels)
    listing = client.get("/api/v1/deployment/model/", **auth)
    assert listing.status_code == 200 and {f["name"] for f in listing.json()["files"]} >= {"model.json"}
    elsewhere = secret.parent / "weights.safetensors"
    shutil.copy(path, elsewhere)
    path.unlink()
    path.symlink_to(elsewhere)  # a valid checkpoint, but reached through a link
    for url in ("/api/v1/deployment/model/", "/api/v1/deployment/model/model.json"):
        assert client.get(url, **auth).status_code == 404


def test_the_header_reader_refuses_what_is_not_safetensors(tmp_path: Path) -> None:
    for data in (b"", b"\x05\x00\x00\x00\x00\x00\x00\x00[1,2]", b"\xff" * 8 + b"{}", b"\x02\x00\x00\x00\x00\x00\x00\x00{}"):
        with pytest.raises(ValueError, match="not a safetensors file|no hitl metadata"):
            checkpoint_meta_from_file(io.BytesIO(data), "odd")
