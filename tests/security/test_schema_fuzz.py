"""Schemathesis over the whole OpenAPI schema, in-process against the WSGI application, with each
kind of credential: no 5xx, and every response declared by the schema (status, content type,
headers, body). Valid and invalid requests (positive and negative generation); path ids and slugs
point at real objects most of the time, so the fuzzer gets past the 404s."""

from __future__ import annotations

import json
import os
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import schemathesis
from django.contrib.auth import get_user_model
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from django.test import override_settings
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.renderers import OpenApiJsonRenderer
from hypothesis import HealthCheck, Phase, settings
from rest_framework.authtoken.models import Token
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from hitl.models import Project, ProjectRole
from hitl.services.access import membership_set
from hitl.services.cycles import cycle_request
from hitl.services.selection import review_batch_request
from workers.pipelines.selection import review_batch_select

pytestmark = [pytest.mark.django_db, pytest.mark.fuzz]
MAX_EXAMPLES = int(
    os.environ.get("HITL_FUZZ_EXAMPLES", "12")
)  # per operation and credential: the whole run stays within a few minutes on 2 cores
CHECKS = [
    schemathesis.checks.not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@dataclass
class World:
    """Real objects for the fuzzer to hit: a project with items, predictions, labels, a selected
    review batch and a cycle; a deployment token, and a token per kind of person."""

    project: Project
    deployment_token: str
    person_tokens: dict[str, str] = field(default_factory=dict)
    ids: dict[str, list[int]] = field(default_factory=dict)


def _role(role: str) -> Callable[[World, Any], object]:
    return lambda world, user: membership_set(project=world.project, user=user, role=role, actor="fuzz")


# Each kind of person: how to make one of a plain new user. Adding a kind is one line.
PEOPLE: dict[str, Callable[[World, Any], object]] = {
    "non-member": lambda world, user: None,
    "staff": lambda world, user: type(user).objects.filter(pk=user.pk).update(is_staff=True),
    **{role: _role(role) for role in ProjectRole.values},
}
CREDENTIALS: dict[str, Callable[[World], dict[str, str]]] = {
    "anonymous": lambda world: {},
    "deployment": lambda world: {"Authorization": f"Deployment {world.deployment_token}"},
    **{
        name: (lambda world, name=name: {"Authorization": f"Token {world.person_tokens[name]}"})
        for name in PEOPLE
    },
}


@pytest.fixture()
def world(project, deployment_and_token, ingest) -> World:
    result = ingest(range(8))
    batch = review_batch_request(project=project, requested_by="fuzz", size=3)
    review_batch_select(batch_id=batch.id)
    cycle = cycle_request(project=project, requested_by="fuzz", train_config=None)
    world = World(project=project, deployment_token=deployment_and_token[1])
    world.ids = {"items": result.item_ids, "review-batches": [batch.id], "cycles": [cycle.id]}
    for kind, make in PEOPLE.items():
        user = get_user_model().objects.create_user(f"fuzz-{kind}", password=uuid.uuid4().hex)
        make(world, user)
        world.person_tokens[kind] = Token.objects.create(user=user).key
    return world


def load_schema():
    """The schema as drf-spectacular generates it (not fetched over HTTP: whether the schema
    endpoint needs a login is a setting), sent to the WSGI application in-process."""
    document = SchemaGenerator().get_schema(request=None, public=True)
    loaded = schemathesis.openapi.from_dict(json.loads(OpenApiJsonRenderer().render(document)))
    loaded.app = WSGIHandler()
    loaded.config.generation.update(
        modes=["positive", "negative"], max_examples=MAX_EXAMPLES, allow_x00=True
    )
    return loaded


schema = load_schema()


def aim_at_real_objects(case, world: World) -> None:
    """Three cases in four get real path parameters; the rest keep the fuzzer's own."""
    if (
        not case.path_parameters
        or zlib.crc32(repr(sorted(case.path_parameters.items())).encode()) % 4 == 0
    ):
        return
    if "slug" in case.path_parameters:
        case.path_parameters["slug"] = world.project.slug
    if "id" in case.path_parameters:
        collection = next((name for name in world.ids if f"/{name}/" in case.path), "items")
        ids = world.ids[collection]
        case.path_parameters["id"] = ids[zlib.crc32(repr(case.query).encode()) % len(ids)]


@pytest.fixture()
def in_process_app():
    """The test's database connection stays open across requests (as Django's test client does),
    and throttling, tested on its own, is off: here it would only cut the run short."""
    rates = {"anonymous": None, "user": None, "deployment": None}
    signals = (request_started, request_finished)
    for signal in signals:
        signal.disconnect(close_old_connections)
    with override_settings(
        HITL_THROTTLE_RATES=rates,
        HITL_PUBLIC_API_SCHEMA=True,
        CACHES={
            "default": {
                "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
                "LOCATION": uuid.uuid4().hex,
            }
        },
    ):
        yield
    for signal in signals:
        signal.connect(close_old_connections)


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate],
)
def test_api_answers_every_request_as_its_schema_says(case, world, in_process_app) -> None:
    """Every generated request is sent once with each kind of credential."""
    aim_at_real_objects(case, world)
    for name, headers in CREDENTIALS.items():
        try:
            case.call_and_validate(headers=headers(world), checks=CHECKS)
        except Exception as exc:
            exc.add_note(f"credential: {name}")
            raise


def test_schema_marks_nullable_fields_and_declares_errors() -> None:
    """What the fuzzer relies on, stated once: fields that can be null say so, and every
    operation declares the error answers in the one error shape."""
    document = json.loads(OpenApiJsonRenderer().render(SchemaGenerator().get_schema(public=True)))
    components = document["components"]["schemas"]
    nullable = {
        ("ModelVersion", "parent"),
        ("Prediction", "deployment"),
        ("ReviewTask", "predicted_label"),
        ("ReviewTask", "confidence"),
        ("ReviewBatch", "model_version"),
        ("Cycle", "base_version"),
        ("Cycle", "candidate_version"),
        ("PaginatedTrustEventList", "head_hash"),
        ("PaginatedTrustEventList", "first_bad_sequence"),
    }
    for component, name in nullable:
        assert components[component]["properties"][name].get("nullable") is True, (component, name)
    error = {"$ref": "#/components/schemas/Error"}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for code in ("400", "401", "403", "404", "413", "429", "503"):
                content = operation["responses"][code]["content"]["application/json"]
                assert content["schema"] == error, (method, path, code)
    ingest = document["paths"]["/api/v1/predictions/"]["post"]
    assert set(ingest["requestBody"]["content"]) == {"application/json", "multipart/form-data"}
    assert "201" in ingest["responses"]
    assert "deploymentToken" in document["components"]["securitySchemes"]
