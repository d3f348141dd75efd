"""A project's monitoring rules: thresholds, the action an alert takes and who is told. Torch-free,
read by the project settings check (API, CLI, admin) and by the monitor. Stored in
``Project.monitoring``; unset rules take the defaults here.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import validate_email

from hitl.errors import FieldError, InvalidInput

ACTIONS = ("none", "review_batch", "retraining_cycle")
MAX_EMAILS = 20


@dataclass(frozen=True)
class Rule:
    default: object
    check: Callable[[object], str | None]
    help: str


def _number(low: float, high: float, *, integer: bool = False, optional: bool = False) -> Callable[[object], str | None]:
    def check(value: object) -> str | None:
        if value is None and optional:
            return None
        kinds = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            return f"must be {'an integer' if integer else 'a number'}{' or null (off)' if optional else ''}"
        return None if low <= value <= high else f"must be between {low} and {high}"
    return check


def _bool(value: object) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def _action(value: object) -> str | None:
    return None if value in ACTIONS else f"unknown; use one of {', '.join(ACTIONS)}"


def _emails(value: object) -> str | None:
    if not isinstance(value, list) or len(value) > MAX_EMAILS:
        return f"must be a list of at most {MAX_EMAILS} email addresses"
    for address in value:
        try:
            validate_email(address)
        except (ValidationError, TypeError):
            return f"{str(address)[:100]!r} is not an email address"
    return None


def webhook_url_problem(value: object) -> str | None:
    """What is wrong with a webhook URL, or None. Without HITL_ALERT_WEBHOOK_ALLOW_PRIVATE a
    project admin may not point it at this network: loopback, private, link-local (cloud
    metadata) and other non-global addresses are refused, here by literal address and name, and
    again by every resolved address when it is sent (hitl.services.monitoring)."""
    if value == "":
        return None
    if not isinstance(value, str) or len(value) > 500:
        return "must be an http(s) URL of at most 500 characters, or empty (no webhook)"
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return "is not a URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http or https URL with a host"
    if parts.username or parts.password:
        return "must not carry credentials; the body is signed instead"
    if port == 0:
        return "has no valid port"
    if settings.HITL_ALERT_WEBHOOK_ALLOW_PRIVATE:
        return None
    host = parts.hostname.rstrip(".").lower()
    if host == "localhost" or host.endswith((".localhost", ".local", ".internal")):
        return f"{host} is an internal name; set HITL_ALERT_WEBHOOK_ALLOW_PRIVATE=true to allow it"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None  # a name: its addresses are checked when the webhook is sent
    if not address.is_global:
        return f"{host} is not a public address; set HITL_ALERT_WEBHOOK_ALLOW_PRIVATE=true to allow it"
    return None


MONITORING_RULES: dict[str, Rule] = {
    "enabled": Rule(True, _bool, "run the monitor on this project's deployments"),
    "window_minutes": Rule(60, _number(5, 7 * 24 * 60, integer=True), "length of a monitoring window"),
    "reference_size": Rule(500, _number(50, 20_000, integer=True),
                           "a model version's earliest predictions that make its reference"),
    "min_window_predictions": Rule(50, _number(1, 1_000_000, integer=True),
                                   "drift is judged only on windows with at least this many predictions"),
    "max_class_psi": Rule(0.25, _number(0, 10, optional=True), "PSI of the predicted-class mix above this alerts"),
    "max_confidence_psi": Rule(0.25, _number(0, 10, optional=True), "PSI of binned confidences above this alerts"),
    "max_confidence_ks": Rule(0.2, _number(0, 1, optional=True),
                              "KS statistic of confidences above this (and p below ks_p_value) alerts"),
    "ks_p_value": Rule(0.01, _number(0, 1), "the KS test's p-value must also be below this"),
    "min_predictions_per_window": Rule(None, _number(0, 10_000_000, integer=True, optional=True),
                                       "fewer predictions in a window than this alerts (null: off)"),
    "min_live_accuracy": Rule(None, _number(0, 1, optional=True),
                              "alerts when the audit slice's 95% upper bound is below this (null: off)"),
    "min_audit_labels": Rule(30, _number(1, 1_000_000, integer=True), "audit labels needed to judge live accuracy"),
    "min_reviewer_agreement": Rule(None, _number(0, 1, optional=True),
                                   "reviewers agreeing with the model less often than this in a window alerts"),
    "min_agreement_labels": Rule(20, _number(1, 1_000_000, integer=True),
                                 "reviewer labels in a window needed to judge agreement"),
    "action": Rule("review_batch", _action, "what an alerting window does: none, review_batch or retraining_cycle"),
    "review_batch_size": Rule(None, _number(1, 10_000, integer=True, optional=True),
                              "size of a scheduled review batch (null: the project's batch size)"),
    "action_cooldown_minutes": Rule(360, _number(0, 30 * 24 * 60, integer=True),
                                    "no second action of the monitor within this time"),
    "notify_emails": Rule([], _emails, "who gets an email per alerting window"),
    "webhook_url": Rule("", webhook_url_problem, "POSTed a signed JSON body per alerting window (empty: none)"),
}


def monitoring_rules_clean(rules: object, *, field: str = "monitoring") -> dict[str, object]:
    """The complete monitoring rules (defaults filled in) for ``rules``, or an InvalidInput naming
    each bad rule as ``<field>.<rule>``."""
    if not isinstance(rules, dict):
        raise InvalidInput.single(field, "must be an object of monitoring rules")
    errors = [FieldError(f"{field}.{str(name)[:50]}", f"unknown monitoring rule; use {', '.join(MONITORING_RULES)}")
              for name in rules if name not in MONITORING_RULES]
    errors += [FieldError(f"{field}.{name}", problem) for name, value in rules.items()
               if name in MONITORING_RULES and (problem := MONITORING_RULES[name].check(value))]
    if errors:
        raise InvalidInput(errors)
    return {name: rules.get(name, rule.default) for name, rule in MONITORING_RULES.items()}


def monitoring_rules(stored: dict) -> dict[str, object]:
    """A project's rules as stored (checked when they were set) with defaults for unset ones. Not
    checked again: a setting that changed since (HITL_ALERT_WEBHOOK_ALLOW_PRIVATE) must not stop
    the monitor; the webhook URL is checked again when it is called."""
    return {name: stored.get(name, rule.default) for name, rule in MONITORING_RULES.items()}


REDACTED = "…"


def webhook_url_shown(url: str) -> str:
    """The webhook URL as the API shows it: scheme and host only, since many receivers put their
    secret in the path or query (every member of the project may read its settings)."""
    if not url:
        return url
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/{REDACTED}"


def monitoring_rules_shown(stored: dict) -> dict:
    return {**stored, "webhook_url": webhook_url_shown(stored["webhook_url"])} if stored.get("webhook_url") else stored


def monitoring_keep_webhook(changed: object, stored: dict) -> object:
    """New monitoring rules, where a webhook URL sent back as shown (``webhook_url_shown``) keeps
    the stored one: an admin may change other rules without typing the URL again."""
    if (isinstance(changed, dict) and stored.get("webhook_url")
            and changed.get("webhook_url") == webhook_url_shown(stored["webhook_url"])):
        return {**changed, "webhook_url": stored["webhook_url"]}
    return changed
