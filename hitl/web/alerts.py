"""The monitoring page: a project's alerts (open first), what each did, and acknowledging them."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from hitl import selectors
from hitl.errors import InvalidInput
from hitl.models import Alert, AlertStatus
from hitl.monitorspec import monitoring_rules
from hitl.services.access import Action
from hitl.services.alerts import alert_acknowledge
from hitl.web.views import _allowed

ALERTS_PAGE_SIZE = 50


@login_required
def alerts(request: HttpRequest, slug: str) -> HttpResponse:
    project = selectors.project_find(slug)
    can = _allowed(request, project, Action.VIEW, f"no project {slug!r}")
    page = Paginator(selectors.alerts_list(project).order_by("-status", "-created_at", "-id"),  # open first
                     ALERTS_PAGE_SIZE).get_page(request.GET.get("page"))
    return render(request, "hitl/alerts.html", {
        "project": project, "page": page, "can": can, "rules": monitoring_rules(project.monitoring),
        "open_count": selectors.alerts_list(project, status=AlertStatus.OPEN).count(),
        "windows": selectors.monitor_windows_list(project)[:20],
    })


@login_required
@require_POST
def alert_acknowledge_view(request: HttpRequest, pk: int) -> HttpResponse:
    project = selectors.project_owning(Alert, pk)
    _allowed(request, project, Action.ACKNOWLEDGE_ALERT, f"no alert {pk}")
    try:
        alert = alert_acknowledge(alert_id=pk, user=request.user, note=request.POST.get("note", ""))
        messages.success(request, f"Alert {alert.pk} acknowledged by {alert.acknowledged_by_name}.")
    except InvalidInput as exc:
        messages.error(request, str(exc))
    return redirect("web:alerts", slug=project.slug)
