"""Monitoring deployed models, one time window at a time (Celery beat runs ``project_monitor``
for every project; ``manage.py hitl monitor --project P`` runs it at once).

Per deployment and window: the prediction volume, and the drift of its model's predicted-class
mix and confidences against that model version's **reference** (PSI over classes, PSI over
binned confidences, two-sample KS on confidences; ``hitl.drift``). The reference is the
version's earliest ``reference_size`` predictions by arrival (hitl's own run over the pool when
it was promoted, then its deployments' first reports), recorded once on the first run that finds
enough of them and never recomputed.
Per model version and window: live accuracy from the random audit slice with its 95% interval
(``selectors.audit_accuracy``, every audit label given before the window ends) and how often
reviewers' labels in the window agreed with the model's pre-annotation. Where a version serves
more than one deployment, each deployment's window also gets both, from its own predictions
only, so an edge site doing worse than the cloud shows (and alerts) by itself.

A metric past the project's threshold (``Project.monitoring``, ``hitl.monitorspec``) raises an
alert; a run that raised any takes the project's action once (a review batch or a retraining
cycle, not again within the cool-down) and queues one notification per alert (email and signed
webhook, ``hitl.services.alerts``). The last *complete* window is judged, and with it the
windows missed since the project's last judged one (beat or the workers were down), up to
``HITL_MONITOR_CATCH_UP_WINDOWS`` of them; a window's rows are unique, so running twice (or in parallel) measures
and alerts once.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max, Q
from django.utils import timezone

from hitl import drift
from hitl.errors import Conflict, InvalidInput
from hitl.models import (
    Alert,
    AlertAction,
    AlertMetric,
    Deployment,
    Label,
    LabelSource,
    ModelVersion,
    MonitoringReference,
    MonitorWindow,
    Prediction,
    Project,
    RetrainingCycle,
    ReviewBatch,
)
from hitl.monitorspec import monitoring_rules
from hitl.selectors import audit_accuracy
from hitl.services.cycles import cycle_request
from hitl.services.queue import enqueue
from hitl.services.selection import review_batch_request

ACTOR = "monitor"
REFERENCE_SAMPLE = 2000  # confidences a reference keeps for the KS test
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Crossing:
    metric: AlertMetric
    value: float
    threshold: float
    message: str


@dataclass
class MonitorRun:
    project: str
    window_start: datetime  # the last complete window
    window_end: datetime
    windows_measured: int = 0
    missed_windows: int = 0  # earlier windows no run had judged, judged by this one
    alert_ids: list[int] = field(default_factory=list)
    action: str = AlertAction.NONE
    action_detail: str = ""


def window_bounds(*, now: datetime, minutes: int) -> tuple[datetime, datetime]:
    """The last complete window before ``now``: windows are ``minutes`` long and aligned to
    multiples of their length since the Unix epoch, so every run agrees on them."""
    length = minutes * 60
    end = datetime.fromtimestamp(int(now.timestamp()) // length * length, tz=UTC)
    return end - timedelta(seconds=length), end


def windows_due(project: Project, *, now: datetime, minutes: int) -> list[tuple[datetime, datetime]]:
    """The windows a run at ``now`` judges, oldest first: the last complete one, and before it
    those that ended after the project's newest judged window (at most ``HITL_MONITOR_CATCH_UP_WINDOWS`` in all).
    A project never judged starts with the last complete window."""
    start, end = window_bounds(now=now, minutes=minutes)
    newest = MonitorWindow.objects.filter(project=project).aggregate(end=Max("window_end"))["end"]
    length = end - start
    missed = 0 if newest is None or newest >= start else int((start - newest) / length)
    count = min(settings.HITL_MONITOR_CATCH_UP_WINDOWS, missed + 1)
    return [(start - length * k, end - length * k) for k in reversed(range(count))]


def reference_record(*, version: ModelVersion, size: int) -> MonitoringReference | None:
    """The version's reference, recorded from its earliest ``size`` predictions the first time
    there are that many; None until then. Once recorded it is read, never rebuilt."""
    existing = MonitoringReference.objects.filter(model_version=version).first()
    if existing is not None:
        return existing
    rows = list(Prediction.objects.filter(model_version=version).order_by("received_at", "id")
                .values_list("predicted_label", "confidence", "received_at")[:size])
    if len(rows) < size:
        return None
    index = {label: i for i, label in enumerate(version.labels)}
    confidences = np.clip([r[1] for r in rows], 0.0, 1.0)
    try:
        with transaction.atomic():
            return MonitoringReference.objects.create(
                model_version=version, n_predictions=len(rows),
                class_counts=drift.class_counts(np.array([index[r[0]] for r in rows]), len(version.labels)).tolist(),
                confidence_counts=drift.confidence_histogram(confidences).tolist(),
                confidence_sample=drift.sample_evenly(confidences, REFERENCE_SAMPLE).tolist(),
                first_received_at=rows[0][2], last_received_at=rows[-1][2],
            )
    except IntegrityError:  # another run recorded it first: theirs stands
        return MonitoringReference.objects.get(model_version=version)


def _drift_metrics(reference: MonitoringReference, version: ModelVersion, labels: list[str],
                   confidences: np.ndarray) -> dict:
    index = {label: i for i, label in enumerate(version.labels)}
    classes = drift.class_counts(np.array([index[x] for x in labels]), len(version.labels))
    bins = drift.confidence_histogram(confidences)
    ks = drift.ks_two_sample(reference.confidence_sample, confidences)
    return {
        "class_psi": drift.psi(reference.class_counts, classes), "class_counts": classes.tolist(),
        "confidence_psi": drift.psi(reference.confidence_counts, bins), "confidence_counts": bins.tolist(),
        "confidence_ks": ks.statistic, "ks_p_value": ks.p_value,
        "mean_confidence": float(confidences.mean()),
        "reference_mean_confidence": float(np.mean(reference.confidence_sample)),
    }


def deployment_window_metrics(*, deployment: Deployment, version: ModelVersion, start: datetime, end: datetime,
                              rules: dict, quality: bool = False) -> dict:
    """Volume (every prediction the deployment sent in [start, end), whichever version made it)
    and drift of those ``version`` made; with ``quality``, the deployment's own live accuracy and
    reviewer agreement too (``quality_metrics``)."""
    sent = list(Prediction.objects.filter(deployment=deployment, received_at__gte=start, received_at__lt=end)
                .values_list("predicted_label", "confidence", "model_version_id"))
    rows = [(label, confidence) for label, confidence, made_by in sent if made_by == version.id]
    metrics: dict = {"predictions": len(sent), "version_predictions": len(rows), "judged": False}
    reference = reference_record(version=version, size=rules["reference_size"])
    if reference is None:
        metrics["not_judged"] = f"no reference yet: {version.name} has fewer than {rules['reference_size']} predictions"
    elif len(rows) < rules["min_window_predictions"]:
        metrics["not_judged"] = f"{len(rows)} predictions, fewer than {rules['min_window_predictions']}"
    else:
        confidences = np.clip(np.array([r[1] for r in rows], dtype=np.float64), 0.0, 1.0)
        metrics.update(judged=True, reference_predictions=reference.n_predictions,
                       **_drift_metrics(reference, version, [r[0] for r in rows], confidences))
    if quality:
        metrics.update(quality_metrics(project=deployment.project, version=version, start=start, end=end,
                                       deployment=deployment))
    return metrics


def quality_metrics(*, project: Project, version: ModelVersion, start: datetime, end: datetime,
                    deployment: Deployment | None = None) -> dict:
    """Live accuracy (audit labels given before ``end``) and reviewer agreement (labels given in
    [start, end) on this version's pre-annotations) of one model version, or of the predictions
    one ``deployment`` of it reported."""
    estimate = next((e for e in audit_accuracy(project, until=end, deployment=deployment)
                     if e.model_version == version.name), None)
    reviewed = Label.objects.filter(prediction__model_version=version, created_at__gte=start, created_at__lt=end)
    if deployment is not None:
        reviewed = reviewed.filter(prediction__deployment=deployment)
    reviewed = reviewed.exclude(source=LabelSource.IMPORT)
    values = list(reviewed.values_list("value", "prediction__predicted_label"))
    agreed = sum(value == predicted for value, predicted in values)
    return {
        "live_accuracy": None if estimate is None else {
            "n": estimate.n, "correct": estimate.correct, "accuracy": estimate.accuracy,
            "low": estimate.low, "high": estimate.high},
        "reviewer_agreement": {"n": len(values), "agreed": agreed,
                               "rate": agreed / len(values) if values else None},
    }


def deployment_crossings(metrics: dict, rules: dict) -> list[Crossing]:
    found = []
    floor = rules["min_predictions_per_window"]
    if floor is not None and metrics["predictions"] < floor:
        found.append(Crossing(AlertMetric.PREDICTION_VOLUME, metrics["predictions"], floor,
                              f"{metrics['predictions']} predictions in the window, fewer than {floor}"))
    if "live_accuracy" in metrics:
        found += quality_crossings(metrics, rules)
    if not metrics["judged"]:
        return found
    for metric, rule, what in ((AlertMetric.CLASS_PSI, "max_class_psi", "predicted-class mix"),
                               (AlertMetric.CONFIDENCE_PSI, "max_confidence_psi", "confidence distribution")):
        limit = rules[rule]
        if limit is not None and metrics[metric] > limit:
            found.append(Crossing(metric, metrics[metric], limit,
                                  f"PSI of the {what} against the reference {metrics[metric]:.3f}, above {limit}"))
    limit = rules["max_confidence_ks"]
    if limit is not None and metrics["confidence_ks"] > limit and metrics["ks_p_value"] < rules["ks_p_value"]:
        found.append(Crossing(AlertMetric.CONFIDENCE_KS, metrics["confidence_ks"], limit,
                              f"KS statistic of confidences {metrics['confidence_ks']:.3f} above {limit} "
                              f"(p = {metrics['ks_p_value']:.2g}); mean confidence {metrics['mean_confidence']:.3f}, "
                              f"reference {metrics['reference_mean_confidence']:.3f}"))
    return found


def quality_crossings(metrics: dict, rules: dict) -> list[Crossing]:
    found = []
    accuracy, floor = metrics["live_accuracy"], rules["min_live_accuracy"]
    if floor is not None and accuracy and accuracy["n"] >= rules["min_audit_labels"] and accuracy["high"] < floor:
        found.append(Crossing(AlertMetric.LIVE_ACCURACY, accuracy["accuracy"], floor,
                              f"live accuracy {accuracy['accuracy']:.3f} from {accuracy['n']} audit labels, 95% "
                              f"interval {accuracy['low']:.3f}-{accuracy['high']:.3f}, entirely below {floor}"))
    agreement, floor = metrics["reviewer_agreement"], rules["min_reviewer_agreement"]
    if floor is not None and agreement["n"] >= rules["min_agreement_labels"] and agreement["rate"] < floor:
        found.append(Crossing(AlertMetric.REVIEWER_AGREEMENT, agreement["rate"], floor,
                              f"reviewers agreed with the model on {agreement['agreed']} of {agreement['n']} "
                              f"labels ({agreement['rate']:.3f}), below {floor}"))
    return found


def _measure(project: Project, rules: dict, start: datetime, end: datetime) -> int:
    """Measure every window of the project not measured yet, raising its alerts; returns how
    many windows were measured."""
    measured = 0
    deployments = list(project.deployments.select_related("model_version").order_by("id"))
    targets: list[tuple[Deployment | None, ModelVersion]] = [(d, d.model_version) for d in deployments]
    versions = {d.model_version_id: d.model_version for d in deployments}
    targets += [(None, v) for _, v in sorted(versions.items())]
    reported: dict[int, int] = {}  # predictions each version's deployments sent in the window
    serving = Counter(d.model_version_id for d in deployments)
    for deployment, version in targets:
        if deployment is not None and end <= deployment.created_at:
            continue  # a window missed before the deployment existed
        if MonitorWindow.objects.filter(Q(deployment=deployment) if deployment else Q(deployment__isnull=True,
                                        model_version=version), window_start=start).exists():
            continue
        if deployment is not None:
            metrics = deployment_window_metrics(deployment=deployment, version=version, start=start, end=end,
                                                rules=rules, quality=serving[version.id] > 1)
            crossings, n = deployment_crossings(metrics, rules), metrics["predictions"]
            reported[version.id] = reported.get(version.id, 0) + metrics["version_predictions"]
        else:
            metrics = quality_metrics(project=project, version=version, start=start, end=end)
            crossings, n = quality_crossings(metrics, rules), reported.get(version.id, 0)
        window = MonitorWindow.objects.create(project=project, deployment=deployment, model_version=version,
                                              window_start=start, window_end=end, n_predictions=n, metrics=metrics)
        measured += 1
        Alert.objects.bulk_create([Alert(
            project=project, deployment=deployment, model_version=version, window=window, window_start=start,
            window_end=end, metric=c.metric, value=float(c.value), threshold=float(c.threshold),
            message=f"{deployment.name if deployment else version.name}: {c.message}",
        ) for c in crossings])
    return measured


def _recent_action(project: Project, action: str, cooldown_minutes: int) -> Alert | None:
    since = timezone.now() - timedelta(minutes=cooldown_minutes)
    acted = Alert.objects.filter(project=project, action=action, created_at__gte=since)
    return acted.filter(Q(review_batch__isnull=False) | Q(cycle__isnull=False)).order_by("-created_at").first()


def _act(project: Project, rules: dict) -> tuple[str, str, ReviewBatch | None, RetrainingCycle | None]:
    """The project's action for a run that raised alerts: at most once per cool-down."""
    action = rules["action"]
    if action == AlertAction.NONE:
        return action, "the project's monitoring action is none", None, None
    earlier = _recent_action(project, action, rules["action_cooldown_minutes"])
    if earlier is not None:
        what = f"review batch {earlier.review_batch_id}" if earlier.review_batch_id else f"cycle {earlier.cycle_id}"
        return (action, f"{what} was scheduled by alert {earlier.id} at {earlier.created_at:%Y-%m-%d %H:%M} UTC, "
                f"within the cool-down of {rules['action_cooldown_minutes']} minutes",
                earlier.review_batch, earlier.cycle)
    if action == AlertAction.REVIEW_BATCH:
        try:
            batch = review_batch_request(project=project, requested_by=ACTOR, size=rules["review_batch_size"])
        except InvalidInput as exc:
            return action, f"no review batch: {exc}", None, None
        return action, f"scheduled review batch {batch.id} ({batch.strategy}, {batch.size} items)", batch, None
    try:
        cycle = cycle_request(project=project, requested_by=ACTOR)
    except Conflict as exc:
        return action, f"no new retraining cycle: {exc}", None, None
    return action, f"started retraining cycle {cycle.number}", None, cycle


def project_monitor(*, project_id: int, now: datetime | None = None) -> MonitorRun:
    """Judge the project's last complete window (at ``now``, default the current time) and the
    windows missed before it (``windows_due``), each in its own transaction (a long catch-up
    keeps what it measured), then take the project's action once for all the new alerts. Safe to
    run twice or in parallel: the project row is locked while a window is measured or the action
    taken, and a window already measured is not measured or alerted on again."""
    project = Project.objects.get(pk=project_id)
    rules = monitoring_rules(project.monitoring)
    due = windows_due(project, now=now or timezone.now(), minutes=rules["window_minutes"])
    run = MonitorRun(project=project.slug, window_start=due[-1][0], window_end=due[-1][1],
                     missed_windows=len(due) - 1)
    if not rules["enabled"]:
        run.action_detail = "monitoring is off for this project"
        return run
    for start, end in due:
        with transaction.atomic():
            project = Project.objects.select_for_update().get(pk=project_id)
            run.windows_measured += _measure(project, rules, start, end)
    with transaction.atomic():
        project = Project.objects.select_for_update().get(pk=project_id)
        # every alert no run has acted on yet: this run's, and any a run that died after
        # measuring left behind (an alert is acted on exactly once: action_detail is then set)
        alerts = list(Alert.objects.filter(project=project, action_detail="").order_by("id"))
        if not alerts:
            return run
        run.action, run.action_detail, batch, cycle = _act(project, rules)
        Alert.objects.filter(pk__in=[a.pk for a in alerts]).update(
            action=run.action, action_detail=run.action_detail, review_batch=batch, cycle=cycle)
        if rules["notify_emails"] or rules["webhook_url"]:
            for alert in newest_of_each_kind(alerts):
                enqueue("workers.tasks.alert_notify", alert.pk)
    run.alert_ids = [a.pk for a in alerts]
    log.warning("%s: %d alert(s) up to the window %s-%s (%d missed windows judged too); %s", project.slug,
                len(alerts), run.window_start, run.window_end, run.missed_windows, run.action_detail)
    return run


def newest_of_each_kind(alerts: list[Alert]) -> list[Alert]:
    """The alerts people are told about: the newest window's alert for each deployment (or model
    version) and metric. A catch-up over many missed windows notifies once per kind, not once
    per window; the alerts page lists them all."""
    newest: dict[tuple, Alert] = {}
    for alert in sorted(alerts, key=lambda a: a.window_start):
        newest[(alert.deployment_id, alert.model_version_id, alert.metric)] = alert
    return sorted(newest.values(), key=lambda a: a.pk)


def projects_to_monitor() -> list[int]:
    """Projects with at least one deployment (monitoring switched off is checked per run)."""
    return list(Project.objects.filter(deployments__isnull=False).distinct().order_by("id").values_list("id", flat=True))
