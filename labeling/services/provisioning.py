"""Create or update a hitl project's Label Studio project and its webhook, and rotate the
webhook's secret. Provisioning again changes nothing while Label Studio's webhook carries the
secret hitl accepts; otherwise (a new link, a webhook edited in Label Studio, a link from before
per-project secrets) it issues a fresh secret and sets it there."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from hitl.errors import InvalidInput
from hitl.models import Project
from labeling.client import WEBHOOK_ACTIONS, LabelStudioClient, LabelStudioError
from labeling.mapping import label_config
from labeling.models import LabelStudioProject
from labeling.services.connection import connected_project, default_client, record_error
from labeling.services.webhooks import (
    WEBHOOK_HEADER,
    secret_digest,
    webhook_secret_issue,
    webhook_url,
)

TITLE_LIMIT = 50  # Label Studio's limit on project titles


@dataclass
class ProvisionResult:
    link: LabelStudioProject
    changes: list[str] = field(default_factory=list)


def _title(project: Project) -> str:
    return f"hitl: {project.name}"[:TITLE_LIMIT]


def _description(project: Project) -> str:
    return (f"Review tasks that hitl selected for '{project.slug}'. Each carries the model's label as a "
            "pre-annotation: accept or correct it, or skip. Labels flow back to hitl.")


def ls_project_provision(*, project_id: int, client: LabelStudioClient | None = None) -> ProvisionResult:
    project = Project.objects.get(pk=project_id)
    link, _ = LabelStudioProject.objects.get_or_create(project=project)
    client = client or default_client()
    result = ProvisionResult(link)
    try:
        _ensure_project(project, link, client, result)
        _ensure_webhook(link, client, result)
    except LabelStudioError as exc:
        record_error(link, exc)
        raise
    if result.changes or link.provisioned_at is None:
        link.provisioned_at = timezone.now()
    link.last_error = ""
    link.save()
    return result


def _ensure_project(project: Project, link: LabelStudioProject, client: LabelStudioClient,
                    result: ProvisionResult) -> None:
    config = label_config(project.task_type, project.labels)
    wanted = {"title": _title(project), "label_config": config, "description": _description(project)}
    remote = client.project(link.ls_project_id) if link.ls_project_id else None
    if remote is None:
        link.ls_project_id = client.create_project(**wanted)
        result.changes.append(f"created Label Studio project {link.ls_project_id}")
        link.webhook_id = None
    elif any(remote.get(key) != value for key, value in wanted.items()):
        client.update_project(link.ls_project_id, **wanted)
        result.changes.append(f"updated Label Studio project {link.ls_project_id}")
    link.label_config_sha256 = hashlib.sha256(config.encode()).hexdigest()


def _ensure_webhook(link: LabelStudioProject, client: LabelStudioClient, result: ProvisionResult) -> None:
    url = webhook_url(link)
    hooks = client.webhooks(link.ls_project_id)
    hook = next((h for h in hooks if h.get("id") == link.webhook_id), None) or next(
        (h for h in hooks if h.get("url") == url), None)
    if hook is None:
        headers = {WEBHOOK_HEADER: webhook_secret_issue(link, grace_seconds=0)}  # accepted before it is sent
        link.webhook_id = client.create_webhook(link.ls_project_id, url=url, headers=headers)
        result.changes.append(f"created webhook {link.webhook_id} -> {url} with a new secret")
        return
    link.webhook_id = hook["id"]
    secret = (hook.get("headers") or {}).get(WEBHOOK_HEADER, "")
    if secret and secret_digest(secret) == link.webhook_secret_sha256:
        headers = {WEBHOOK_HEADER: secret}
    else:
        headers = {WEBHOOK_HEADER: webhook_secret_issue(link, grace_seconds=settings.HITL_LS_SECRET_GRACE_SECONDS)}
        result.changes.append(f"issued a new secret for webhook {link.webhook_id}")
    current = (hook.get("url"), hook.get("headers") or {}, sorted(hook.get("actions") or []), hook.get("is_active"),
               hook.get("send_payload"))
    if current != (url, headers, sorted(WEBHOOK_ACTIONS), True, True):
        client.update_webhook(link.webhook_id, url=url, headers=headers)
        result.changes.append(f"updated webhook {link.webhook_id} -> {url}")


def webhook_secret_rotate(*, project_id: int, grace_seconds: int | None = None,
                          client: LabelStudioClient | None = None) -> ProvisionResult:
    """Issue a new webhook secret and set it in Label Studio. The old one stays valid for
    ``grace_seconds`` (default HITL_LS_SECRET_GRACE_SECONDS; 0 for a leaked secret), counted
    from when Label Studio has the new one, so events it sends meanwhile are not lost. If Label
    Studio cannot be updated, the old secret expires on schedule anyway: run it again."""
    link = connected_project(project_id)
    if link.webhook_id is None:
        raise InvalidInput.single("project", "has no webhook yet: run `manage.py labelstudio connect`")
    grace = settings.HITL_LS_SECRET_GRACE_SECONDS if grace_seconds is None else grace_seconds
    if grace < 0:
        raise InvalidInput.single("grace_seconds", "must be 0 or more")
    client = client or default_client()
    secret = webhook_secret_issue(link, grace_seconds=grace)
    try:
        client.update_webhook(link.webhook_id, url=webhook_url(link), headers={WEBHOOK_HEADER: secret})
    except LabelStudioError as exc:
        record_error(link, exc)
        raise
    result = ProvisionResult(link, [f"webhook {link.webhook_id} now sends a new secret"])
    if grace:
        link.previous_secret_valid_until = timezone.now() + timedelta(seconds=grace)
        LabelStudioProject.objects.filter(pk=link.pk).update(previous_secret_valid_until=link.previous_secret_valid_until)
        result.changes.append(f"the previous secret is accepted until {link.previous_secret_valid_until:%Y-%m-%d %H:%M:%S} UTC")
    else:
        result.changes.append("the previous secret is refused from now on")
    return result
