"""The project link, its client and its error record."""

from __future__ import annotations

from django.utils import timezone

from hitl.errors import InvalidInput
from labeling.client import LabelStudioClient
from labeling.models import LabelStudioProject


def connected_project(project_id: int) -> LabelStudioProject:
    link = LabelStudioProject.objects.select_related("project").filter(project_id=project_id).first()
    if link is None or link.ls_project_id is None:
        raise InvalidInput.single("project", "not connected to Label Studio yet: run `manage.py labelstudio connect`")
    return link


def record_error(link: LabelStudioProject, error: Exception) -> None:
    LabelStudioProject.objects.filter(pk=link.pk).update(last_error=str(error)[:2000], last_error_at=timezone.now())


def record_success(link: LabelStudioProject, **timestamps: object) -> None:
    LabelStudioProject.objects.filter(pk=link.pk).update(last_error="", **timestamps)


def default_client() -> LabelStudioClient:
    return LabelStudioClient()
