"""Signed image URLs that Label Studio's reviewers load (webhook secrets: `webhooks.py`)."""

from __future__ import annotations

import hashlib
import hmac

from django.conf import settings
from django.core import signing
from django.urls import reverse

from hitl.models import Item


def _derived(explicit: str, purpose: str) -> bytes:
    if explicit:
        return explicit.encode()
    return hmac.new(settings.SECRET_KEY.encode(), purpose.encode(), hashlib.sha256).hexdigest().encode()


IMAGE_URL_SALT = "hitl.labeling.signed-image-url"


def _image_signer() -> signing.TimestampSigner:
    key = settings.HITL_IMAGE_URL_SECRET or settings.SECRET_KEY
    return signing.TimestampSigner(key=key, salt=IMAGE_URL_SALT)


def _image_claim(item: Item) -> str:
    """What a signature vouches for: this item, with this content, in this project."""
    return f"{item.id}.{item.project_id}.{item.sha256}"


def image_signature(item: Item) -> str:
    """``<timestamp>:<signature>`` over the item's claim; the claim itself is not in the URL."""
    return _image_signer().sign(_image_claim(item))[len(_image_claim(item)) + 1:]


def image_signature_check(item: Item, signature: str) -> str | None:
    """None when ``signature`` is this item's and younger than HITL_IMAGE_URL_MAX_AGE, else why not."""
    signed = f"{_image_claim(item)}:{signature}"
    try:
        _image_signer().unsign(signed, max_age=settings.HITL_IMAGE_URL_MAX_AGE)
    except signing.SignatureExpired:
        return f"the signed image URL has expired (valid {settings.HITL_IMAGE_URL_MAX_AGE} s)"
    except signing.BadSignature:
        return "bad signature for this image"
    return None


def signed_image_url(item: Item) -> str:
    """A URL reviewers' browsers can load in Label Studio without a hitl session, valid for
    HITL_IMAGE_URL_MAX_AGE seconds."""
    kwargs = {"item_id": item.id, "signature": image_signature(item)}
    path = reverse("labeling:image", kwargs=kwargs)
    return settings.HITL_PUBLIC_URL + path
