"""The reviewer web UI: thin views handing ready-made context to templates."""

from __future__ import annotations

import time

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from hitl import selectors
from hitl.errors import Conflict, InvalidInput
from hitl.models import (
    Project,
    ProjectRole,
    RetrainingCycle,
    ReviewTask,
    ReviewTaskStatus,
)
from hitl.services.access import Action, NotAMember, RoleTooLow, actions_allowed, role_required
from hitl.services.agreement import review_answer_submit
from hitl.services.cycles import cycle_approve, cycle_reject, model_version_rollback
from hitl.services.labels import plausible_lead_time, review_task_skip

QUEUE_PAGE_SIZE = 24


def _allowed(
    request: HttpRequest, project: Project | None, action: Action, missing: str,
) -> set[str]:
    """Check the user's role in the project; returns what the role may do, for the template. A
    non-member sees the same 404 as for something that does not exist."""
    if project is None:
        raise Http404(missing)
    try:
        role = role_required(project=project, user=request.user, action=action)
    except NotAMember:
        raise Http404(missing) from None
    except RoleTooLow as exc:
        raise PermissionDenied(str(exc)) from None
    return actions_allowed(role)


@login_required
def projects(request: HttpRequest) -> HttpResponse:
    rows = [
        {"project": p, "role": ProjectRole(p.role).label, "summary": selectors.project_summary(p),
         "audit": selectors.audit_accuracy(p)}
        for p in selectors.projects_visible(request.user)
    ]
    return render(request, "hitl/projects.html", {"rows": rows})


@login_required
def review_queue(request: HttpRequest, slug: str) -> HttpResponse:
    project = selectors.project_find(slug)
    can = _allowed(request, project, Action.VIEW, f"no project {slug!r}")
    page = Paginator(selectors.review_queue(project), QUEUE_PAGE_SIZE).get_page(request.GET.get("page"))
    return render(request, "hitl/review_queue.html", {
        "project": project, "page": page, "labels": project.labels, "shown_at": f"{time.time():.3f}",
        "can": can,
    })


def _lead_time(request: HttpRequest) -> float | None:
    try:
        return plausible_lead_time(time.time() - float(request.POST.get("shown_at", "")))
    except ValueError:
        return None


@login_required
@require_POST
def review_task_label(request: HttpRequest, pk: int) -> HttpResponse:
    project = selectors.project_owning(ReviewTask, pk)
    _allowed(request, project, Action.LABEL, f"no review task {pk}")
    task = get_object_or_404(ReviewTask.objects.select_related("batch__project", "prediction"), pk=pk)
    slug = task.batch.project.slug
    if task.status != ReviewTaskStatus.OPEN:
        messages.info(request, f"Item {task.item_id} was already reviewed.")
        return redirect("web:review-queue", slug=slug)
    try:
        if request.POST.get("action") == "skip":
            review_task_skip(review_task_id=task.id, reviewer=request.user)
            messages.info(request, f"Skipped item {task.item_id}.")
            return redirect("web:review-queue", slug=slug)
        # the same path as the one-at-a-time page: blind double answers and conflicts included
        result = review_answer_submit(review_task_id=task.id, reviewer=request.user, value=request.POST.get("value", ""),
                                      lead_time_seconds=_lead_time(request))
    except (InvalidInput, Conflict) as exc:
        messages.error(request, str(exc))
        return redirect("web:review-queue", slug=slug)
    if result.label is None:
        messages.info(request, f"Answered '{result.answer.value}' for item {task.item_id}: "
                               + ("a second reviewer answers it blind." if result.outcome == "waiting"
                                  else "the other reviewer answered differently, a third person decides."))
    else:
        predicted = task.prediction.predicted_label if task.prediction else None
        verb = "Accepted" if result.label.value == predicted else "Corrected to"
        messages.success(request, f"{verb} '{result.label.value}' for item {task.item_id}.")
    page = request.POST.get("page", "1")
    return redirect(f"{reverse('web:review-queue', kwargs={'slug': slug})}?page={page if page.isdigit() else 1}")


@login_required
def cycles(request: HttpRequest, slug: str) -> HttpResponse:
    project = selectors.project_find(slug)
    _allowed(request, project, Action.VIEW, f"no project {slug!r}")
    rows = []
    for cycle in selectors.cycles_list(project):
        # the golden set's snapshots are the ones that decide: shown before the hard cases
        by_role = {s.role: s for s in sorted(cycle.snapshots.all(), key=lambda s: s.eval_set == "golden")}
        rows.append({"cycle": cycle, "candidate": by_role.get("candidate"), "production": by_role.get("production")})
    return render(request, "hitl/cycles.html", {"project": project, "rows": rows})


@login_required
@require_POST
def cycle_decide(request: HttpRequest, pk: int) -> HttpResponse:
    """Approve or reject a candidate that waits, from the cycle page."""
    _allowed(request, selectors.project_owning(RetrainingCycle, pk), Action.APPROVE, f"no cycle {pk}")
    decide = cycle_approve if request.POST.get("decision") == "approve" else cycle_reject
    try:
        cycle = decide(cycle_id=pk, actor=request.user.get_username(), reason=request.POST.get("reason", ""))
        messages.success(request, f"Cycle {cycle.number}: {cycle.decision_reason}")
    except (InvalidInput, Conflict) as exc:
        messages.error(request, str(exc))
    return _back(request, reverse("web:cycle", kwargs={"pk": pk}))


@login_required
@require_POST
def rollback(request: HttpRequest, slug: str) -> HttpResponse:
    project = selectors.project_find(slug)
    _allowed(request, project, Action.ROLLBACK, f"no project {slug!r}")
    try:
        version = model_version_rollback(project=project, name=request.POST.get("model_version", ""),
                                         actor=request.user.get_username(), reason=request.POST.get("reason", ""))
        messages.success(request, f"{version.name} is production again.")
    except (InvalidInput, Conflict) as exc:
        messages.error(request, str(exc))
    return _back(request, reverse("web:cycles", kwargs={"slug": slug}))


def _back(request: HttpRequest, default: str) -> HttpResponse:
    """Back to the page the form was on (``next``, a path on this site), else ``default``."""
    wanted = request.POST.get("next", "")
    safe = wanted.startswith("/") and url_has_allowed_host_and_scheme(wanted, allowed_hosts={request.get_host()})
    return redirect(wanted if safe else default)
