"""Signed image URLs that Label Studio's reviewers load (webhook secrets: `webhooks.py`)."""

from __future__ import annotations

import hashlib
import hmac

from django.conf import settings
from django.urls import reverse

from hitl.models import Item


def _derived(explicit: str, purpose: str) -> bytes:
    if explicit:
        return explicit.encode()
    return hmac.new(settings.SECRET_KEY.encode(), purpose.encode(), hashlib.sha256).hexdigest().encode()


def image_signature(item_id: int, sha256: str) -> str:
    key = _derived(settings.HITL_IMAGE_URL_SECRET, "hitl signed image urls")
    return hmac.new(key, f"{item_id}:{sha256}".encode(), hashlib.sha256).hexdigest()[:32]


def signed_image_url(item: Item) -> str:
    """A URL reviewers' browsers can load in Label Studio without a hitl session."""
    path = reverse("labeling:image", kwargs={"item_id": item.id, "signature": image_signature(item.id, item.sha256)})
    return settings.HITL_PUBLIC_URL + path
