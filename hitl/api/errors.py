"""One error shape for every 4xx: ``{"detail": "...", "errors": [{"field", "message"}]}``."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ObjectDoesNotExist
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from hitl.errors import TRANSIENT_DB_ERRORS, Conflict, FieldError, InvalidInput, Unavailable

# The database went away (a restart, a failover): the client retries; no traceback, no 500.
DATABASE_RETRY_AFTER_SECONDS = 5


def _flatten(detail: Any, prefix: str = "") -> list[FieldError]:
    if isinstance(detail, dict):
        errors: list[FieldError] = []
        for key, value in detail.items():
            name = "" if key == "non_field_errors" else str(key)
            errors.extend(_flatten(value, f"{prefix}.{name}" if prefix and name else prefix or name))
        return errors
    if isinstance(detail, list):
        if all(not isinstance(d, (dict, list)) for d in detail):
            return [FieldError(prefix, str(d)) for d in detail]
        errors = []
        for i, value in enumerate(detail):
            errors.extend(_flatten(value, f"{prefix}[{i}]"))
        return errors
    return [FieldError(prefix, str(detail))]


def error_response(errors: list[FieldError], code: int) -> Response:
    return Response(
        {"detail": str(errors[0]) if errors else "error",
         "errors": [{"field": e.field, "message": e.message} for e in errors]},
        status=code,
    )


def _unavailable(message: str, retry_after: int) -> Response:
    response = error_response([FieldError("", message)], status.HTTP_503_SERVICE_UNAVAILABLE)
    response["Retry-After"] = str(retry_after)
    return response


def exception_handler(exc: Exception, context: dict) -> Response | None:
    if isinstance(exc, InvalidInput):
        return error_response(exc.errors, status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, Conflict):
        return error_response([FieldError("", str(exc))], status.HTTP_409_CONFLICT)
    if isinstance(exc, Unavailable):
        return _unavailable(str(exc), exc.retry_after)
    if isinstance(exc, TRANSIENT_DB_ERRORS):
        return _unavailable("the database is unavailable right now; send the request again",
                            DATABASE_RETRY_AFTER_SECONDS)
    if isinstance(exc, (ObjectDoesNotExist, Http404)):
        return error_response([FieldError("", str(exc) or "not found")], status.HTTP_404_NOT_FOUND)
    if isinstance(exc, exceptions.ParseError):
        return error_response([FieldError("body", str(exc.detail))], status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, exceptions.ValidationError):
        return error_response(_flatten(exc.detail), status.HTTP_400_BAD_REQUEST)
    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(exc, exceptions.APIException):
        response.data = {"detail": str(exc.detail), "errors": [{"field": "", "message": str(exc.detail)}]}
    return response
