"""Hostile input on every kind of endpoint gets a 4xx JSON error that says what to fix, never a
5xx, and nothing is written."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_started
from django.db import close_old_connections
from django.test import RequestFactory, override_settings

from hitl.models import Item, Label, Prediction
from labeling.models import LabelStudioProject
from labeling.services.webhooks import WEBHOOK_HEADER, webhook_secret_issue
from tests.conftest import probabilities

pytestmark = pytest.mark.django_db
INGEST = "/api/v1/predictions/"


def errors_of(response) -> list[tuple[str, str]]:
    assert response["Content-Type"].startswith("application/json"), response.content[:200]
    data = response.json()
    assert data["detail"] and data["errors"], data
    return [(e["field"], e["message"]) for e in data["errors"]]


def raw_post(client, url: str, text: str):
    return client.post(url, text, content_type="application/json")


@pytest.fixture()
def ingest_text(deployment_client, write_images):
    """A valid bulk as JSON text, with ``{{}}`` where the test puts its hostile fragment."""
    paths = write_images(range(3))
    probs = probabilities(np.random.default_rng(0), 3)
    records = [{"image_path": p, "probabilities": q} for p, q in zip(paths, probs)]

    def post(fragment_into_record_1: str):
        text = json.dumps({"predictions": records})
        marker = json.dumps(records[1]["probabilities"])
        return raw_post(deployment_client, INGEST, text.replace(marker, fragment_into_record_1, 1))

    return post


def assert_nothing_stored() -> None:
    assert Prediction.objects.count() == 0 and Item.objects.count() == 0


# --- strings: NUL and lone surrogates, in values and keys ---------------------------------------


@pytest.mark.parametrize(
    "fragment",
    [
        r'[0.1, 0.9], "predicted_label": "co\u0000at"',
        r'[0.1, 0.9], "predicted_label": "\ud800"',
        r'[0.1, 0.9], "predicted_label": "\udfff tail"',
        r'[0.1, 0.9], "bad\u0000key": 1',
        r'[0.1, 0.9], "\udc00": 1',
    ],
)
def test_nul_and_lone_surrogates_are_refused_naming_the_field(ingest_text, fragment) -> None:
    response = ingest_text(fragment)
    assert response.status_code == 400
    (field, message), *_ = errors_of(response)
    assert field.startswith("predictions[1].")
    assert "NUL" in message or "surrogate" in message
    assert_nothing_stored()


def test_nul_in_a_label_value_and_a_project_setting(
    reviewer_client, project_admin_client, project, ingest
) -> None:
    item_id = ingest(range(2)).item_ids[0]
    response = raw_post(
        reviewer_client, f"/api/v1/items/{item_id}/labels/", r'{"value": "coat\u0000"}'
    )
    assert response.status_code == 400 and errors_of(response)[0][0] == "value"
    response = project_admin_client.patch(
        f"/api/v1/projects/{project.slug}/", r'{"name": "x\ud83d"}', content_type="application/json"
    )
    assert response.status_code == 400 and errors_of(response)[0][0] == "name"
    assert Label.objects.count() == 0


def test_paired_surrogate_escapes_are_ordinary_text(reviewer_client, ingest) -> None:
    """\\ud83d\\ude00 is one emoji, not a lone surrogate: it reaches validation (unknown label)."""
    item_id = ingest(range(1)).item_ids[0]
    response = raw_post(
        reviewer_client, f"/api/v1/items/{item_id}/labels/", r'{"value": "\ud83d\ude00"}'
    )
    assert response.status_code == 400
    assert "unknown label" in errors_of(response)[0][1] or "not one of" in errors_of(response)[0][1]


# --- numbers: NaN, infinity, overflow, integers beyond 64 bits ----------------------------------


@pytest.mark.parametrize(
    ("fragment", "words"),
    [
        ("[NaN, 0.9]", "NaN"),
        ("[Infinity, 0.9]", "infinity"),
        ("[-Infinity, 0.9]", "infinity"),
        ("[1e400, 0.9]", "too large"),
        ("[-1e999, 0.9]", "too large"),
        (
            "[1" + "0" * 5000 + ", 0.9]",
            "64-bit",
        ),  # Python's int() refuses > 4300 digits: a 500 before
        ("[18446744073709551616, 0.9]", "64-bit"),
    ],
)
def test_non_finite_and_overflowing_numbers_are_refused_naming_the_element(
    ingest_text, fragment, words
) -> None:
    response = ingest_text(fragment)
    assert response.status_code == 400
    (field, message), *_ = errors_of(response)
    assert field == "predictions[1].probabilities[0]"
    assert words in message
    assert_nothing_stored()


@pytest.mark.parametrize(
    "body",
    [
        '{"batch_size": 99999999999999999999}',
        '{"audit_fraction": NaN}',
        '{"holdout_fraction": Infinity}',
        '{"train_config": {"learning_rate": 1e999}}',
    ],
)
def test_project_settings_never_store_overflow_or_non_finite(
    project_admin_client, project, body
) -> None:
    response = project_admin_client.patch(
        f"/api/v1/projects/{project.slug}/", body, content_type="application/json"
    )
    assert response.status_code == 400
    field = errors_of(response)[0][0]
    assert field.split(".")[0] == next(
        iter(json.loads(body.replace("NaN", "0").replace("Infinity", "0").replace("1e999", "0")))
    )


def test_overlong_path_setting_is_a_400_not_an_os_error(project_admin_client, project) -> None:
    """Found by the schema fuzzer: a 5,000-character initial_weights path made stat() raise."""
    body = json.dumps({"initial_weights": "a/" * 2500})
    response = project_admin_client.patch(
        f"/api/v1/projects/{project.slug}/", body, content_type="application/json"
    )
    assert response.status_code == 400 and errors_of(response)[0][0] == "initial_weights"


def test_review_task_id_beyond_64_bits(reviewer_client, ingest) -> None:
    item_id = ingest(range(1)).item_ids[0]
    response = raw_post(
        reviewer_client,
        f"/api/v1/items/{item_id}/labels/",
        '{"value": "coat", "review_task": 99999999999999999999}',
    )
    assert response.status_code == 400 and errors_of(response)[0][0] == "review_task"
    assert Label.objects.count() == 0


# --- structure: duplicate keys, deep nesting ----------------------------------------------------


def test_duplicate_keys_are_refused(ingest_text) -> None:
    response = ingest_text('[0.1, 0.9], "predicted_label": "bag", "predicted_label": "coat"')
    assert response.status_code == 400
    field, message = errors_of(response)[0]
    assert field == "predictions[1]" and "'predicted_label' more than once" in message
    assert_nothing_stored()


def test_duplicate_top_level_key(deployment_client) -> None:
    response = raw_post(deployment_client, INGEST, '{"predictions": [], "predictions": []}')
    assert response.status_code == 400 and "more than once" in errors_of(response)[0][1]


@pytest.mark.parametrize("depth", [33, 900, 100_000])
def test_deep_nesting_is_refused_quickly(deployment_client, depth) -> None:
    started = time.monotonic()
    response = raw_post(
        deployment_client, INGEST, '{"predictions": ' + "[" * depth + "]" * depth + "}"
    )
    assert response.status_code == 400
    assert "deeper than 32" in errors_of(response)[0][1]
    assert time.monotonic() - started < 2


def test_nesting_within_the_limit_reaches_validation(deployment_client) -> None:
    response = raw_post(deployment_client, INGEST, '{"predictions": [' + "[" * 20 + "]" * 20 + "]}")
    assert response.status_code == 400 and "deeper" not in errors_of(response)[0][1]


def test_multipart_payload_field_follows_the_same_policy(deployment_client, write_images) -> None:
    paths = write_images(range(1))
    payload = json.dumps({"predictions": [{"image_path": paths[0], "probabilities": [0.1] * 10}]})
    response = deployment_client.post(
        INGEST, {"payload": payload.replace("0.1", "NaN", 1)}, format="multipart"
    )
    assert (
        response.status_code == 400
        and errors_of(response)[0][0] == "payload.predictions[0].probabilities[0]"
    )
    response = deployment_client.post(INGEST, {"payload": '{"a": 1, "a": 2}'}, format="multipart")
    assert response.status_code == 400 and "more than once" in errors_of(response)[0][1]


@pytest.fixture()
def webhook_link(project) -> tuple[str, dict[str, str]]:
    """A connected project's webhook URL and its secret header."""
    link = LabelStudioProject.objects.create(project=project, ls_project_id=7)
    return f"/labeling/webhook/{link.id}/", {WEBHOOK_HEADER: webhook_secret_issue(link, grace_seconds=0)}


def test_webhook_body_follows_the_same_policy(client, webhook_link) -> None:
    url, headers = webhook_link
    for body, words in [
        ('{"action": "ANNOTATION_CREATED", "action": "x"}', "more than once"),
        ('{"action": "\\u0000"}', "NUL"),
        ("[" * 50_000, "deeper"),
        ('{"n": NaN}', "NaN"),
    ]:
        response = client.post(url, body, content_type="application/json", headers=headers)
        assert response.status_code == 400, body[:40]
        assert words in response.json()["detail"]


@pytest.mark.parametrize("project_id", [-1, 2**31, 2**62])
def test_webhook_project_id_out_of_column_range(client, webhook_link, project_id) -> None:
    """A project id no Label Studio project can have is a 4xx, not a 500."""
    url, headers = webhook_link
    body = json.dumps({"action": "ANNOTATION_CREATED", "project": {"id": project_id}})
    response = client.post(url, body, content_type="application/json", headers=headers)
    assert 400 <= response.status_code < 500


# --- sizes: a 413 before the body is read, for JSON, multipart and chunked bodies ----------------


class UnreadableBody(io.RawIOBase):
    """A WSGI input that fails the test if anything reads the body."""

    def read(self, size: int = -1) -> bytes:
        raise AssertionError("the body was read")

    readline = readinto = read


@pytest.fixture()
def wsgi():
    """Call the real WSGI application (every middleware) with a hand-made environ."""
    request_started.disconnect(close_old_connections)
    handler = WSGIHandler()

    def call(
        path: str,
        *,
        content_type: str,
        headers: dict[str, str],
        body: io.RawIOBase,
        authorization: str = "",
    ) -> tuple[int, dict[str, str], bytes]:
        environ = RequestFactory().generic("POST", path).environ
        environ.pop("CONTENT_LENGTH", None)
        environ["CONTENT_TYPE"] = content_type
        environ.update(headers)
        environ["wsgi.input"] = body
        if authorization:
            environ["HTTP_AUTHORIZATION"] = authorization
        status: list[str] = []
        started: dict[str, str] = {}

        def start_response(
            line: str, response_headers: list[tuple[str, str]], exc_info=None
        ) -> None:
            status.append(line)
            started.update(response_headers)

        content = b"".join(handler(environ, start_response))
        return int(status[0].split()[0]), started, content

    yield call
    request_started.connect(close_old_connections)


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        (INGEST, "application/json"),
        (INGEST, "multipart/form-data; boundary=xyz"),
        ("/labeling/webhook/1/", "application/json"),
        ("/login/", "application/x-www-form-urlencoded"),
        ("/admin/login/", "multipart/form-data; boundary=xyz"),
        ("/api/v1/projects/any/cycles/", "application/json"),
    ],
)
def test_oversized_body_gets_413_before_it_is_read(
    wsgi, deployment_and_token, path, content_type
) -> None:
    with override_settings(HITL_MAX_REQUEST_BYTES=1000, DATA_UPLOAD_MAX_MEMORY_SIZE=1000):
        code, headers, content = wsgi(
            path,
            content_type=content_type,
            headers={"CONTENT_LENGTH": "1001"},
            body=UnreadableBody(),
            authorization=f"Deployment {deployment_and_token[1]}",
        )
    assert code == 413
    assert headers["Content-Type"] == "application/json"
    assert "HITL_MAX_REQUEST_BYTES" in json.loads(content)["detail"]


@pytest.mark.parametrize("length", ["12abc", "-5", "１２"])
def test_malformed_content_length_is_refused(wsgi, length) -> None:
    code, _, content = wsgi(
        INGEST,
        content_type="application/json",
        headers={"CONTENT_LENGTH": length},
        body=UnreadableBody(),
    )
    assert code == 400 and json.loads(content)["errors"][0]["field"] == "Content-Length"


def test_chunked_body_is_cut_off_at_the_limit(wsgi, deployment_and_token) -> None:
    auth = f"Deployment {deployment_and_token[1]}"
    chunked = {"HTTP_TRANSFER_ENCODING": "chunked"}
    with override_settings(HITL_MAX_REQUEST_BYTES=1000, DATA_UPLOAD_MAX_MEMORY_SIZE=1000):
        code, _, content = wsgi(
            INGEST,
            content_type="application/json",
            headers=chunked,
            body=io.BytesIO(b'{"predictions": [' + b" " * 5000 + b"]}"),
            authorization=auth,
        )
        assert code == 413 and b"HITL_MAX_REQUEST_BYTES" in content
        # under the limit, a chunked body is read like any other (Django alone reads it as empty)
        code, _, content = wsgi(
            INGEST,
            content_type="application/json",
            headers=chunked,
            body=io.BytesIO(b'{"predictions": [{"probabilities": NaN}]}'),
            authorization=auth,
        )
    assert (
        code == 400 and json.loads(content)["errors"][0]["field"] == "predictions[0].probabilities"
    )


def test_too_many_files_and_fields_get_a_json_4xx(deployment_client, client) -> None:
    files = {f"f{i}": io.BytesIO(b"x") for i in range(6)}
    with override_settings(DATA_UPLOAD_MAX_NUMBER_FILES=5, DATA_UPLOAD_MAX_NUMBER_FIELDS=5):
        response = deployment_client.post(INGEST, {"payload": "{}", **files}, format="multipart")
        assert response.status_code == 400 and "HITL_MAX_UPLOAD_FILES" in errors_of(response)[0][1]
        fields = {f"k{i}": "v" for i in range(10)}
        response = deployment_client.post(INGEST, fields, format="multipart")
        assert response.status_code == 400 and "fields" in errors_of(response)[0][1]
        response = client.post("/login/", fields)  # a web form: the same answer, not an HTML 400
        assert response.status_code == 400 and "fields" in errors_of(response)[0][1]
    assert_nothing_stored()


# --- ids and parameters in the URL -------------------------------------------------------------


@pytest.mark.parametrize(
    "path, status",
    [
        ("/api/v1/items/99999999999999999999/labels/", 404),
        ("/api/v1/items/9223372036854775808/image", 404),
        ("/api/v1/cycles/99999999999999999999/", 404),
        ("/api/v1/review-batches/184467440737095516160/", 404),
        ("/labeling/images/99999999999999999999/sig", 403),  # the signature is checked first
    ],
)
def test_ids_beyond_64_bits_in_the_path_are_not_found(reviewer_client, path, status) -> None:
    assert reviewer_client.get(path).status_code == status


@pytest.mark.parametrize(
    "query",
    [
        "item=99999999999999999999",
        "item=-1",
        "item=1e3",
        "item=%00",
        "model_version=%00v1",
        "split=%00",
        "labeled=%00",
        "%00=1",
    ],
)
def test_bad_query_parameters_get_400(reviewer_client, project, query) -> None:
    kind = "items" if query.startswith(("split", "labeled")) else "predictions"
    response = reviewer_client.get(f"/api/v1/projects/{project.slug}/{kind}/?{query}")
    assert response.status_code == 400, response.content
    assert errors_of(response)


def test_nul_in_a_token_header_gets_400(client) -> None:
    response = client.get("/api/v1/projects/", headers={"Authorization": "Token abc\x00def"})
    assert response.status_code == 400 and errors_of(response)[0][0] == "Authorization"
