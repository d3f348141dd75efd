"""Alerts after they are raised: a person acknowledges them; each is told once by email (Django's
mail backend) and by an outgoing webhook whose body is signed with HMAC-SHA256.

The webhook is sent by a Celery task (``workers.tasks.alert_notify``), never by the monitor
itself: a slow or dead receiver delays nobody, and a failed delivery is recorded on the alert and
retried by Celery with backoff. What has been delivered is recorded, so a retry sends only what
is missing. Unless HITL_ALERT_WEBHOOK_ALLOW_PRIVATE is set, every address the URL's host
resolves to must be public, and the request goes to the very address that was checked (no second
lookup a DNS rebinding could answer differently); redirects are not followed.

A receiver checks ``X-Hitl-Signature: sha256=<hex>``: HMAC-SHA256 over ``<X-Hitl-Timestamp>.``
followed by the raw body, keyed with the project's webhook key (``alert_webhook_key``; printed by
``manage.py hitl monitor --project P --webhook-key``), and refuses old timestamps.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ipaddress
import json
import smtplib
import socket
import time
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.mail import send_mail
from django.db import transaction
from django.utils import timezone

from hitl.errors import InvalidInput
from hitl.models import Alert, AlertStatus, Project
from hitl.monitorspec import monitoring_rules, webhook_url_problem

MAX_NOTE = 2000
USER_AGENT = "hitl-alerts/1"


class NotificationFailed(Exception):
    """An email or webhook could not be delivered now; Celery tries again later."""


class WebhookRefused(Exception):
    """The webhook URL may not be called (an internal address): retrying will not help."""


@transaction.atomic
def alert_acknowledge(*, alert_id: int, user: AbstractBaseUser, note: str = "") -> Alert:
    """A person has seen the alert. Acknowledging twice keeps the first acknowledgement."""
    if not isinstance(note, str) or len(note) > MAX_NOTE:
        raise InvalidInput.single("note", f"must be text of at most {MAX_NOTE} characters")
    alert = Alert.objects.select_for_update().get(pk=alert_id)
    if alert.status == AlertStatus.ACKNOWLEDGED:
        return alert
    alert.status = AlertStatus.ACKNOWLEDGED
    alert.acknowledged_by, alert.acknowledged_by_name = user, user.get_username()
    alert.acknowledged_at, alert.acknowledge_note = timezone.now(), note
    alert.save(update_fields=["status", "acknowledged_by", "acknowledged_by_name", "acknowledged_at",
                              "acknowledge_note"])
    return alert


def alert_webhook_key(project: Project) -> bytes:
    """The project's webhook signing key, derived from HITL_ALERT_WEBHOOK_SECRET (or SECRET_KEY):
    one project's receiver cannot forge another project's alerts."""
    secret = (settings.HITL_ALERT_WEBHOOK_SECRET or settings.SECRET_KEY).encode()
    return hmac.new(secret, f"hitl-alert-webhook:{project.slug}".encode(), hashlib.sha256).hexdigest().encode()


def webhook_signature(key: bytes, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(key, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def alert_document(alert: Alert) -> dict:
    """What the webhook and the email say about an alert."""
    return {
        "id": alert.pk, "project": alert.project.slug,
        "deployment": alert.deployment.name if alert.deployment_id else None,
        "model_version": alert.model_version.name, "metric": alert.metric, "value": alert.value,
        "threshold": alert.threshold, "message": alert.message,
        "window_start": alert.window_start.isoformat(), "window_end": alert.window_end.isoformat(),
        "action": alert.action, "action_detail": alert.action_detail,
        "review_batch": alert.review_batch_id, "cycle": alert.cycle_id,
        "url": f"{settings.HITL_PUBLIC_URL}/projects/{alert.project.slug}/alerts/",
    }


def _checked_address(host: str, port: int) -> str:
    """An address of ``host`` to connect to; every one it resolves to must be public unless
    private ones are allowed."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise NotificationFailed(f"webhook host {host} does not resolve: {exc}") from None
    addresses = [info[4][0] for info in infos]
    if not settings.HITL_ALERT_WEBHOOK_ALLOW_PRIVATE:
        for text in addresses:
            address = ipaddress.ip_address(text.split("%")[0])
            if getattr(address, "ipv4_mapped", None):
                address = address.ipv4_mapped
            if not address.is_global:
                raise WebhookRefused(f"webhook host {host} resolves to {text}, not a public address "
                                     "(HITL_ALERT_WEBHOOK_ALLOW_PRIVATE is off)")
    return addresses[0]


class _PinnedHTTP(http.client.HTTPConnection):
    """Connects to the address that was checked, whatever a new lookup would answer."""

    def __init__(self, host: str, port: int, *, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, *, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def webhook_post(*, url: str, key: bytes, document: dict) -> int:
    """POST the signed document; returns the receiver's status. Raises WebhookRefused (the URL
    may not be called) or NotificationFailed (no 2xx answer in time)."""
    problem = webhook_url_problem(url)
    if problem:
        raise WebhookRefused(f"webhook URL {problem}")
    parts = urlsplit(url)
    https = parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    address = _checked_address(parts.hostname, port)
    body = json.dumps({"event": "hitl.alert", "alert": document}, sort_keys=True).encode()
    timestamp = str(int(time.time()))
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, "X-Hitl-Timestamp": timestamp,
               "X-Hitl-Signature": webhook_signature(key, timestamp, body), "X-Hitl-Event": "hitl.alert"}
    connection = (_PinnedHTTPS if https else _PinnedHTTP)(
        parts.hostname, port, address=address, timeout=settings.HITL_ALERT_WEBHOOK_TIMEOUT)
    try:
        connection.request("POST", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""), body, headers)
        response = connection.getresponse()
        response.read(65536)
    except (OSError, http.client.HTTPException) as exc:
        raise NotificationFailed(f"webhook {parts.hostname}: {exc or type(exc).__name__}") from None
    finally:
        connection.close()
    if not 200 <= response.status < 300:
        raise NotificationFailed(f"webhook {parts.hostname} answered {response.status}")
    return response.status


def _email(alert: Alert, document: dict, recipients: list[str]) -> None:
    subject = f"[hitl] {alert.project.slug}: {alert.get_metric_display()} alert"
    lines = [document["message"], "",
             f"window {document['window_start']} to {document['window_end']}",
             f"value {alert.value:.4g}, threshold {alert.threshold:.4g}",
             f"action: {alert.action_detail or alert.action}", "", f"acknowledge it at {document['url']}"]
    send_mail(subject, "\n".join(lines), None, recipients)


def alert_notify(*, alert_id: int) -> dict[str, str]:
    """Send the alert's email and webhook, each once; what fails is recorded, then raised as
    NotificationFailed so that Celery retries (a refused URL is recorded and not retried)."""
    problems: list[str] = []
    with transaction.atomic():  # the row lock: a parallel run waits, then finds it sent
        alert = Alert.objects.select_for_update(of=("self",)).select_related("project", "deployment", "model_version").get(
            pk=alert_id)
        rules = monitoring_rules(alert.project.monitoring)
        document = alert_document(alert)
        outcome = {"email": "not configured", "webhook": "not configured"}
        if alert.email_sent_at is not None:
            outcome["email"] = "sent before"
        elif rules["notify_emails"]:
            try:
                _email(alert, document, rules["notify_emails"])
                alert.email_sent_at, outcome["email"] = timezone.now(), "sent"
            except (OSError, smtplib.SMTPException) as exc:
                outcome["email"] = f"email: {exc}"
                problems.append(outcome["email"])
        if alert.webhook_sent_at is not None:
            outcome["webhook"] = "sent before"
        elif rules["webhook_url"]:
            try:
                webhook_post(url=rules["webhook_url"], key=alert_webhook_key(alert.project), document=document)
                alert.webhook_sent_at, alert.webhook_error, outcome["webhook"] = timezone.now(), "", "sent"
            except WebhookRefused as exc:
                alert.webhook_error = outcome["webhook"] = str(exc)
            except NotificationFailed as exc:
                alert.webhook_error = outcome["webhook"] = str(exc)
                problems.append(str(exc))
        alert.save(update_fields=["email_sent_at", "webhook_sent_at", "webhook_error"])
    if problems:
        raise NotificationFailed("; ".join(problems))
    return outcome
