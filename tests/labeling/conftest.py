from __future__ import annotations

import numpy as np
import pytest

from hitl.services.ingestion import predictions_ingest
from hitl.services.selection import review_batch_request, review_batch_select
from labeling.models import LabelStudioProject, LabelStudioTask, PushState


@pytest.fixture()
def review_tasks(project, deployment_and_token, write_images):
    paths = write_images(range(10))
    probs = np.random.default_rng(0).dirichlet(np.ones(10), size=10)
    predictions_ingest(deployment=deployment_and_token[0], payload={"predictions": [
        {"image_path": p, "probabilities": q.tolist()} for p, q in zip(paths, probs)]})
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
