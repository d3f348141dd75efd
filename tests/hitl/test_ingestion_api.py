"""Bulk prediction ingestion through the REST API: every bad input gets a 400 naming the field,
and a bulk is stored all-or-nothing."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import override_settings
from PIL import Image

from hitl.models import Item, Prediction, Split
from tests.conftest import probabilities

URL = "/api/v1/predictions/"
pytestmark = pytest.mark.django_db


def body(paths: list[str], probs: list[list[float]] | None = None, **extra) -> dict:
    probs = probs or probabilities(np.random.default_rng(0), len(paths))
    return {"predictions": [{"image_path": p, "probabilities": q} for p, q in zip(paths, probs)], **extra}


def post(client, payload) -> tuple[int, dict]:
    response = client.post(URL, json.dumps(payload) if not isinstance(payload, str) else payload,
                           content_type="application/json")
    return response.status_code, response.json()


def error_fields(data: dict) -> list[str]:
    return [e["field"] for e in data["errors"]]


def assert_nothing_stored() -> None:
    assert Prediction.objects.count() == 0
    assert Item.objects.count() == 0


def test_stores_items_and_predictions(deployment_client, deployment_and_token, version, write_images) -> None:
    paths = write_images(range(30))
    probs = probabilities(np.random.default_rng(1), 30)
    status, data = post(deployment_client, body(paths, probs))
    assert status == 201, data
    assert data["created"] == 30 and data["duplicates"] == 0 and data["items_created"] == 30
    prediction = Prediction.objects.get(item_id=data["item_ids"][4])
    np.testing.assert_allclose(prediction.probability_array, probs[4], rtol=1e-6)
    assert prediction.predicted_label == version.labels[int(np.argmax(probs[4]))]
    assert prediction.confidence == pytest.approx(max(probs[4]))
    assert prediction.deployment == deployment_and_token[0]
    assert prediction.model_version == version
    item = prediction.item
    assert (item.width, item.height, item.format) == (28, 28, "PNG")
    assert item.image == f"items/{item.sha256[:2]}/{item.sha256}.png"  # copied into the content store
    assert {i.split for i in Item.objects.all()} == {Split.TRAIN, Split.HOLDOUT}


def test_same_bulk_twice_stores_nothing_new(deployment_client, write_images) -> None:
    payload = body(write_images(range(10)))
    assert post(deployment_client, payload)[0] == 201
    status, data = post(deployment_client, payload)
    assert status == 201 and data["created"] == 0 and data["duplicates"] == 10 and data["items_created"] == 0
    assert Prediction.objects.count() == 10 and Item.objects.count() == 10


def test_same_image_under_two_paths_is_one_item(deployment_client, write_images, version, project) -> None:
    first = write_images([3], folder="imgs/a")
    second = write_images([3], folder="imgs/b")
    post(deployment_client, body(first))
    from tests.conftest import make_version

    make_version(project, "v2")
    status, data = post(deployment_client, body(second, model_version="v2"))
    assert status == 201 and data["items_created"] == 0 and data["created"] == 1
    assert Item.objects.count() == 1 and Prediction.objects.count() == 2


def test_base64_and_multipart_uploads(deployment_client, fashion) -> None:
    buffer = io.BytesIO()
    Image.fromarray(fashion.images[0]).save(buffer, format="PNG")
    png = buffer.getvalue()
    probs = probabilities(np.random.default_rng(2), 2)
    status, data = post(deployment_client, {"predictions": [
        {"image_base64": base64.b64encode(png).decode(), "probabilities": probs[0]}]})
    assert status == 201, data
    buffer = io.BytesIO()
    Image.fromarray(fashion.images[1]).convert("RGB").save(buffer, format="JPEG")
    response = deployment_client.post(URL, {
        "payload": json.dumps({"predictions": [{"image_upload": "f0", "probabilities": probs[1]}]}),
        "f0": SimpleUploadedFile("x.jpg", buffer.getvalue(), content_type="image/jpeg"),
    }, format="multipart")
    assert response.status_code == 201, response.json()
    formats = sorted(Item.objects.values_list("format", flat=True))
    assert formats == ["JPEG", "PNG"]
    for item in Item.objects.all():
        assert item.image.startswith("items/") and item.sha256 in item.image


@pytest.mark.parametrize(
    ("mutate", "field", "message"),
    [
        (lambda r: r.update(probabilities=r["probabilities"][:9]), "predictions[2].probabilities", "has 9 values"),
        (lambda r: r["probabilities"].__setitem__(0, float("nan")), "predictions[2].probabilities[0]", "NaN"),
        (lambda r: r["probabilities"].__setitem__(0, float("inf")), "predictions[2].probabilities[0]", "NaN or infinity"),
        (lambda r: r.update(probabilities=[0.05] * 10), "predictions[2].probabilities", "sums to 0.5"),
        (lambda r: r.update(probabilities=[1.5, -0.5] + [0.0] * 8), "predictions[2].probabilities", "between 0 and 1"),
        (lambda r: r.update(probabilities=["0.1"] * 10), "predictions[2].probabilities", "only numbers"),
        (lambda r: r.update(probabilities=[True] + [0.0] * 9), "predictions[2].probabilities", "only numbers"),
        (lambda r: r.update(probabilities="0.1,0.9"), "predictions[2].probabilities", "list of numbers"),
        (lambda r: r.update(predicted_label="zebra"), "predictions[2].predicted_label", "unknown label 'zebra'"),
        (lambda r: r.update(image_path="../../etc/passwd"), "predictions[2].image_path", "leaves the storage root"),
        (lambda r: r.update(image_path="/etc/hostname"), "predictions[2].image_path", "not absolute"),
        (lambda r: r.update(image_path="imgs/missing.png"), "predictions[2].image_path", "no file"),
        (lambda r: r.update(image_path="imgs"), "predictions[2].image_path", "not a regular file"),
        (lambda r: r.pop("image_path"), "predictions[2].image", "exactly one of"),
        (lambda r: r.update(image_base64="aGk="), "predictions[2].image", "exactly one of"),
        (lambda r: r.update(colour="red"), "predictions[2].colour", "unknown field"),
    ],
)
def test_bad_record_gets_400_naming_the_field_and_stores_nothing(
    deployment_client, write_images, mutate, field, message
) -> None:
    payload = body(write_images(range(5)))
    mutate(payload["predictions"][2])
    status, data = post(deployment_client, payload)  # json.dumps writes NaN and Infinity as such
    assert status == 400, data
    assert field in error_fields(data)
    assert message in " ".join(e["message"] for e in data["errors"])
    assert_nothing_stored()


def test_corrupt_image_is_rejected(deployment_client, media_root, write_images) -> None:
    paths = write_images(range(3))
    good = (media_root / "storage" / paths[1]).read_bytes()
    (media_root / "storage" / "imgs" / "broken.png").write_bytes(good[: len(good) // 2])
    (media_root / "storage" / "imgs" / "text.png").write_text("not an image at all")
    payload = body(paths + ["imgs/broken.png", "imgs/text.png"])
    status, data = post(deployment_client, payload)
    assert status == 400
    assert error_fields(data) == ["predictions[3].image_path", "predictions[4].image_path"]
    assert all("corrupt" in e["message"] for e in data["errors"])
    assert_nothing_stored()


def test_bad_base64_is_rejected(deployment_client) -> None:
    status, data = post(deployment_client, {"predictions": [
        {"image_base64": "***not base64***", "probabilities": [0.1] * 10}]})
    assert status == 400 and data["errors"][0] == {"field": "predictions[0].image_base64",
                                                     "message": "image_base64 is not valid base64"}


def test_oversized_image_is_rejected(deployment_client, write_images) -> None:
    with override_settings(HITL_MAX_IMAGE_BYTES=100):
        status, data = post(deployment_client, body(write_images(range(2))))
    assert status == 400
    assert "more than the limit of 100" in data["errors"][0]["message"]
    assert_nothing_stored()


def test_image_with_too_many_pixels_is_rejected(deployment_client, media_root) -> None:
    (media_root / "storage" / "imgs").mkdir(exist_ok=True)
    Image.new("L", (400, 300)).save(media_root / "storage" / "imgs" / "big.png")
    with override_settings(HITL_MAX_IMAGE_PIXELS=100_000):
        status, data = post(deployment_client, body(["imgs/big.png"]))
    assert status == 400 and "400x300 pixels" in data["errors"][0]["message"]


def test_unknown_model_version(deployment_client, write_images) -> None:
    status, data = post(deployment_client, body(write_images(range(2)), model_version="v9"))
    assert status == 400
    assert data["errors"][0]["field"] == "model_version"
    assert "unknown model version 'v9'" in data["errors"][0]["message"] and "known: v1" in data["errors"][0]["message"]


@pytest.mark.parametrize(
    ("raw", "field", "message"),
    [
        ('{"predictions": [', "body", "malformed JSON"),
        ("[1, 2]", "", "JSON object"),
        ('{"predictions": []}', "predictions", "non-empty list"),
        ('{"predictions": {"a": 1}}', "predictions", "non-empty list"),
        ('{"predictions": [1]}', "predictions[0]", "must be an object"),
        ('{"predictions": [{"image_path": "x.png", "probabilities": [0.1]}], "extra": 1}', "extra", "unknown field"),
    ],
)
def test_malformed_bodies(deployment_client, raw: str, field: str, message: str) -> None:
    status, data = post(deployment_client, raw)
    assert status == 400, data
    assert data["errors"][0]["field"] == field and message in data["errors"][0]["message"]


def test_too_many_predictions(deployment_client) -> None:
    with override_settings(HITL_MAX_BULK_PREDICTIONS=3):
        status, data = post(deployment_client, {"predictions": [{"image_path": "x", "probabilities": []}] * 4})
    assert status == 400 and "the limit is 3" in data["errors"][0]["message"]


def test_duplicate_image_within_one_bulk(deployment_client, write_images) -> None:
    paths = write_images(range(3))
    status, data = post(deployment_client, body([paths[0], paths[1], paths[0]]))
    assert status == 400
    assert data["errors"][0] == {"field": "predictions[2]", "message":
                                 "same image as predictions[0]: one prediction per image and model version"}
    assert_nothing_stored()


def test_probability_tolerance_allows_rounding(deployment_client, write_images) -> None:
    rounded = [round(p, 3) for p in probabilities(np.random.default_rng(5), 1)[0]]
    status, _ = post(deployment_client, body(write_images([0]), [rounded]))
    assert status == 201


def test_errors_are_reported_for_every_bad_record(deployment_client, write_images) -> None:
    payload = body(write_images(range(4)))
    payload["predictions"][0]["probabilities"] = [0.5] * 10
    payload["predictions"][3]["predicted_label"] = "nope"
    status, data = post(deployment_client, payload)
    assert status == 400
    assert error_fields(data) == ["predictions[0].probabilities", "predictions[3].predicted_label"]


def test_authentication_is_required(client, reviewer_client, write_images) -> None:
    payload = json.dumps(body(write_images([0])))
    assert client.post(URL, payload, content_type="application/json").status_code == 401
    assert reviewer_client.post(URL, payload, content_type="application/json").status_code == 403
    bad = client.post(URL, payload, content_type="application/json", HTTP_AUTHORIZATION="Deployment wrong")
    assert bad.status_code == 401 and "unknown deployment token" in bad.json()["detail"]
    assert_nothing_stored()


def test_deployment_token_cannot_read_user_endpoints(deployment_client, project) -> None:
    assert deployment_client.get(f"/api/v1/projects/{project.slug}/items/").status_code == 403


def test_symlinks_cannot_reach_outside_the_storage_root(deployment_client, media_root, tmp_path, fashion) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.fromarray(fashion.images[0]).save(outside / "secret.png")
    storage = media_root / "storage" / "imgs"  # the deployment's storage prefix
    storage.mkdir(exist_ok=True)
    (storage / "link.png").symlink_to(outside / "secret.png")
    (storage / "linkdir").symlink_to(outside)
    status, data = post(deployment_client, body(["imgs/link.png", "imgs/linkdir/secret.png"]))
    assert status == 400
    assert [e["message"] for e in data["errors"]] == [
        "'imgs/link.png': path is a symbolic link; give the file itself",
        "'imgs/linkdir/secret.png': 'linkdir' on the path is a symbolic link or not a folder",
    ]
    assert_nothing_stored()


def test_a_body_over_the_limit_is_refused_unread(deployment_client, write_images) -> None:
    payload = json.dumps(body(write_images(range(3))))
    with override_settings(HITL_MAX_REQUEST_BYTES=100):
        response = deployment_client.post(URL, payload, content_type="application/json")
    assert response.status_code == 413 and "the limit is 100" in response.json()["detail"]
    assert_nothing_stored()
