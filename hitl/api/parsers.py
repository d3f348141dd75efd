"""A JSON parser that lets NaN and Infinity through, so validation can name the field, and
that refuses bodies over HITL_MAX_REQUEST_BYTES before reading them into memory."""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from rest_framework.exceptions import APIException, ParseError
from rest_framework.parsers import BaseParser


class BodyTooLarge(APIException):
    status_code = 413
    default_code = "body_too_large"


class LenientJSONParser(BaseParser):
    media_type = "application/json"

    def parse(self, stream: Any, media_type: str | None = None, parser_context: dict | None = None) -> Any:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        request = (parser_context or {}).get("request")
        declared = request.META.get("CONTENT_LENGTH") if request is not None else None
        if declared and declared.isdecimal() and int(declared) > limit:
            raise BodyTooLarge(f"the body is {int(declared)} bytes; the limit is {limit} (HITL_MAX_REQUEST_BYTES)")
        body = stream.read(limit + 1) if stream is not None else b""
        if len(body) > limit:
            raise BodyTooLarge(f"the body is over the limit of {limit} bytes (HITL_MAX_REQUEST_BYTES)")
        try:
            return json.loads(body)
        except UnicodeDecodeError:
            raise ParseError("malformed JSON: the body is not UTF-8") from None
        except json.JSONDecodeError as exc:
            raise ParseError(f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
