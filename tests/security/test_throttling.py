"""API throttles per kind of caller and the login lockout, counted in the real Redis cache."""

from __future__ import annotations

import uuid

import pytest
import redis
from django.conf import settings
from django.test import override_settings

pytestmark = pytest.mark.django_db


@pytest.fixture()
def own_cache():
    """The shared Redis cache under a key prefix of this test alone. Never cache.clear(): on
    Redis that is FLUSHDB for everyone; the keys expire with their window instead."""
    prefix = f"test-throttle-{uuid.uuid4().hex}"
    assert settings.CACHES["default"]["BACKEND"] == "django.core.cache.backends.redis.RedisCache"
    cache = {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": settings.HITL_CACHE_URL,
        "KEY_PREFIX": prefix,
    }
    with override_settings(CACHES={"default": cache}):
        yield prefix


def rates(**changed: str) -> override_settings:
    return override_settings(HITL_THROTTLE_RATES={**settings.HITL_THROTTLE_RATES, **changed})


def assert_throttled(response) -> None:
    assert response.status_code == 429, response.content
    assert int(response["Retry-After"]) > 0
    data = response.json()
    assert "throttled" in data["detail"].lower() and data["errors"][0]["message"]


def test_a_user_is_throttled_per_user(own_cache, reviewer_client, operator_client, project) -> None:
    with rates(user="3/minute"):
        for _ in range(3):
            assert reviewer_client.get("/api/v1/projects/").status_code == 200
        assert_throttled(reviewer_client.get("/api/v1/projects/"))
        assert (
            operator_client.get("/api/v1/projects/").status_code == 200
        )  # another person's budget
    keys = redis.Redis.from_url(settings.HITL_CACHE_URL).keys(f"{own_cache}:*throttle_user_*")
    assert len(keys) == 2  # counted in Redis, where every web process sees it


def test_a_deployment_is_throttled_per_deployment(own_cache, deployment_client) -> None:
    with rates(deployment="2/minute"):
        for _ in range(2):
            assert (
                deployment_client.post("/api/v1/predictions/", {}, format="json").status_code == 400
            )
        assert_throttled(deployment_client.post("/api/v1/predictions/", {}, format="json"))


def test_anonymous_callers_are_throttled_by_address(own_cache, client) -> None:
    with rates(anonymous="2/minute"), override_settings(HITL_PUBLIC_API_SCHEMA=True):
        for _ in range(2):
            assert client.get("/api/v1/schema/?format=json").status_code == 200
        assert_throttled(client.get("/api/v1/schema/?format=json"))
        other = client.get("/api/v1/schema/?format=json", REMOTE_ADDR="10.1.2.3")
    assert other.status_code == 200


@pytest.mark.parametrize("url", ["/login/", "/admin/login/"])
def test_login_locks_out_after_failures_even_with_the_right_password(
    own_cache, client, operator, url
) -> None:
    type(operator).objects.filter(pk=operator.pk).update(is_staff=True)  # the admin signs in staff only
    limit = settings.HITL_LOGIN_FAILURE_LIMITS[0]
    for _ in range(limit):
        response = client.post(url, {"username": "otto", "password": "wrong"})
        assert response.status_code == 200  # the form again, with its error
    locked = client.post(url, {"username": "otto", "password": "otto-pass-123"})
    assert (
        locked.status_code == 429
        and int(locked["Retry-After"]) == settings.HITL_LOGIN_WINDOW_SECONDS
    )
    assert "too many failed sign-ins" in locked.json()["detail"]
    assert "_auth_user_id" not in client.session
    # the same account from another address is not locked by this one's failures
    elsewhere = client.post(
        url, {"username": "otto", "password": "otto-pass-123"}, REMOTE_ADDR="10.9.9.9"
    )
    assert elsewhere.status_code == 302


def test_a_successful_login_resets_the_account_count(own_cache, client, reviewer) -> None:
    limit = settings.HITL_LOGIN_FAILURE_LIMITS[0]
    for _ in range(limit - 1):
        assert client.post("/login/", {"username": "rita", "password": "wrong"}).status_code == 200
    assert (
        client.post("/login/", {"username": "rita", "password": "rita-pass-123"}).status_code == 302
    )
    client.logout()
    for _ in range(limit - 1):
        assert client.post("/login/", {"username": "rita", "password": "wrong"}).status_code == 200
    assert (
        client.post("/login/", {"username": "rita", "password": "rita-pass-123"}).status_code == 302
    )


def test_one_address_guessing_many_accounts_is_locked(own_cache, client, reviewer) -> None:
    with override_settings(HITL_LOGIN_FAILURE_LIMITS=(5, 4)):
        for name in ["a", "b", "c", "d"]:
            assert client.post("/login/", {"username": name, "password": "x"}).status_code == 200
        assert (
            client.post("/login/", {"username": "rita", "password": "rita-pass-123"}).status_code
            == 429
        )


def test_an_unreachable_cache_lets_requests_through(reviewer_client, client, reviewer) -> None:
    """Throttling and the lockout fail open (and log): Redis down must not take the API down."""
    dead = {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": "redis://127.0.0.1:1/0",
        "KEY_PREFIX": "unreachable",
    }
    with override_settings(CACHES={"default": dead}):
        assert reviewer_client.get("/api/v1/projects/").status_code == 200
        assert client.post("/login/", {"username": "rita", "password": "wrong"}).status_code == 200
        assert (
            client.post("/login/", {"username": "rita", "password": "rita-pass-123"}).status_code
            == 302
        )
