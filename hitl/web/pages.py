"""The workbench pages (issue 11): a project's dashboard, its model registry, its trust history,
a cycle's live progress and snapshot pictures. Thin views: access check, selectors, chart data
(hitl.web.charts), render."""

from __future__ import annotations

import logging

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import (
    FileResponse,
    Http404,
    HttpRequest,
    HttpResponse,
    JsonResponse,
    StreamingHttpResponse,
)
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from hitl import selectors
from hitl.errors import Conflict
from hitl.media import ImageRejected, model_artifact_file
from hitl.models import EvaluationSet, EvaluationSnapshot, Project, RetrainingCycle
from hitl.services.access import Action
from hitl.services.cycles import cycle_cancel
from hitl.services.trust import trust_export, trust_status, trust_verify_requested
from hitl.web import charts
from hitl.web.views import _allowed

log = logging.getLogger(__name__)
TRUST_EVENTS_SHOWN = 200
ARTIFACT_FILES = {"weights": "model.safetensors", "onnx": "model.onnx"}


def _project(request: HttpRequest, slug: str, action: Action = Action.VIEW) -> tuple[Project, set[str]]:
    project = selectors.project_find(slug)
    can = _allowed(request, project, action, f"no project {slug!r}")
    return project, can


@login_required
def dashboard(request: HttpRequest, slug: str) -> HttpResponse:
    project, can = _project(request, slug)
    production = selectors.production_version(project.id)
    golden = selectors.golden_snapshots_newest(project).get(production.pk) if production else None
    return render(request, "hitl/dashboard.html", {
        "project": project, "can": can, "production": production, "golden": golden,
        "live": selectors.live_accuracy(project, production), "queue": selectors.review_queue_sizes(project),
        "summary": selectors.project_summary(project), "cycle": selectors.cycle_newest(project),
        "alerts": selectors.open_alerts(project),
        "drift_chart": charts.drift_sparkline(selectors.drift_history(project)),
        "accuracy_chart": charts.accuracy_over_time(selectors.golden_accuracy_history(project),
                                                    selectors.audit_accuracy_history(project)),
    })


@login_required
def models(request: HttpRequest, slug: str) -> HttpResponse:
    project, can = _project(request, slug)
    return render(request, "hitl/models.html", {
        "project": project, "can": can, "rows": selectors.model_registry(project),
    })


@login_required
def model_artifact(request: HttpRequest, slug: str, name: str, kind: str) -> FileResponse:
    """A model version's weights or ONNX graph, for a member who may see the project."""
    project, _ = _project(request, slug)
    missing = Http404(f"{name[:64]!r} has no {kind[:16]!r} artifact")
    if kind not in ARTIFACT_FILES or len(name) > 64 or "\x00" in name:  # no such name, and none to query
        raise missing
    artifact = selectors.model_artifact_find(project, name=name, kind=kind)
    if artifact is None:
        raise missing
    try:
        handle = model_artifact_file(artifact.path)  # FileResponse closes it
    except (ImageRejected, FileNotFoundError) as exc:
        log.warning("model artifact %s of %s refused: %s", artifact.path, name, exc)
        raise missing from None
    response = FileResponse(handle, as_attachment=True,
                            filename=f"{project.slug}-{name}-{ARTIFACT_FILES[kind]}",
                            content_type="application/octet-stream")
    response["X-Content-SHA256"] = artifact.sha256
    return response


@login_required
def trust(request: HttpRequest, slug: str) -> HttpResponse:
    project, can = _project(request, slug)
    return render(request, "hitl/trust.html", {
        "project": project, "can": can, "check": trust_status(project_id=project.id),
        "events": selectors.trust_events_newest(project, TRUST_EVENTS_SHOWN), "shown": TRUST_EVENTS_SHOWN,
        "accuracy_chart": charts.accuracy_over_time(selectors.golden_accuracy_history(project),
                                                    selectors.audit_accuracy_history(project)),
    })


@login_required
@require_POST
def trust_verify_page(request: HttpRequest, slug: str) -> HttpResponse:
    """Verify the whole chain now (beat does it every HITL_TRUST_FULL_CHECK_SECONDS)."""
    project, _ = _project(request, slug, Action.VERIFY_TRUST)
    check = trust_verify_requested(project_id=project.id)
    if check is None:
        messages.info(request, "The chain was verified in full moments ago; its result is below.")
    elif check.ok:
        messages.success(request, f"Verified all {check.events} events: links, hashes, signatures and the external "
                                  "head hold.")
    else:
        messages.error(request, f"The chain is broken at event {check.first_bad_sequence} ({check.cause}).")
    return redirect("web:trust", slug=project.slug)


@login_required
def trust_export_download(request: HttpRequest, slug: str) -> StreamingHttpResponse:
    """The whole signed chain as JSON lines (what ``manage.py hitl export-trust`` writes)."""
    project, _ = _project(request, slug)
    lines = (line + "\n" for line in trust_export(project_id=project.id))
    response = StreamingHttpResponse(lines, content_type="application/x-ndjson")
    response["Content-Disposition"] = f'attachment; filename="{project.slug}-trust.jsonl"'
    return response


@login_required
def cycle_progress(request: HttpRequest, pk: int) -> JsonResponse:
    _allowed(request, selectors.project_owning(RetrainingCycle, pk), Action.VIEW, f"no cycle {pk}")
    return JsonResponse(charts.cycle_progress(get_object_or_404(RetrainingCycle, pk=pk)))


@login_required
@require_POST
def cycle_cancel_page(request: HttpRequest, pk: int) -> HttpResponse:
    _allowed(request, selectors.project_owning(RetrainingCycle, pk), Action.CANCEL_CYCLE, f"no cycle {pk}")
    try:
        cycle = cycle_cancel(cycle_id=pk, actor=request.user.get_username())
        messages.success(request, f"Cycle {cycle.number} cancelled.")
    except Conflict as exc:
        messages.error(request, str(exc))
    return redirect("web:cycle", pk=pk)


@login_required
def cycle_detail(request: HttpRequest, pk: int) -> HttpResponse:
    can = _allowed(request, selectors.project_owning(RetrainingCycle, pk), Action.VIEW, f"no cycle {pk}")
    cycle = get_object_or_404(RetrainingCycle.objects.select_related("project", "base_version", "candidate_version"),
                              pk=pk)
    return render(request, "hitl/cycle_detail.html", {
        "cycle": cycle, "project": cycle.project, "can": can,
        "rollback_choices": selectors.rollback_choices(cycle.project), **cycle_charts(cycle),
    })


def cycle_charts(cycle: RetrainingCycle) -> dict:
    """The cycle page's pictures: per snapshot a heatmap and recall intervals; the candidate's
    reliability diagram; candidate-vs-production deltas on the golden set; live progress."""
    snapshots = list(cycle.snapshots.select_related("model_version", "golden_set").order_by("eval_set", "role"))
    golden = {s.role: s for s in snapshots if s.eval_set == EvaluationSet.GOLDEN}
    candidate = cycle.candidate_version
    return {
        "progress": charts.cycle_progress(cycle),
        "snapshot_charts": [_snapshot_charts(s) for s in snapshots],
        "reliability": charts.reliability(candidate.calibration, golden.get("candidate")) if candidate else None,
        "deltas": (charts.candidate_deltas(golden["candidate"], golden["production"])
                   if {"candidate", "production"} <= golden.keys() else None),
    }


def _snapshot_charts(snapshot: EvaluationSnapshot) -> dict:
    key = f"{snapshot.eval_set}-{snapshot.role}"
    return {"snapshot": snapshot, "key": key,
            "heatmap": charts.confusion_heatmap(snapshot.metrics), "heatmap_id": f"confusion-{key}",
            "recall": charts.recall_intervals(snapshot), "recall_id": f"recall-{key}",
            "per_class": [{"label": label, **values} for label, values in snapshot.metrics["per_class"].items()]}
