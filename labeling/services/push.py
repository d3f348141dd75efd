"""Push open review tasks to Label Studio with the model's pre-annotation.

Rows are reserved before the import and confirmed after it. If a worker dies between the two,
the next push finds the reserved rows, looks them up in Label Studio by hitl's review-task id,
confirms those that arrived and imports only the rest: pushing twice never duplicates a task.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from hitl.db import update_rows
from hitl.errors import Busy
from hitl.locks import exclusive
from hitl.models import ReviewTask, ReviewTaskStatus
from labeling.client import LabelStudioClient, LabelStudioError
from labeling.mapping import choice_result
from labeling.models import LabelStudioProject, LabelStudioTask, PushState
from labeling.services.connection import (
    connected_project,
    default_client,
    record_error,
    record_success,
)
from labeling.services.links import signed_image_url

IMPORT_CHUNK = 500


@dataclass(frozen=True)
class PushResult:
    pushed: int
    recovered: int


def ls_task_payload(task: ReviewTask) -> dict:
    data = {"image": signed_image_url(task.item), "hitl_item_id": task.item_id, "hitl_review_task_id": task.id,
            "hitl_reason": task.reason, "hitl_strategy": task.strategy}
    payload: dict = {"data": data}
    if task.prediction is not None:
        payload["predictions"] = [{
            "model_version": task.prediction.model_version.name,
            "score": round(task.prediction.confidence, 6),
            "result": choice_result(task.prediction.predicted_label),
        }]
    return payload


def confirm_reserved(link: LabelStudioProject, ls_ids_by_review_task: dict[int, int]) -> int:
    """Mark reserved rows whose task is already in Label Studio as pushed; returns how many."""
    rows = list(LabelStudioTask.objects.filter(ls_project=link, state=PushState.RESERVED,
                                               review_task_id__in=list(ls_ids_by_review_task))
                .values_list("pk", "review_task_id"))
    update_rows(LabelStudioTask, ["ls_task_id"], [(pk, ls_ids_by_review_task[task_id]) for pk, task_id in rows],
                constants={"state": PushState.PUSHED, "pushed_at": timezone.now()})
    return len(rows)


def _recover(link: LabelStudioProject, client: LabelStudioClient) -> int:
    if not LabelStudioTask.objects.filter(ls_project=link, state=PushState.RESERVED).exists():
        return 0
    found = {}
    for task in client.iter_tasks(link.ls_project_id):
        review_task_id = (task.get("data") or {}).get("hitl_review_task_id")
        if isinstance(review_task_id, int):
            found[review_task_id] = int(task["id"])
    return confirm_reserved(link, found)


@transaction.atomic
def _reserve(link: LabelStudioProject) -> None:
    new = ReviewTask.objects.filter(
        batch__project_id=link.project_id, status=ReviewTaskStatus.OPEN, label_studio_task__isnull=True
    ).values_list("id", flat=True)
    LabelStudioTask.objects.bulk_create(
        [LabelStudioTask(ls_project=link, review_task_id=task_id) for task_id in new], ignore_conflicts=True
    )


def _import_reserved(link: LabelStudioProject, client: LabelStudioClient) -> int:
    pushed = 0
    reserved = list(
        LabelStudioTask.objects.filter(ls_project=link, state=PushState.RESERVED)
        .select_related("review_task__item", "review_task__prediction__model_version").order_by("id")
    )
    for start in range(0, len(reserved), IMPORT_CHUNK):
        rows = reserved[start:start + IMPORT_CHUNK]
        ids = client.import_tasks(link.ls_project_id, [ls_task_payload(row.review_task) for row in rows])
        update_rows(
            LabelStudioTask, ["ls_task_id", "model_version"],
            [(row.pk, ls_id, row.review_task.prediction.model_version.name if row.review_task.prediction else "")
             for row, ls_id in zip(rows, ids)],
            constants={"state": PushState.PUSHED, "pushed_at": timezone.now()},
        )
        pushed += len(rows)
    return pushed


def ls_push(*, project_id: int, client: LabelStudioClient | None = None) -> PushResult:
    """Push every open review task of the project not yet in Label Studio; Busy while another
    push of the project runs."""
    link = connected_project(project_id)
    client = client or default_client()
    with exclusive(f"label-studio-push:{project_id}") as mine:
        if not mine:
            raise Busy(f"another push of project {project_id} is running")
        try:
            recovered = _recover(link, client)
            _reserve(link)
            pushed = _import_reserved(link, client)
        except LabelStudioError as exc:
            record_error(link, exc)
            raise
        record_success(link, last_push_at=timezone.now())
        return PushResult(pushed, recovered)
