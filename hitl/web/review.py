"""Keyboard-first review: one item at a time. The page loads once; its script (static
hitl/review.js) takes leases, labels, skips and undoes through the small JSON views below, each
checking the caller's role in the item's project and CSRF like every form. And the item page."""

from __future__ import annotations

import json
import math
import time

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from hitl import selectors
from hitl.api.errors import json_error
from hitl.errors import Conflict, InvalidInput
from hitl.models import (
    Item,
    Label,
    LabelSource,
    Project,
    ReviewReason,
    ReviewTask,
    ReviewTaskStatus,
)
from hitl.services.access import Action, NotAMember, RoleTooLow, role_required
from hitl.services.labels import label_submit, label_undo, plausible_lead_time, review_task_skip
from hitl.services.leases import review_leases_take
from hitl.web.views import _allowed

# Keys 1-9 pick a label; beyond nine labels the reviewer types to filter the list first.
LABEL_KEYS = "123456789"


def _refusal(request: HttpRequest, project: Project | None, action: Action, missing: str) -> JsonResponse | None:
    """The JSON answer when the caller may not do this (404 for a non-member, as for nothing)."""
    if project is None:
        return json_error(404, "", missing)
    try:
        role_required(project=project, user=request.user, action=action)
    except NotAMember:
        return json_error(404, "", missing)
    except RoleTooLow as exc:
        return json_error(403, "", str(exc))
    return None


def _body(request: HttpRequest) -> dict:
    """A JSON object body (what the page's script sends), or the form fields."""
    if request.content_type != "application/json":
        return request.POST.dict()
    try:
        body = json.loads(request.body or b"{}")
    except (UnicodeDecodeError, ValueError):
        raise InvalidInput.single("body", "send a JSON object") from None
    if not isinstance(body, dict):
        raise InvalidInput.single("body", "send a JSON object")
    return body


def task_view(task: ReviewTask, golden_ids: set[int]) -> dict:
    """What the review page shows for one leased task."""
    prediction = task.prediction
    return {
        "id": task.id,
        "item_id": task.item_id,
        "image_url": reverse("item-image", kwargs={"pk": task.item_id}),
        "item_url": reverse("web:item", kwargs={"pk": task.item_id}),
        "answer_url": reverse("web:review-task-answer", kwargs={"pk": task.id}),
        "width": task.item.width,
        "height": task.item.height,
        "prediction": None if prediction is None else {
            "label": prediction.predicted_label,
            "confidence": round(prediction.confidence, 4),
            "model_version": prediction.model_version.name,
        },
        "reason": task.reason,
        "reason_text": ReviewReason(task.reason).label,
        "strategy": task.strategy,
        "score": None if task.score is None or not math.isfinite(task.score) else round(task.score, 4),
        "rank": task.rank,
        "batch_id": task.batch_id,
        "golden": task.reason == ReviewReason.GOLDEN or task.item_id in golden_ids,
        "lease_expires_at": task.lease_expires_at.isoformat() if task.lease_expires_at else None,
    }


@login_required
@require_GET
def review_page(request: HttpRequest, slug: str) -> HttpResponse:
    project = selectors.project_find(slug)
    _allowed(request, project, Action.LABEL, f"no project {slug!r}")
    keyed = [{"key": LABEL_KEYS[i] if i < len(LABEL_KEYS) else "", "label": label}
             for i, label in enumerate(project.labels)]
    return render(request, "hitl/review.html", {
        "project": project, "keyed_labels": keyed, "labels": list(project.labels),
        "filter_labels": len(project.labels) > len(LABEL_KEYS),
        "lease_seconds": settings.HITL_REVIEW_LEASE_SECONDS,
    })


@login_required
@require_POST
def review_lease(request: HttpRequest, slug: str) -> JsonResponse:
    """Take (or renew) the reviewer's leases: the items in front of them, in queue order."""
    project = selectors.project_find(slug)
    refusal = _refusal(request, project, Action.LABEL, f"no project {slug!r}")
    if refusal is not None:
        return refusal
    tasks = review_leases_take(project=project, reviewer=request.user)
    golden = selectors.golden_item_ids([task.item_id for task in tasks])
    return JsonResponse({
        "tasks": [task_view(task, golden) for task in tasks],
        "waiting": selectors.review_waiting(project, request.user),
        "lease_seconds": settings.HITL_REVIEW_LEASE_SECONDS,
        "server_time": time.time(),
    })


def _lead_time(body: dict) -> float | None:
    return plausible_lead_time(body.get("lead_time_seconds"))


@login_required
@require_POST
def review_task_answer(request: HttpRequest, pk: int) -> JsonResponse:
    """Label the leased task (``{"value": ...}``) or skip it (``{"skip": true}``)."""
    refusal = _refusal(request, selectors.project_owning(ReviewTask, pk), Action.LABEL, f"no review task {pk}")
    if refusal is not None:
        return refusal
    task = ReviewTask.objects.select_related("prediction").get(pk=pk)
    try:
        body = _body(request)
        if task.status != ReviewTaskStatus.OPEN:
            raise Conflict(f"item {task.item_id} was already reviewed ({task.status})")
        if body.get("skip") is True:
            review_task_skip(review_task_id=task.id, reviewer=request.user)
            return JsonResponse({"task": task.id, "status": ReviewTaskStatus.SKIPPED, "label": None,
                                 "message": f"Skipped item {task.item_id}."})
        value = body.get("value")
        if not isinstance(value, str):
            raise InvalidInput.single("value", "send the label's name as a string, or skip: true")
        label = label_submit(item_id=task.item_id, value=value, source=LabelSource.WEB, reviewer=request.user,
                             review_task_id=task.id, lead_time_seconds=_lead_time(body))
    except InvalidInput as exc:
        return json_error(400, exc.errors[0].field, exc.errors[0].message)
    except Conflict as exc:
        return json_error(409, "", str(exc))
    predicted = task.prediction.predicted_label if task.prediction else None
    verb = "Accepted" if label.value == predicted else "Labeled"
    return JsonResponse({
        "task": task.id, "status": ReviewTaskStatus.DONE,
        "label": {"id": label.id, "value": label.value, "undo_url": reverse("web:label-undo", kwargs={"pk": label.id})},
        "message": f"{verb} '{label.value}' for item {task.item_id}.",
    })


@login_required
@require_POST
def label_undo_view(request: HttpRequest, pk: int) -> JsonResponse:
    """Take back one's own current label: the item comes back, leased to the reviewer."""
    refusal = _refusal(request, selectors.project_owning(Label, pk), Action.LABEL, f"no label {pk}")
    if refusal is not None:
        return refusal
    try:
        task = label_undo(label_id=pk, reviewer=request.user)
    except InvalidInput as exc:
        return json_error(400, exc.errors[0].field, exc.errors[0].message)
    except Conflict as exc:
        return json_error(409, "", str(exc))
    if task is None:
        return JsonResponse({"task": None, "message": f"Label {pk} withdrawn; its item waits elsewhere."})
    task = ReviewTask.objects.select_related("item", "batch", "prediction__model_version").get(pk=task.pk)
    return JsonResponse({
        "task": task_view(task, selectors.golden_item_ids([task.item_id])),
        "message": f"Undone: item {task.item_id} is back in front of you.",
    })


@login_required
@require_GET
def item_page(request: HttpRequest, pk: int) -> HttpResponse:
    _allowed(request, selectors.project_owning(Item, pk), Action.VIEW, f"no item {pk}")
    history = selectors.item_history(pk)
    if history is None:
        raise Http404(f"no item {pk}")
    return render(request, "hitl/item.html", {
        "project": history.item.project, "history": history, "item": history.item,
        "sources": dict(LabelSource.choices),
    })
