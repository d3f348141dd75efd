"""Create or update a hitl project's Label Studio project and its webhook. Running it again
changes nothing."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from django.utils import timezone

from hitl.models import Project
from labeling.client import WEBHOOK_ACTIONS, LabelStudioClient, LabelStudioError
from labeling.mapping import label_config
from labeling.models import LabelStudioProject
from labeling.services.connection import default_client, record_error
from labeling.services.links import WEBHOOK_HEADER, webhook_secret, webhook_url

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
    url, headers = webhook_url(), {WEBHOOK_HEADER: webhook_secret()}
    hooks = client.webhooks(link.ls_project_id)
    hook = next((h for h in hooks if h.get("id") == link.webhook_id), None) or next(
        (h for h in hooks if h.get("url") == url), None)
    if hook is None:
        link.webhook_id = client.create_webhook(link.ls_project_id, url=url, headers=headers)
        result.changes.append(f"created webhook {link.webhook_id} -> {url}")
        return
    link.webhook_id = hook["id"]
    current = (hook.get("url"), hook.get("headers") or {}, sorted(hook.get("actions") or []), hook.get("is_active"),
               hook.get("send_payload"))
    if current != (url, headers, sorted(WEBHOOK_ACTIONS), True, True):
        client.update_webhook(link.webhook_id, url=url, headers=headers)
        result.changes.append(f"updated webhook {link.webhook_id} -> {url}")
