"""Request policies that hold for every endpoint (API, web forms, the labeling webhook, admin).

- ``RequestBodyLimitMiddleware``: a body declared larger than HITL_MAX_REQUEST_BYTES gets a
  413 before a byte of it is read; a body without Content-Length (chunked) is read at most up to
  the limit (one byte more gets a 413); a NUL in a query parameter or header, or a malformed
  Content-Length, gets a 400; too many multipart files or fields get a 400 naming the setting.
  All answers are JSON.
- ``LoginThrottleMiddleware``: failed sign-ins at the web and admin login are counted in the shared
  cache per (username, client address) and per client address; past the limit, a 429 with
  Retry-After until the window has passed.
- ``ContentSecurityPolicyMiddleware``: a strict Content-Security-Policy on every response.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Callable

from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import TooManyFieldsSent
from django.core.handlers.wsgi import LimitedStream
from django.http import HttpRequest, HttpResponse
from django.urls import reverse

from hitl.api.errors import json_error, request_body_error

Handler = Callable[[HttpRequest], HttpResponse]
logger = logging.getLogger(__name__)
CHUNK_BYTES = 64 * 1024


def _spool_chunked_body(request: HttpRequest, limit: int) -> HttpResponse | None:
    """Read a body sent without Content-Length (chunked) into a spooled file, at most ``limit``
    bytes, and give the request a Content-Length: Django and DRF read such a body as empty."""
    source = request.META["wsgi.input"]
    # not a context manager: the request reads it after this returns (closed when collected)
    spool = tempfile.SpooledTemporaryFile(max_size=settings.FILE_UPLOAD_MAX_MEMORY_SIZE)  # noqa: SIM115
    size = 0
    while chunk := source.read(min(CHUNK_BYTES, limit + 1 - size)):
        size += len(chunk)
        if size > limit:
            spool.close()
            return json_error(
                413, "body", f"the body is over the limit of {limit} bytes (HITL_MAX_REQUEST_BYTES)"
            )
        spool.write(chunk)
    spool.seek(0)
    request.META["CONTENT_LENGTH"] = str(size)
    request._stream = LimitedStream(spool, size)
    return None


class RequestBodyLimitMiddleware:
    def __init__(self, get_response: Handler) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        if (
            not request.META.get("CONTENT_LENGTH")
            and "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower()
        ):
            refusal = _spool_chunked_body(request, settings.HITL_MAX_REQUEST_BYTES)
            if refusal is not None:
                return refusal
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        return request_body_error(exception)

    @staticmethod
    def _refusal(request: HttpRequest) -> HttpResponse | None:
        declared = request.META.get("CONTENT_LENGTH", "")
        limit = settings.HITL_MAX_REQUEST_BYTES
        if declared and not (declared.isascii() and declared.isdecimal()):
            return json_error(400, "Content-Length", "must be a whole number of bytes")
        if declared and int(declared) > limit:
            return json_error(
                413,
                "body",
                f"the body is {int(declared)} bytes; the limit is {limit} bytes "
                "(HITL_MAX_REQUEST_BYTES)",
            )
        for key, value in request.META.items():
            if key.startswith("HTTP_") and isinstance(value, str) and "\x00" in value:
                return json_error(
                    400, key[5:].replace("_", "-").title(), "contains a NUL character; remove it"
                )
        try:
            parameters = list(request.GET.lists())
        except TooManyFieldsSent as exc:
            return request_body_error(exc)
        for name, values in parameters:
            if "\x00" in name or any("\x00" in v for v in values):
                return json_error(
                    400, name.replace("\x00", "\\x00"), "contains a NUL character; remove it"
                )
        return None


class LoginThrottleMiddleware:
    """Counts failed POSTs to the login pages (the form comes back instead of a redirect)."""

    def __init__(self, get_response: Handler) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.method != "POST" or request.path not in {
            reverse("login"),
            reverse("admin:login"),
        }:
            return self.get_response(request)
        keys = self._keys(request)
        window = settings.HITL_LOGIN_WINDOW_SECONDS
        if self._locked(keys):
            response = json_error(
                429, "username", f"too many failed sign-ins; try again in {window} seconds or less"
            )
            response["Retry-After"] = str(window)
            return response
        response = self.get_response(request)
        if response.status_code == 200:  # the form again: the credentials were refused
            self._count_failure(keys, window)
        elif response.status_code in (301, 302, 303):
            self._forget(keys[0])
        return response

    @staticmethod
    def _locked(keys: tuple[str, str]) -> bool:
        try:
            counts = cache.get_many(keys)
        except Exception:  # the cache down must not stop every sign-in
            logger.exception("login lockout: the cache is unreachable; sign-in not limited")
            return False
        limits = settings.HITL_LOGIN_FAILURE_LIMITS
        return any(counts.get(key, 0) >= limit for key, limit in zip(keys, limits))

    @staticmethod
    def _count_failure(keys: tuple[str, str], window: int) -> None:
        try:
            for key in keys:
                cache.add(key, 0, timeout=window)  # the window starts at the first failure
                try:
                    cache.incr(key)
                except ValueError:  # expired between add and incr: a new window
                    cache.set(key, 1, timeout=window)
        except Exception:
            logger.exception("login lockout: the cache is unreachable; failure not counted")

    @staticmethod
    def _forget(key: str) -> None:
        try:
            cache.delete(key)
        except Exception:
            logger.exception("login lockout: the cache is unreachable")

    @staticmethod
    def _keys(request: HttpRequest) -> tuple[str, str]:
        address = request.META.get("REMOTE_ADDR", "")
        username = request.POST.get("username", "")[:150].casefold()
        account = hashlib.sha256(f"{username}\x00{address}".encode(errors="replace")).hexdigest()
        return f"login-failures:account:{account}", f"login-failures:address:{address}"


class ContentSecurityPolicyMiddleware:
    """HITL_CONTENT_SECURITY_POLICY on every response that does not set its own (image responses
    carry a stricter sandboxing one)."""

    def __init__(self, get_response: Handler) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if settings.HITL_CONTENT_SECURITY_POLICY:
            response.headers.setdefault(
                "Content-Security-Policy", settings.HITL_CONTENT_SECURITY_POLICY
            )
        return response
