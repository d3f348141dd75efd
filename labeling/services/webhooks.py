"""The webhook's door. Each project link has its own URL (``/labeling/webhook/<link id>/``) and
its own secret, which Label Studio sends as a header. hitl keeps only the secret's SHA-256: the
value lives in Label Studio's webhook, which hitl sets on `connect` and `rotate-secret`. The
secret is checked before the body is read; the event is then checked against the link's
project (`labeling.services.scope`) and only then stored.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.urls import reverse
from django.utils import timezone

from hitl.errors import InvalidInput
from hitl.jsonpolicy import json_document
from labeling.models import LabelStudioProject, RejectionSource, WebhookEvent
from labeling.services.pull import webhook_event_record
from labeling.services.scope import (
    HANDLED_ACTIONS,
    MalformedEvent,
    OutOfScope,
    event_check,
    rejection_record,
)

log = logging.getLogger(__name__)
WEBHOOK_HEADER = "X-Hitl-Webhook-Secret"


@dataclass
class WebhookRefused(Exception):
    """The call is refused with this HTTP status and message."""

    detail: str
    status: int

    def __str__(self) -> str:
        return self.detail


def webhook_url(link: LabelStudioProject) -> str:
    return settings.HITL_PUBLIC_URL + reverse("labeling:webhook", kwargs={"link_id": link.id})


def secret_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(link: LabelStudioProject, secret: str) -> bool:
    """The link's current secret, or its previous one while that is still in its grace period."""
    if not secret:
        return False
    given = secret_digest(secret)
    current = bool(link.webhook_secret_sha256) and hmac.compare_digest(given, link.webhook_secret_sha256)
    previous = (bool(link.previous_secret_sha256) and link.previous_secret_valid_until is not None
                and timezone.now() < link.previous_secret_valid_until
                and hmac.compare_digest(given, link.previous_secret_sha256))
    return current or previous


def webhook_secret_issue(link: LabelStudioProject, *, grace_seconds: int) -> str:
    """A new secret for the link, accepted from now on; the one it replaces stays valid for
    ``grace_seconds`` (0: refused at once). Returns the value, which only Label Studio keeps."""
    secret = secrets.token_urlsafe(32)
    now = timezone.now()
    fields = {
        "webhook_secret_sha256": secret_digest(secret), "secret_rotated_at": now,
        "previous_secret_sha256": link.webhook_secret_sha256 if grace_seconds > 0 else "",
        "previous_secret_valid_until": now + timedelta(seconds=grace_seconds) if grace_seconds > 0 else None,
    }
    LabelStudioProject.objects.filter(pk=link.pk).update(**fields)
    for name, value in fields.items():
        setattr(link, name, value)
    return secret


def _refuse(link: LabelStudioProject, reason: str, status: int, remote: str) -> WebhookRefused:
    rejection_record(link=link, source=RejectionSource.WEBHOOK, reason=reason, remote=remote)
    return WebhookRefused(reason, status)


def webhook_authenticate(*, link_id: int, secret: str, remote: str) -> LabelStudioProject:
    """The link whose URL was called, if the call carries its secret; WebhookRefused otherwise
    (logged, and counted on the link's rejections). Nothing of the body is read yet."""
    link = LabelStudioProject.objects.select_related("project").filter(pk=link_id).first()
    if link is None:
        log.warning("webhook call for unknown Label Studio link %s refused (from %s)", link_id, remote)
        raise WebhookRefused(f"no Label Studio link {link_id}: this webhook URL is stale; run "
                             "`manage.py labelstudio connect` for the project", 404)
    if not link.webhook_secret_sha256:
        raise _refuse(link, f"no webhook secret set up yet: run `manage.py labelstudio connect --project "
                            f"{link.project.slug}`", 403, remote)
    if not secret:
        raise _refuse(link, f"missing {WEBHOOK_HEADER} header", 403, remote)
    if not secret_matches(link, secret):
        raise _refuse(link, f"wrong {WEBHOOK_HEADER} header", 403, remote)
    return link


def webhook_accept(*, link: LabelStudioProject, body: bytes, remote: str) -> WebhookEvent | None:
    """Parse and scope-check an authenticated call's body and store the event for a worker;
    None for an action hitl does not handle. WebhookRefused (400/403) for a malformed or
    cross-project event, which is stored nowhere."""
    try:
        payload = json_document(body)  # the API's JSON policy: no NUL, surrogates, duplicates, NaN, depth
    except InvalidInput as exc:
        raise _refuse(link, str(exc), 400, remote) from None
    try:
        event_check(link, payload)
    except MalformedEvent as exc:
        raise _refuse(link, str(exc), 400, remote) from None
    except OutOfScope as exc:
        raise _refuse(link, str(exc), 403, remote) from None
    if payload["action"] not in HANDLED_ACTIONS:
        return None
    return webhook_event_record(link=link, payload=payload)
