"""Adding images with no prediction to a project (a cold start: no model yet), through the API."""

from __future__ import annotations

import base64
import binascii

from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from hitl.api.parsers import StrictJSONParser
from hitl.api.views import ProjectScoped
from hitl.errors import FieldError, InvalidInput
from hitl.services.access import Action
from hitl.services.ingestion import ImportedImage, items_import

MAX_IMAGES_PER_REQUEST = 1000
IMAGE_FIELDS = frozenset(("image_base64", "name", "label"))


def _json_images(payload: object) -> list[ImportedImage]:
    records = payload.get("images") if isinstance(payload, dict) else None
    if not isinstance(records, list) or not records:
        raise InvalidInput.single("images", 'send {"images": [{"image_base64": "...", "name": "a.jpg", '
                                            '"label": "optional"}, ...]} or a multipart upload of files "images"')
    if len(records) > MAX_IMAGES_PER_REQUEST:
        raise InvalidInput.single("images", f"at most {MAX_IMAGES_PER_REQUEST} images per request; got {len(records)}")
    images, errors = [], []
    for i, record in enumerate(records):
        field = f"images[{i}]"
        if not isinstance(record, dict) or not isinstance(record.get("image_base64"), str):
            errors.append(FieldError(f"{field}.image_base64", "required: the image file's bytes in base64"))
            continue
        unknown = sorted(set(record) - IMAGE_FIELDS)
        name, label = record.get("name", f"image {i}"), record.get("label")
        if unknown:
            errors.append(FieldError(f"{field}.{unknown[0]}"[:100], f"unknown field; allowed: {', '.join(sorted(IMAGE_FIELDS))}"))
        elif not isinstance(name, str) or (label is not None and not isinstance(label, str)):
            errors.append(FieldError(field, "name and label must be strings"))
        elif len(record["image_base64"]) * 3 // 4 > settings.HITL_MAX_IMAGE_BYTES:
            errors.append(FieldError(f"{field}.image_base64", f"larger than the limit of {settings.HITL_MAX_IMAGE_BYTES} bytes"))
        else:
            try:
                images.append(ImportedImage(name, base64.b64decode(record["image_base64"], validate=True), label))
            except (binascii.Error, ValueError):
                errors.append(FieldError(f"{field}.image_base64", "not valid base64"))
    if errors:
        raise InvalidInput(errors[:100])
    return images


def _uploaded_images(request: Request) -> list[ImportedImage]:
    files = request.FILES.getlist("images")
    label = request.data.get("label") or None
    if not files:
        raise InvalidInput.single("images", 'upload the image files in the multipart field "images" '
                                            '(optionally a field "label" for all of them)')
    if len(files) > MAX_IMAGES_PER_REQUEST:
        raise InvalidInput.single("images", f"at most {MAX_IMAGES_PER_REQUEST} images per request; got {len(files)}")
    too_big = [f.name for f in files if f.size > settings.HITL_MAX_IMAGE_BYTES]
    if too_big:
        raise InvalidInput.single("images", f"{too_big[0]} is larger than the limit of {settings.HITL_MAX_IMAGE_BYTES} bytes")
    return [ImportedImage(f.name or f"upload {i}", f.read(), label) for i, f in enumerate(files)]


class ImageImportView(ProjectScoped, APIView):
    """Add images to a project without predictions, all-or-nothing; importing again adds nothing.
    A project admin's action: imported labels skip review, so they go only to new items and items
    with no evaluation role (a label for a golden-set, held-out or audit-drawn item is a 400)."""

    access = {"POST": Action.IMPORT_ITEMS}
    parser_classes = (StrictJSONParser, MultiPartParser)

    @extend_schema(
        request={"application/json": {"type": "object", "properties": {
            "images": {"type": "array", "items": {"type": "object", "properties": {
                "image_base64": {"type": "string"}, "name": {"type": "string"},
                "label": {"type": "string", "description": "the known label, recorded with source import"},
            }, "required": ["image_base64"]}}}, "required": ["images"]},
            "multipart/form-data": {"type": "object", "properties": {
                "images": {"type": "array", "items": {"type": "string", "format": "binary"}},
                "label": {"type": "string"}}}},
        responses={201: {"type": "object", "properties": {
            "item_ids": {"type": "array", "items": {"type": "integer"}},
            "items_created": {"type": "integer"}, "labels_created": {"type": "integer"}}}},
    )
    def post(self, request: Request, slug: str) -> Response:
        project = self.project
        images = _uploaded_images(request) if request.content_type.startswith("multipart/") else _json_images(request.data)
        result = items_import(project=project, images=images, source=f"API upload by {request.user.get_username()}",
                              actor=request.user.get_username())
        return Response({"item_ids": result.item_ids, "items_created": result.items_created,
                         "labels_created": result.labels_created}, status=status.HTTP_201_CREATED)
