"""DRF's JSON parser for every API view, under hitl's one JSON policy (``hitl.jsonpolicy``)."""

from __future__ import annotations

from typing import Any

from rest_framework.parsers import BaseParser

from hitl.jsonpolicy import json_document


class StrictJSONParser(BaseParser):
    """DRF's JSON parser for every API view (the default parser class)."""

    media_type = "application/json"

    def parse(
        self, stream: Any, media_type: str | None = None, parser_context: dict | None = None
    ) -> Any:
        # InvalidInput passes through DRF's request.data to the exception handler, field and all.
        return json_document(stream.read() if stream is not None else b"")
