"""One error shape for every 4xx: ``{"detail": "...", "errors": [{"field", "message"}]}``."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import (
    ObjectDoesNotExist,
    RequestDataTooBig,
    TooManyFieldsSent,
    TooManyFilesSent,
)
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
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


def json_error(code: int, field: str, message: str) -> JsonResponse:
    """The same error shape for plain Django views and middleware."""
    body = {"detail": str(FieldError(field, message)),
            "errors": [{"field": field, "message": message}]}
    return JsonResponse(body, status=code)


def request_body_error(exc: Exception) -> JsonResponse | None:
    """The JSON answer for Django's own body-size and multipart-count errors (None: not one)."""
    if isinstance(exc, RequestDataTooBig):
        limit = settings.HITL_MAX_REQUEST_BYTES
        return json_error(413, "body", f"the body is over the limit of {limit} bytes "
                                       "(HITL_MAX_REQUEST_BYTES)")
    if isinstance(exc, TooManyFilesSent):
        most = settings.DATA_UPLOAD_MAX_NUMBER_FILES
        return json_error(400, "body", f"more than {most} files in one request "
                                       "(HITL_MAX_UPLOAD_FILES); send fewer")
    if isinstance(exc, TooManyFieldsSent):
        most = settings.DATA_UPLOAD_MAX_NUMBER_FIELDS
        return json_error(400, "body", f"more than {most} fields in one request; send fewer")
    return None


def bad_request(request: HttpRequest, exception: Exception | None = None) -> JsonResponse:
    """handler400: Django's own 400s (a multipart body it could not parse, too many fields or
    files, a suspicious header) in the error shape, with the status the fault deserves."""
    response = request_body_error(exception) if exception is not None else None
    return response or json_error(400, "", str(exception) or "bad request")


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """handler404: the API and the labeling endpoints answer in the error shape; pages in HTML."""
    if request.path.startswith(("/api/", "/labeling/")):
        return json_error(404, "", "not found: no such endpoint or object")
    return defaults.page_not_found(request, exception)


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
