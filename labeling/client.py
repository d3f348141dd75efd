"""The one client module for Label Studio: label-studio-sdk 2.x behind timeouts, typed errors,
and retries with backoff for transient failures only (unreachable, timeouts, 429, 5xx)."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import httpx
from django.conf import settings
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError

log = logging.getLogger(__name__)
T = TypeVar("T")

WEBHOOK_ACTIONS = ["ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED"]
PAGE_SIZE = 500


class LabelStudioError(Exception):
    """Anything that went wrong talking to Label Studio."""


class LabelStudioNotConfigured(LabelStudioError):
    """LABEL_STUDIO_URL or LABEL_STUDIO_API_KEY is not set."""


class LabelStudioUnavailable(LabelStudioError):
    """Unreachable, timing out or failing on its side: worth retrying later."""


class LabelStudioAuthRefused(LabelStudioError):
    """The API key was refused (401/403): a configuration problem, not retried."""


class LabelStudioBadRequest(LabelStudioError):
    """Label Studio refused the request itself (4xx): retrying would not help."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _as_dict(value: Any) -> dict:
    if isinstance(value, dict):
        return value
    return value.dict() if hasattr(value, "dict") else dict(value)


class LabelStudioClient:
    def __init__(self, url: str | None = None, api_key: str | None = None, *, timeout: float | None = None,
                 retries: int | None = None, backoff: float = 0.5) -> None:
        self.url = (url or settings.LABEL_STUDIO_URL).rstrip("/")
        api_key = api_key or settings.LABEL_STUDIO_API_KEY
        if not self.url or not api_key:
            raise LabelStudioNotConfigured("set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY")
        self.retries = settings.LABEL_STUDIO_RETRIES if retries is None else retries
        self.backoff = backoff
        self._sdk = LabelStudio(base_url=self.url, api_key=api_key, max_retries=0,
                                timeout=timeout or settings.LABEL_STUDIO_TIMEOUT)

    # -- the retry policy -----------------------------------------------------------------------

    def _call(self, what: str, call: Callable[[], T], *, idempotent: bool = True) -> T:
        """Run ``call``; transient failures are retried only for idempotent calls, since a POST
        that timed out may still have taken effect."""
        retries = self.retries if idempotent else 0
        for attempt in range(retries + 1):
            try:
                return call()
            except ApiError as exc:
                status = exc.status_code or 0
                if status in (401, 403):
                    raise LabelStudioAuthRefused(f"{what}: Label Studio at {self.url} refused the API key ({status})") from None
                if status != 429 and status < 500:
                    raise LabelStudioBadRequest(
                        f"{what}: Label Studio answered {status}: {str(exc.body)[:500]}", status) from None
                error: Exception = exc
            except (httpx.TransportError, httpx.TimeoutException) as exc:
                error = exc
            if attempt < retries:
                delay = self.backoff * 2**attempt * (1 + random.random() / 2)
                log.warning("%s: Label Studio unavailable (%s), retry %d in %.1fs", what, error, attempt + 1, delay)
                time.sleep(delay)
        raise LabelStudioUnavailable(f"{what}: Label Studio at {self.url} is unavailable: {type(error).__name__}: {error}")

    # -- calls ------------------------------------------------------------------------------------

    def whoami(self) -> dict:
        return _as_dict(self._call("who am I", lambda: self._sdk.users.whoami()))

    def user_email(self, user_id: int) -> str:
        return _as_dict(self._call(f"user {user_id}", lambda: self._sdk.users.get(id=user_id))).get("email") or ""

    def project(self, project_id: int) -> dict | None:
        try:
            return _as_dict(self._call(f"project {project_id}", lambda: self._sdk.projects.get(id=project_id)))
        except LabelStudioBadRequest as exc:
            if exc.status == 404:
                return None
            raise

    def create_project(self, *, title: str, label_config: str, description: str) -> int:
        created = self._call("create project", lambda: self._sdk.projects.create(
            title=title, label_config=label_config, description=description, show_skip_button=True),
            idempotent=False)
        return int(created.id)

    def update_project(self, project_id: int, *, title: str, label_config: str, description: str) -> None:
        self._call(f"update project {project_id}", lambda: self._sdk.projects.update(
            id=project_id, title=title, label_config=label_config, description=description))

    def webhooks(self, project_id: int) -> list[dict]:
        return [_as_dict(w) for w in self._call("list webhooks", lambda: self._sdk.webhooks.list(project=str(project_id)))]

    def create_webhook(self, project_id: int, *, url: str, headers: dict[str, str]) -> int:
        hook = self._call("create webhook", lambda: self._sdk.webhooks.create(
            url=url, project=project_id, send_payload=True, send_for_all_actions=False,
            actions=WEBHOOK_ACTIONS, headers=headers, is_active=True), idempotent=False)
        return int(hook.id)

    def update_webhook(self, webhook_id: int, *, url: str, headers: dict[str, str]) -> None:
        self._call(f"update webhook {webhook_id}", lambda: self._sdk.webhooks.update(
            id=webhook_id, url=url, send_payload=True, send_for_all_actions=False, actions=WEBHOOK_ACTIONS,
            headers=headers, is_active=True))

    def import_tasks(self, project_id: int, tasks: Sequence[dict]) -> list[int]:
        """Create tasks (with predictions); ids come back in the order of ``tasks``."""
        response = self._call(f"import {len(tasks)} tasks", lambda: self._sdk.projects.import_tasks(
            id=project_id, request=list(tasks), return_task_ids=True), idempotent=False)
        ids = [int(i) for i in (response.task_ids or [])]
        if len(ids) != len(tasks):
            raise LabelStudioError(f"imported {len(tasks)} tasks but Label Studio returned {len(ids)} ids")
        return ids

    def iter_tasks(self, project_id: int) -> Iterator[dict]:
        """Every task of a project with its data and annotations, a page at a time."""
        page = 1
        while True:
            try:
                pager = self._call(f"list tasks page {page}", lambda page=page: self._sdk.tasks.list(
                    project=project_id, fields="all", page=page, page_size=PAGE_SIZE))
                items = [_as_dict(t) for t in (pager.items or [])]
            except LabelStudioBadRequest as exc:
                if exc.status == 404 and page > 1:  # Label Studio's answer past the last full page
                    return
                raise
            yield from items
            if len(items) < PAGE_SIZE:
                return
            page += 1
