"""The one JSON reading policy, for the API parser (``hitl.api.parsers``), multipart ``payload``
fields, the web pages' JSON calls and the Label Studio webhook.

A JSON document is refused with a 400 that names the place (``predictions[3].probabilities[0]``)
when it holds: a string (key or value) with a NUL or a lone surrogate (PostgreSQL text cannot
store either), an object with the same key twice, NaN, Infinity or a number that overflows a
float, an integer outside 64 bits, or nesting deeper than HITL_MAX_JSON_DEPTH. The body size limit
is enforced before any of this by ``hitl.middleware.RequestBodyLimitMiddleware``.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from django.conf import settings

from hitl.errors import InvalidInput

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_FORBIDDEN_CHARACTERS = re.compile("[\x00\ud800-\udfff]")


class _Refused:
    """Put in place of a value the document may not hold, so the walk can name where it was."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _parse_int(text: str) -> int | _Refused:
    if len(text.lstrip("-")) > 19:  # longer than any 64-bit integer; int() would be slow
        return _Refused("is an integer outside the 64-bit range")
    value = int(text)
    if not INT64_MIN <= value <= INT64_MAX:
        return _Refused("is an integer outside the 64-bit range")
    return value


def _parse_constant(text: str) -> _Refused:
    return _Refused(
        f"is {text}: NaN or infinity is not a number hitl accepts; send a finite number"
    )


def _object(pairs: list[tuple[str, Any]]) -> dict | _Refused:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        twice = next(key for key, _ in pairs if key in seen or seen.add(key))
        return _Refused(f"has the key {twice!r} more than once")
    return result


def _describe(text: str) -> str:
    return (
        "a NUL character"
        if "\x00" in text
        else "a lone surrogate (an unpaired \\ud800-\\udfff escape)"
    )


def _field(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _refuse(path: str, message: str) -> InvalidInput:
    return InvalidInput.single(path or "body", message)


def _check_scalar(value: Any, path: str) -> None:
    if isinstance(value, _Refused):
        raise _refuse(path, value.reason)
    if isinstance(value, str) and _FORBIDDEN_CHARACTERS.search(value):
        raise _refuse(path, f"contains {_describe(value)}; remove it")
    if isinstance(value, float) and not math.isfinite(value):  # 1e400 parses as infinity
        raise _refuse(path, "is too large for a float (it would be infinity); send a finite number")


def _check(document: Any, *, field: str, max_depth: int) -> None:
    """Walk the parsed document without recursion; raise InvalidInput at the first refused value.
    Paths are spelled out only for containers and faults: a bulk is mostly numbers."""
    stack: list[tuple[Any, str, int]] = [(document, field, 0)]
    while stack:
        value, path, depth = stack.pop()
        if not isinstance(value, (dict, list)):
            _check_scalar(value, path)
            continue
        if depth >= max_depth:
            raise _refuse(path, f"nests deeper than {max_depth} levels (HITL_MAX_JSON_DEPTH)")
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, child in items:
            if isinstance(key, str) and _FORBIDDEN_CHARACTERS.search(key):
                raise _refuse(_field(path, "<key>"), f"a key contains {_describe(key)}; remove it")
            if isinstance(child, float) and math.isfinite(child):
                continue
            if child is None or isinstance(child, (bool, int)):
                continue
            stack.append((child, _field(path, key), depth + 1))


def json_document(raw: bytes | str, *, field: str = "") -> Any:
    """Parse one JSON document under hitl's policy; InvalidInput (a 400) names what to fix."""
    what = field or "body"
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput.single(what, "malformed JSON: the body is not UTF-8") from None
    try:
        document = json.loads(
            raw,
            object_pairs_hook=_object,
            parse_int=_parse_int,
            parse_constant=_parse_constant,
        )
    except RecursionError:  # the C scanner stops at the interpreter's recursion limit, quickly
        raise InvalidInput.single(
            what, f"nests deeper than {settings.HITL_MAX_JSON_DEPTH} levels (HITL_MAX_JSON_DEPTH)"
        ) from None
    except json.JSONDecodeError as exc:
        raise InvalidInput.single(
            what, f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    _check(document, field=field, max_depth=settings.HITL_MAX_JSON_DEPTH)
    return document


def query_id(params: Any, name: str) -> int | None:
    """An id-like query parameter: absent, or a whole number that fits in 64 bits (else a 400)."""
    value = params.get(name)
    if value is None:
        return None
    if not (value.isascii() and value.isdecimal() and int(value) <= INT64_MAX):
        raise InvalidInput.single(name, "must be an id: a whole number below 2**63")
    return int(value)
