"""Production mode (HITL_PRODUCTION=true): Django's deploy checks pass with no warning, the
security headers are on every response, and an unsafe configuration does not start. Each case runs
in a fresh interpreter, since settings are read once at start."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

STRONG_KEY = secrets.token_urlsafe(50)
PROBE = """
import json, django
django.setup()
from django.test import Client
client = Client()
out = {}
PAGES = [
    ("login", "/login/", {"secure": True}),
    ("docs", "/api/v1/docs/", {"secure": True}),
    ("admin", "/admin/login/", {"secure": True}),
    ("plain_http", "/login/", {}),
    ("proxied", "/login/", {"HTTP_X_FORWARDED_PROTO": "https"}),
]
for name, url, extra in PAGES:
    r = client.get(url, **extra)
    cookies = {k: {"secure": bool(v["secure"])} for k, v in r.cookies.items()}
    body = r.content.decode(errors="replace") if r.status_code == 200 else ""
    out[name] = {"status": r.status_code, "headers": dict(r.headers), "cookies": cookies,
                 "location": r.get("Location", ""), "body": body}
print(json.dumps(out))
"""


def run(tmp_path: Path, args: list[str], **env: str) -> subprocess.CompletedProcess:
    base = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/root"),
        "HITL_DATA_DIR": str(tmp_path),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "CELERY_BROKER_URL": "filesystem://",
        "HITL_ALLOWED_HOSTS": "hitl.example.com,testserver",
        "DJANGO_SETTINGS_MODULE": "hitl.settings",
    }
    return subprocess.run(  # the caller asserts on the exit status
        [sys.executable, *args],
        check=False,
        env={**base, **env},
        cwd=settings.BASE_DIR,
        capture_output=True,
        text=True,
        timeout=120,
    )


PRODUCTION = {"HITL_PRODUCTION": "true", "HITL_SECRET_KEY": STRONG_KEY}


def test_check_deploy_passes_with_no_warning_in_production_mode(tmp_path) -> None:
    result = run(
        tmp_path, ["manage.py", "check", "--deploy", "--fail-level", "WARNING"], **PRODUCTION
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout
    assert "WARNING" not in result.stdout + result.stderr


def test_check_deploy_warns_outside_production_mode(tmp_path) -> None:
    """The check above can fail: the same command without production mode reports the gaps."""
    result = run(
        tmp_path,
        ["manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        HITL_SECRET_KEY=STRONG_KEY,
    )
    assert result.returncode != 0
    assert "security.W004" in result.stderr and "security.W008" in result.stderr


@pytest.fixture(scope="module")
def production_pages(tmp_path_factory) -> dict:
    result = run(
        tmp_path_factory.mktemp("prod"), ["-c", PROBE], **PRODUCTION, HITL_BEHIND_TLS_PROXY="true",
        HITL_PUBLIC_API_SCHEMA="true",
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("page", ["login", "docs", "admin"])
def test_security_headers_on_every_page(production_pages, page) -> None:
    response = production_pages[page]
    headers = response["headers"]
    assert response["status"] == 200
    assert headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"
    csp = headers["Content-Security-Policy"]
    assert (
        "script-src 'self';" in csp and "frame-ancestors 'none'" in csp and "unsafe-eval" not in csp
    )
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Referrer-Policy"] == "same-origin"
    assert headers["X-Content-Type-Options"] == "nosniff"


def test_pages_work_under_the_policy(production_pages) -> None:
    """script-src 'self' blocks inline scripts: the pages, Swagger UI included, have none."""
    for page in ("login", "docs", "admin"):
        body = production_pages[page]["body"]
        scripts = body.split("<script")[1:]
        assert all(
            " src=" in tag.split(">")[0] or "application/json" in tag.split(">")[0]
            for tag in scripts
        ), page
    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/" in production_pages["docs"]["body"]


def test_cookies_are_secure_and_http_redirects_to_https(production_pages) -> None:
    assert production_pages["login"]["cookies"]["csrftoken"]["secure"]
    assert production_pages["plain_http"]["status"] == 301
    assert production_pages["plain_http"]["location"].startswith("https://")
    assert production_pages["proxied"]["status"] == 200  # X-Forwarded-Proto from the TLS proxy


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"HITL_DEBUG": "true"}, "HITL_DEBUG"),
        ({"HITL_SECRET_KEY": ""}, "HITL_SECRET_KEY"),
        ({"HITL_SECRET_KEY": "short-key"}, "at least 50 characters"),
        ({"HITL_SECRET_KEY": "ab" * 40}, "5 of them different"),
        ({"HITL_SECRET_KEY": "django-insecure-" + STRONG_KEY}, "HITL_SECRET_KEY"),
    ],
)
def test_production_mode_refuses_an_unsafe_configuration(tmp_path, env, words) -> None:
    result = run(tmp_path, ["manage.py", "check"], **{**PRODUCTION, **env})
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr and words in result.stderr


def test_secure_cookies_alone_still_works(tmp_path) -> None:
    result = run(
        tmp_path,
        [
            "-c",
            (
                "import django; django.setup(); from django.conf import settings as s; "
                "print(s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SECURE_SSL_REDIRECT)"
            ),
        ],
        HITL_SECURE_COOKIES="true",
    )
    assert result.stdout.split() == ["True", "True", "False"], result.stderr


def test_csp_outside_production_mode_too(client) -> None:
    assert "script-src 'self'" in client.get("/login/")["Content-Security-Policy"]
