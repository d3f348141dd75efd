from __future__ import annotations

from hitl.services.queue import enqueue
from labeling.models import LabelStudioProject


def push_after_selection(sender: object, *, project_id: int, batch_id: int, **kwargs: object) -> None:
    """A connected project's new review tasks go to Label Studio once the batch commits."""
    if LabelStudioProject.objects.filter(project_id=project_id, ls_project_id__isnull=False).exists():
        enqueue("labeling.tasks.push_review_tasks", project_id)
