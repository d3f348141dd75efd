"""Images cannot leak files: a path-ingested image is copied into the content store, so swapping
the file (or a folder above it) for a symbolic link afterwards changes nothing hitl serves or
trains on; responses are typed from the decoded format and sandboxed; signed URLs expire and are
bound to one item; bombs and multi-frame images are refused; a deployment reads only its prefix."""

from __future__ import annotations

import base64
import hashlib
import importlib
import io
import json
import os
import signal
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from unittest import mock
from urllib.parse import urlparse

import numpy as np
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings
from PIL import Image

from hitl.media import ImageRejected, StorageReader, content_addressed_path, read_beneath
from hitl.models import Deployment, Environment, Item, Split
from hitl.services.projects import deployment_create
from labeling.services.links import signed_image_url
from tests.conftest import probabilities
from workers.ml.architectures import input_spec_for
from workers.pipelines.versions import item_images

pytestmark = pytest.mark.django_db
URL = "/api/v1/predictions/"
SECRET = b"SECRET_KEY=do-not-leak-this-value\n"


def noise_png(seed: int, size: int = 28) -> bytes:
    """A PNG no other test writes: the content store is shared by the whole session."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def signed_path(item: Item) -> str:
    return urlparse(signed_image_url(item)).path


def post(client, records: list[dict]) -> tuple[int, dict]:
    response = client.post(URL, json.dumps({"predictions": records}), content_type="application/json")
    return response.status_code, response.json()


def path_records(paths: list[str]) -> list[dict]:
    return [{"image_path": p, "probabilities": q} for p, q in zip(paths, probabilities(np.random.default_rng(0), len(paths)))]


@pytest.fixture()
def secret_file(tmp_path: Path) -> Path:
    secret = tmp_path / "secret_key"
    secret.write_bytes(SECRET)
    return secret


@pytest.fixture()
def stored(deployment_client, media_root: Path, request) -> tuple[Item, bytes, Path]:
    """One image ingested by path from imgs/<test>/cam/1.png; returns the item, its bytes, the file."""
    data = noise_png(int(hashlib.sha256(request.node.name.encode()).hexdigest()[:8], 16))
    folder = media_root / "storage" / "imgs" / request.node.name[:40] / "cam"
    folder.mkdir(parents=True)
    (folder / "1.png").write_bytes(data)
    status, body = post(deployment_client, path_records([str((folder / "1.png").relative_to(media_root / "storage"))]))
    assert status == 201, body
    return Item.objects.get(pk=body["item_ids"][0]), data, folder / "1.png"


# --- 1. nothing outside the content store is read again ---------------------------------------


def test_item_is_copied_into_the_content_store(stored) -> None:
    item, data, _ = stored
    assert item.image == content_addressed_path(hashlib.sha256(data).hexdigest(), "PNG")
    assert item.sha256 == hashlib.sha256(data).hexdigest()


def body_of(response) -> bytes:
    return b"".join(response.streaming_content) if response.streaming else response.content


def _assert_serves_stored_content(item: Item, data: bytes, reviewer_client, client) -> None:
    api = body_of(reviewer_client.get(f"/api/v1/items/{item.pk}/image"))
    signed = body_of(client.get(signed_path(item)))
    assert SECRET not in api and SECRET not in signed
    assert api == data and signed == data


def test_swapping_the_file_for_a_symlink_changes_nothing_served(stored, secret_file, reviewer_client, client) -> None:
    item, data, path = stored
    path.unlink()
    path.symlink_to(secret_file)
    _assert_serves_stored_content(item, data, reviewer_client, client)


def test_swapping_a_folder_above_for_a_symlink_changes_nothing_served(
    stored, secret_file, reviewer_client, client, tmp_path
) -> None:
    item, data, path = stored
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / path.name).symlink_to(secret_file)
    folder = path.parent
    folder.rename(folder.with_name("cam-old"))
    folder.symlink_to(elsewhere)
    _assert_serves_stored_content(item, data, reviewer_client, client)


def test_training_and_inference_read_the_stored_copy(stored, secret_file) -> None:
    item, data, path = stored
    spec = input_spec_for("small_cnn")
    before = item_images([item.image], spec)[0][0]
    path.unlink()
    path.symlink_to(secret_file)
    assert np.array_equal(item_images([item.image], spec)[0][0].numpy(), before.numpy())
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("L"))
    assert np.array_equal(before.numpy()[0], expected)


def test_a_symlink_inside_the_store_is_not_followed(stored, secret_file, media_root, reviewer_client) -> None:
    item, _, _ = stored
    target = media_root / item.image
    target.unlink()
    target.symlink_to(secret_file)
    try:
        response = reviewer_client.get(f"/api/v1/items/{item.pk}/image")
        assert response.status_code == 404 and "symbolic link" in response.json()["detail"]
    finally:
        target.unlink()


def test_a_store_file_that_no_longer_matches_its_hash_is_not_served(stored, media_root, reviewer_client) -> None:
    item, data, _ = stored
    (media_root / item.image).write_bytes(noise_png(1))
    try:
        response = reviewer_client.get(f"/api/v1/items/{item.pk}/image")
        assert response.status_code == 404 and "no longer matches" in response.json()["detail"]
    finally:
        (media_root / item.image).write_bytes(data)


@pytest.fixture()
def alarm() -> Iterator[None]:
    """Fail (instead of hanging) if the code under test blocks for more than 2 s."""

    def expire(signum, frame):
        raise TimeoutError("blocked for more than 2 s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, 2.0)
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


def test_a_fifo_at_an_ingested_path_is_refused_at_once(deployment_client, media_root, alarm) -> None:
    folder = media_root / "storage" / "imgs" / "fifo"
    folder.mkdir(parents=True, exist_ok=True)
    os.mkfifo(folder / "pipe.png")
    started = time.monotonic()
    status, body = post(deployment_client, path_records(["imgs/fifo/pipe.png"]))
    assert time.monotonic() - started < 1.0
    assert status == 400 and body["errors"][0]["field"] == "predictions[0].image_path"
    assert "not a regular file" in body["errors"][0]["message"]
    assert not Item.objects.exists()


def test_the_opener_refuses_devices_fifos_and_escapes(tmp_path, alarm) -> None:
    with pytest.raises(ImageRejected, match="not a regular file"):
        read_beneath("/dev", "zero")
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(ImageRejected, match="not a regular file"):
        read_beneath(tmp_path, "pipe")
    (tmp_path / "up").symlink_to("/etc")
    with pytest.raises(ImageRejected, match="symbolic link"):
        read_beneath(tmp_path, "up/hostname")


# --- 2. responses --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["page.html", "vector.svg", "noext"])
def test_content_type_comes_from_the_decoded_format(name, deployment_client, media_root, reviewer_client, client) -> None:
    folder = media_root / "storage" / "imgs" / "types"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(noise_png(sum(name.encode()) + 100))
    status, body = post(deployment_client, path_records([f"imgs/types/{name}"]))
    assert status == 201, body
    item = Item.objects.get(pk=body["item_ids"][0])
    for response in (reviewer_client.get(f"/api/v1/items/{item.pk}/image"),
                     client.get(signed_path(item))):
        assert response.status_code == 200
        assert response["Content-Type"] == "image/png"
        assert response["Content-Security-Policy"] == "default-src 'none'; sandbox"
        assert response["X-Content-Type-Options"] == "nosniff"


def test_no_cross_origin_access_unless_a_listed_origin_asks(stored, client) -> None:
    item, _, _ = stored
    url = signed_path(item)
    response = client.get(url, HTTP_ORIGIN="https://evil.example")
    assert response.status_code == 200 and "Access-Control-Allow-Origin" not in response
    with override_settings(HITL_IMAGE_CORS_ORIGINS=["https://ls.example"]):
        assert "Access-Control-Allow-Origin" not in client.get(url, HTTP_ORIGIN="https://evil.example")
        allowed = client.get(url, HTTP_ORIGIN="https://ls.example")
        assert allowed["Access-Control-Allow-Origin"] == "https://ls.example"
        assert "Origin" in allowed["Vary"]
    with override_settings(LABEL_STUDIO_URL="http://ls.internal:8080/"):  # its UI fetches images by script
        assert client.get(url, HTTP_ORIGIN="http://ls.internal:8080")["Access-Control-Allow-Origin"] == (
            "http://ls.internal:8080")
        assert "Access-Control-Allow-Origin" not in client.get(url, HTTP_ORIGIN="https://evil.example")


# --- 3. signed URLs ------------------------------------------------------------------------------


def test_signed_url_expires(stored, client) -> None:
    item, data, _ = stored
    with override_settings(HITL_IMAGE_URL_MAX_AGE=3600):
        with mock.patch("django.core.signing.time.time", return_value=time.time() - 3601):
            old = signed_path(item)
        fresh = signed_path(item)
        expired = client.get(old)
        assert expired.status_code == 403 and "expired" in expired.json()["detail"]
        assert client.get(fresh).content == data


def test_forged_and_foreign_signatures_are_refused(stored, client, deployment_and_token, project, version) -> None:
    item, _, _ = stored
    url = signed_path(item)
    prefix, signature = url.rsplit("/", 1)
    timestamp, mac = signature.split(":")
    forged = client.get(f"{prefix}/{timestamp}:{'A' * len(mac)}")
    assert forged.status_code == 403 and forged.json()["detail"] == "bad signature for this image"
    other = Item.objects.create(project=project, sha256="0" * 64, image=item.image, width=28, height=28,
                                size_bytes=1, format="PNG", split=Split.TRAIN)
    assert client.get(f"/labeling/images/{other.pk}/{signature}").status_code == 403
    assert client.get(f"/labeling/images/999999999/{signature}").status_code == 403


def test_signature_is_bound_to_the_project(stored, client, project) -> None:
    item, _, _ = stored
    signature = signed_path(item).rsplit("/", 1)[1]
    Item.objects.filter(pk=item.pk).update(project=_another_project())
    assert client.get(f"/labeling/images/{item.pk}/{signature}").status_code == 403


def _another_project():
    from hitl.services.projects import project_create

    return project_create(slug="other-project", name="Other", labels=["a", "b"])


# --- 4. bombs and frame counts -------------------------------------------------------------------


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_declaring(width: int, height: int) -> bytes:
    """A few hundred bytes whose header declares ``width`` x ``height`` grey pixels."""
    compressor = zlib.compressobj(9)
    row = b"\x00" + b"\x00" * width
    body = b"".join(compressor.compress(row) for _ in range(min(height, 64))) + compressor.flush()
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + _png_chunk(b"IDAT", body) + _png_chunk(b"IEND", b""))


def animated(fmt: str, frames: int) -> bytes:
    images = [Image.new("L", (4, 4), color=i % 2 * 255) for i in range(frames)]
    buffer = io.BytesIO()
    images[0].save(buffer, format=fmt, save_all=True, append_images=images[1:])
    return buffer.getvalue()


def base64_record(data: bytes) -> list[dict]:
    return [{"image_base64": base64.b64encode(data).decode(), "probabilities": probabilities(np.random.default_rng(0), 1)[0]}]


@pytest.mark.parametrize(("make", "message"), [
    # The two area bombs were refused before too (PIL's bomb check, the pixel limit); kept as guards.
    (lambda: png_declaring(60_000, 60_000), "too large"),
    (lambda: png_declaring(8_000, 8_000), "8000x8000 pixels"),
    (lambda: animated("GIF", 3000), "more than 1 frame"),
    (lambda: animated("TIFF", 2000), "more than 1 frame"),
    (lambda: animated("PNG", 500), "more than 1 frame"),
    (lambda: animated("WEBP", 200), "more than 1 frame"),
])
def test_bombs_and_frame_counts_get_a_400_naming_the_field(make, message, deployment_client) -> None:
    data = make()
    assert len(data) < 2_000_000
    started = time.monotonic()
    status, body = post(deployment_client, base64_record(data))
    assert time.monotonic() - started < 1.0
    assert status == 400, body
    assert body["errors"][0]["field"] == "predictions[0].image_base64"
    assert message in body["errors"][0]["message"]
    assert not Item.objects.exists()


def test_frame_limit_is_a_setting(deployment_client) -> None:
    with override_settings(HITL_MAX_IMAGE_FRAMES=5):
        assert post(deployment_client, base64_record(animated("GIF", 5)))[0] == 201
        status, body = post(deployment_client, base64_record(animated("GIF", 6)))
    assert status == 400 and "more than 5 frames" in body["errors"][0]["message"]


# --- 5. a deployment reads only its storage prefix ----------------------------------------------


def test_deployment_reads_only_under_its_storage_prefix(project, version, media_root) -> None:
    deployment, _ = deployment_create(project=project, name="line-3", environment=Environment.EDGE, model_version=version)
    assert deployment.storage_prefix == f"{project.slug}/line-3"
    own = media_root / "storage" / project.slug / "line-3"
    own.mkdir(parents=True)
    (own / "a.png").write_bytes(noise_png(7001))
    other = media_root / "storage" / project.slug / "line-4"
    other.mkdir(parents=True)
    (other / "b.png").write_bytes(noise_png(7002))
    from hitl.errors import InvalidInput
    from hitl.services.ingestion import predictions_ingest

    payload = {"predictions": path_records([
        f"{project.slug}/line-4/b.png", f"{project.slug}/line-3/../line-4/b.png", f"{project.slug}/line-3x/b.png",
    ])}
    with pytest.raises(InvalidInput) as refused:
        predictions_ingest(deployment=deployment, payload=payload)
    assert [e.field for e in refused.value.errors] == [f"predictions[{i}].image_path" for i in range(3)]
    assert all("storage prefix" in e.message for e in refused.value.errors)
    result = predictions_ingest(deployment=deployment, payload={"predictions": path_records([f"{project.slug}/line-3/a.png"])})
    assert result.created == 1


@pytest.mark.parametrize("prefix", ["", "/", "../x", "a/../../b", "a\x00b"])
def test_a_bad_storage_prefix_is_refused(prefix, project, version) -> None:
    from hitl.errors import InvalidInput

    with pytest.raises(InvalidInput) as refused:
        deployment_create(project=project, name="d", environment=Environment.EDGE, model_version=version,
                          storage_prefix=prefix)
    assert refused.value.errors[0].field == "storage_prefix"
    assert not Deployment.objects.filter(name="d").exists()


def test_create_deployment_command_and_serializer_show_the_prefix(project, version, reviewer_client) -> None:
    out = io.StringIO()
    call_command("hitl", "create-deployment", "--project", project.slug, "--name", "cam-9", "--environment", "edge",
                 "--model-version", version.name, "--storage-prefix", "plant/cam-9", stdout=out)
    assert "reading images under plant/cam-9/" in out.getvalue()
    with pytest.raises(CommandError, match="storage_prefix"):
        call_command("hitl", "create-deployment", "--project", project.slug, "--name", "cam-10",
                     "--environment", "edge", "--model-version", version.name, "--storage-prefix", "../etc")
    listed = reviewer_client.get(f"/api/v1/projects/{project.slug}/deployments/").json()
    rows = listed["results"] if isinstance(listed, dict) else listed
    assert {row["name"]: row["storage_prefix"] for row in rows} == {"cam-9": "plant/cam-9"}


# --- migration 0004: existing rows outside the store -----------------------------------------------


def test_migration_copies_old_rows_into_the_store_or_records_why_not(
    project, media_root, secret_file, reviewer_client
) -> None:
    migration = importlib.import_module("hitl.migrations.0004_items_in_content_store")
    old = media_root / "storage" / "legacy"
    old.mkdir(parents=True, exist_ok=True)
    rows = {}
    for name, seed in (("good", 8001), ("link", 8002), ("changed", 8003), ("gone", 8004)):
        data = noise_png(seed)
        (old / f"{name}.png").write_bytes(data)
        rows[name] = Item.objects.create(
            project=project, sha256=hashlib.sha256(data).hexdigest(), image=f"storage/legacy/{name}.png",
            width=28, height=28, size_bytes=len(data), format="PNG", split=Split.TRAIN)
    (old / "link.png").unlink()
    (old / "link.png").symlink_to(secret_file)
    (old / "changed.png").write_bytes(noise_png(9999))
    (old / "gone.png").unlink()

    not_copied = migration.copy_items_into_store(Item, media_root)

    good = Item.objects.get(pk=rows["good"].pk)
    assert good.image == content_addressed_path(good.sha256, "PNG")
    assert reviewer_client.get(f"/api/v1/items/{good.pk}/image").content == noise_png(8001)
    reasons = {entry["item"]: entry["reason"] for entry in not_copied}
    assert set(reasons) == {rows["link"].pk, rows["changed"].pk, rows["gone"].pk}
    assert "symbolic link" in reasons[rows["link"].pk]
    assert "sha256 no longer matches" in reasons[rows["changed"].pk]
    assert "cannot read" in reasons[rows["gone"].pk]
    record = json.loads((media_root / migration.NOT_COPIED_RECORD).read_text())
    assert {entry["item"] for entry in record} == set(reasons)
    for name in ("link", "changed", "gone"):
        assert Item.objects.get(pk=rows[name].pk).image == f"storage/legacy/{name}.png"
        response = reviewer_client.get(f"/api/v1/items/{rows[name].pk}/image")
        assert response.status_code == 404 and "outside the content store" in response.json()["detail"]
        assert SECRET not in response.content
    # running it again copies nothing twice and finds the same three
    assert migration.copy_items_into_store(Item, media_root) == not_copied
    (media_root / migration.NOT_COPIED_RECORD).unlink()


def test_a_deployment_without_a_prefix_reads_nothing(deployment_and_token, deployment_client, write_images) -> None:
    Deployment.objects.filter(pk=deployment_and_token[0].pk).update(storage_prefix="")
    status, body = post(deployment_client, path_records(write_images([1])))
    assert status == 400 and "no storage prefix" in body["errors"][0]["message"]


def test_a_path_that_is_not_text_is_refused_as_bad_input() -> None:
    with pytest.raises(ImageRejected, match="not valid text"):
        StorageReader().read("imgs/\ud800.png")
