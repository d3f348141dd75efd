"""Keyboard-first review: one item at a time. The page loads once; its script (static
hitl/review.js) takes leases, labels, skips and undoes through the small JSON views below, each
checking the caller's role in the item's project and CSRF like every form. And the item page."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from hitl import selectors
from hitl.api.errors import json_error
from hitl.errors import Conflict, InvalidInput
from hitl.jsonpolicy import json_document
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
from hitl.services.agreement import (
    AnswerOutcome,
    review_answer_submit,
    review_answer_withdraw,
    review_conflict_resolve,
    review_task_needs_two,
)
from hitl.services.labels import label_undo, plausible_lead_time, review_task_skip
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


def json_refusals(view: Callable[..., JsonResponse]) -> Callable[..., JsonResponse]:
    """The page's JSON calls answer a bad request with a 400 naming the field, and a state that
    forbids it (already reviewed, leased to someone else) with a 409."""
    @functools.wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
        try:
            return view(request, *args, **kwargs)
        except InvalidInput as exc:
            return json_error(400, exc.errors[0].field, exc.errors[0].message)
        except Conflict as exc:
            return json_error(409, "", str(exc))
    return wrapped


def _body(request: HttpRequest) -> dict:
    """A JSON object body (what the page's script sends), or the form fields."""
    if request.content_type != "application/json":
        return request.POST.dict()
    body = json_document(request.body or b"{}")
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
        "blind": review_task_needs_two(task, fraction=task.batch.project.double_label_fraction,
                                       golden=task.item_id in golden_ids),
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
    })


def _lead_time(body: dict) -> float | None:
    return plausible_lead_time(body.get("lead_time_seconds"))


@login_required
@require_POST
@json_refusals
def review_task_answer(request: HttpRequest, pk: int) -> JsonResponse:
    """Label the leased task (``{"value": ...}``) or skip it (``{"skip": true}``)."""
    refusal = _refusal(request, selectors.project_owning(ReviewTask, pk), Action.LABEL, f"no review task {pk}")
    if refusal is not None:
        return refusal
    task = ReviewTask.objects.select_related("prediction").get(pk=pk)
    body = _body(request)
    if task.status != ReviewTaskStatus.OPEN:
        raise Conflict(f"item {task.item_id} was already reviewed ({task.status})")
    if body.get("skip") is True:
        review_task_skip(review_task_id=task.id, reviewer=request.user)
        return JsonResponse({"task": task.id, "outcome": "skipped", "undo": None,
                             "message": f"Skipped item {task.item_id}."})
    value = body.get("value")
    if not isinstance(value, str):
        raise InvalidInput.single("value", "send the label's name as a string, or skip: true")
    result = review_answer_submit(review_task_id=task.id, reviewer=request.user, value=value,
                                  lead_time_seconds=_lead_time(body))
    return JsonResponse({"task": task.id, **_outcome_view(task, value, result)})


def _outcome_view(task: ReviewTask, value: str, result: AnswerOutcome) -> dict:
    """The answer's outcome for the page: what happened, and what U would undo."""
    predicted = task.prediction.predicted_label if task.prediction else None
    verb = "Accepted" if value == predicted else "Labeled"
    texts = {
        "labeled": f"{verb} '{value}' for item {task.item_id}.",
        "waiting": f"Answered '{value}' for item {task.item_id}; a second reviewer answers it blind.",
        "agreed": f"{verb} '{value}' for item {task.item_id}: the two blind answers agree.",
        "conflict": f"Answered '{value}' for item {task.item_id}: the other reviewer answered differently, "
                    "a third person decides.",
    }
    undo = None
    if result.label is not None:
        undo = {"label": result.label.id, "url": reverse("web:label-undo", kwargs={"pk": result.label.id})}
    elif result.outcome == "waiting":
        undo = {"answer": result.answer.id, "url": reverse("web:answer-undo", kwargs={"pk": result.answer.id})}
    return {"outcome": result.outcome, "undo": undo, "message": texts[result.outcome],
            "label": None if result.label is None else {"id": result.label.id, "value": result.label.value}}


@login_required
@require_POST
@json_refusals
def label_undo_view(request: HttpRequest, pk: int) -> JsonResponse:
    """Take back one's own current label: the item comes back, leased to the reviewer."""
    refusal = _refusal(request, selectors.project_owning(Label, pk), Action.LABEL, f"no label {pk}")
    if refusal is not None:
        return refusal
    task = label_undo(label_id=pk, reviewer=request.user)
    if task is None:
        return JsonResponse({"task": None, "message": f"Label {pk} withdrawn; its item waits elsewhere."})
    return _back_in_front(task)


def _back_in_front(task: ReviewTask) -> JsonResponse:
    """The page's view of a task an undo put back in front of the reviewer."""
    task = ReviewTask.objects.select_related("item", "batch__project", "prediction__model_version").get(pk=task.pk)
    return JsonResponse({
        "task": task_view(task, selectors.golden_item_ids([task.item_id])),
        "message": f"Undone: item {task.item_id} is back in front of you.",
    })


@login_required
@require_POST
@json_refusals
def answer_undo_view(request: HttpRequest, pk: int) -> JsonResponse:
    """Take back one's blind first answer while its task still waits for the second."""
    project = Project.objects.filter(items__review_tasks__answers__pk=pk).first()
    refusal = _refusal(request, project, Action.LABEL, f"no answer {pk}")
    if refusal is not None:
        return refusal
    task = review_answer_withdraw(answer_id=pk, reviewer=request.user)
    return _back_in_front(task)


@login_required
@require_GET
def conflicts_page(request: HttpRequest, slug: str) -> HttpResponse:
    project = selectors.project_find(slug)
    can = _allowed(request, project, Action.VIEW, f"no project {slug!r}")
    rows = [{"task": task, "answers": list(task.answers.all())} for task in selectors.conflicts_queue(project)]
    return render(request, "hitl/review_conflicts.html", {
        "project": project, "rows": rows, "labels": list(project.labels), "can": can,
    })


@login_required
@require_POST
def conflict_decide(request: HttpRequest, pk: int) -> HttpResponse:
    """A third person's decision for a conflict (a form on the conflicts page)."""
    project = selectors.project_owning(ReviewTask, pk)
    _allowed(request, project, Action.LABEL, f"no review task {pk}")
    try:
        label = review_conflict_resolve(review_task_id=pk, decider=request.user, value=request.POST.get("value", ""))
        messages.success(request, f"Decided '{label.value}' for item {label.item_id}.")
    except (InvalidInput, Conflict) as exc:
        messages.error(request, str(exc))
    return redirect("web:conflicts", slug=project.slug)


@login_required
@require_GET
def reviewers_page(request: HttpRequest, slug: str) -> HttpResponse:
    project = selectors.project_find(slug)
    _allowed(request, project, Action.VIEW, f"no project {slug!r}")
    return render(request, "hitl/review_reviewers.html", {
        "project": project, "stats": selectors.reviewer_stats(project),
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
