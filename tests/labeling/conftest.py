from __future__ import annotations

import pytest

from hitl.services.selection import review_batch_request
from labeling.models import LabelStudioProject, LabelStudioTask, PushState
from workers.pipelines.selection import review_batch_select


@pytest.fixture()
def review_tasks(project, ingest):
    ingest(range(10))
    batch = review_batch_request(project=project, requested_by="t", size=6, audit_fraction=0)
    review_batch_select(batch_id=batch.id)
    return list(batch.tasks.select_related("prediction", "item").order_by("rank"))


@pytest.fixture()
def pushed(project, review_tasks):
    """A link and pushed-task rows as if `ls_push` had run (Label Studio task ids 101...)."""
    link = LabelStudioProject.objects.create(project=project, ls_project_id=7)
    rows = [LabelStudioTask.objects.create(ls_project=link, review_task=t, ls_task_id=101 + i, state=PushState.PUSHED)
            for i, t in enumerate(review_tasks)]
    return link, rows
