"""Reads: the querysets views, the API and commands show."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from django.contrib.auth.models import AbstractBaseUser
from django.db import connection
from django.db.models import Count, Exists, F, OuterRef, Prefetch, Q, QuerySet
from django.utils import timezone

from hitl.db import Median
from hitl.media import media_path
from hitl.models import (
    Alert,
    ArtifactKind,
    Deployment,
    EvaluationSet,
    EvaluationSnapshot,
    GoldenItem,
    GoldenSet,
    Item,
    Label,
    LabelStatus,
    ModelArtifact,
    ModelStage,
    ModelVersion,
    MonitorWindow,
    Prediction,
    Project,
    ProjectMembership,
    RetrainingCycle,
    ReviewAnswer,
    ReviewBatch,
    ReviewBatchStatus,
    ReviewReason,
    ReviewTask,
    ReviewTaskStatus,
    TrustEvent,
)


def production_version(project_id: int) -> ModelVersion | None:
    return ModelVersion.objects.filter(project_id=project_id, stage=ModelStage.PRODUCTION).first()


def model_weights_file(version: ModelVersion) -> tuple[Path, str]:
    """Where a version's safetensors weights lie, and the sha256 recorded for them."""
    artifact = ModelArtifact.objects.get(model_version=version, kind=ArtifactKind.WEIGHTS)
    return media_path(artifact.path), artifact.sha256


def project_find(slug: str) -> Project | None:
    return Project.objects.filter(slug=slug).first()


def is_person(user: object) -> bool:
    """An active, signed-in user: not anonymous, not a deployment token."""
    return isinstance(user, AbstractBaseUser) and user.is_active


def projects_visible(user: object) -> QuerySet[Project]:
    """The projects a person is a member of (staff or not), each with the person's ``role``;
    none for anyone else."""
    if not is_person(user):
        return Project.objects.none()
    mine = Project.objects.filter(memberships__user=user)
    return mine.annotate(role=F("memberships__role")).order_by("slug")  # the same join: own role


def membership_role(*, project_id: int, user: object) -> str | None:
    """The person's role in the project; None for a non-member, an inactive user or a deployment."""
    if not is_person(user):
        return None
    roles = ProjectMembership.objects.filter(project_id=project_id, user=user)
    return roles.values_list("role", flat=True).first()


def memberships_list(project: Project) -> QuerySet[ProjectMembership]:
    members = ProjectMembership.objects.filter(project=project).select_related("user")
    return members.order_by("user__username")


# How each project-owned object reaches its project, for endpoints addressed by the object's id.
_PROJECT_PATH = {Item: "items", RetrainingCycle: "cycles", ReviewBatch: "review_batches",
                 ReviewTask: "review_batches__tasks", Label: "items__labels", Alert: "alerts"}


def project_owning(
    model: type[Item | RetrainingCycle | ReviewBatch | ReviewTask | Label | Alert], pk: int,
) -> Project | None:
    """The project an item, cycle, review batch, review task, label or alert belongs to; None if
    there is none."""
    return Project.objects.filter(**{f"{_PROJECT_PATH[model]}__pk": pk}).first()


def items_list(project: Project, *, split: str | None = None, labeled: bool | None = None) -> QuerySet[Item]:
    items = Item.objects.filter(project=project).annotate(
        is_labeled=Exists(Label.objects.filter(item_id=OuterRef("pk"), status=LabelStatus.CURRENT))
    )
    if split:
        items = items.filter(split=split)
    if labeled is not None:
        items = items.filter(is_labeled=labeled)
    return items


def predictions_list(project: Project, *, model_version: str | None = None, item_id: int | None = None) -> QuerySet[Prediction]:
    predictions = Prediction.objects.filter(item__project=project).select_related("model_version", "deployment")
    if model_version:
        predictions = predictions.filter(model_version__name=model_version)
    if item_id is not None:
        predictions = predictions.filter(item_id=item_id)
    return predictions


def review_queue(project: Project) -> QuerySet[ReviewTask]:
    """Open review tasks, most useful first: the strategy's picks by rank, then audit items."""
    return (
        ReviewTask.objects.filter(batch__project=project, status=ReviewTaskStatus.OPEN)
        .select_related("item", "prediction", "batch")
        .order_by("batch__created_at", "rank")
    )


def item_labels(item: Item) -> QuerySet[Label]:
    return item.labels.order_by("created_at", "id")


def cycles_list(project: Project) -> QuerySet[RetrainingCycle]:
    return (
        RetrainingCycle.objects.filter(project=project)
        .select_related("base_version", "candidate_version")
        .prefetch_related(Prefetch("snapshots", queryset=EvaluationSnapshot.objects.select_related("model_version")))
        .annotate(training_labels=Count("candidate_version__training_labels"))
        .order_by("-number")
    )


def model_versions_list(project: Project) -> QuerySet[ModelVersion]:
    return (
        ModelVersion.objects.filter(project=project).prefetch_related("artifacts")
        .annotate(training_label_count=Count("training_labels")).order_by("-created_at", "-id")
    )


def project_summary(project: Project) -> dict[str, int]:
    """Counts for the projects list and the dashboard. Each is one plain count over an index (an
    item has at most one current label; predictions are counted by the project's model
    versions, not through a join to a million items): 4 small scans, not a distinct count over
    items joined to labels (about 0.9 s at 1,000,000 predictions, benchmarks/workbench_speed.py)."""
    return {
        "items": Item.objects.filter(project=project).count(),
        "labeled": Label.objects.filter(project=project, status=LabelStatus.CURRENT).count(),
        "open_review_tasks": ReviewTask.objects.filter(batch__project=project, status=ReviewTaskStatus.OPEN).count(),
        "predictions": Prediction.objects.filter(model_version__project=project).count(),
    }


@dataclass(frozen=True)
class AccuracyEstimate:
    model_version: str
    n: int
    correct: int
    accuracy: float
    low: float  # 95% interval: Wilson for one pool, stratified when slices are weighted
    high: float
    slices: int = 1  # audit slices (batches) pooled
    weighted: bool = False  # slices weighted by the size of the pool each was drawn from


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class AuditSlice:
    """One batch's audit labels for a version: ``n`` uniform draws from a pool of ``pool_size``
    predictions (None for batches selected before pool sizes were recorded)."""

    n: int
    correct: int
    pool_size: int | None


def pooled_accuracy(version: str, slices: list[AuditSlice], z: float = 1.96) -> AccuracyEstimate:
    """Live accuracy from audit slices drawn from pools of different sizes.

    Each slice is a uniform sample of its pool, so its agreement rate is unbiased for that pool;
    pooling the slices' counts would over-weight slices drawn from small pools. Weighting each
    slice by its pool size gives a stratified estimate, unbiased for the predictions the pools
    held, with the stratified variance sum(w^2 p(1-p)/n) (p smoothed by one success and one
    failure so that a slice with all or none agreeing still counts as uncertain). When every
    slice's pool size is known and not all are proportional to the slice sizes, the estimate is
    weighted; otherwise (one slice, equal weights, or a slice from before pool sizes were
    recorded) it is the plain rate with its Wilson interval."""
    n = sum(s.n for s in slices)
    correct = sum(s.correct for s in slices)
    known = all(s.pool_size for s in slices)
    self_weighting = len({round(s.pool_size / s.n, 9) for s in slices}) == 1 if known else True
    if len(slices) == 1 or not known or self_weighting:
        return AccuracyEstimate(version, n, correct, correct / n, *wilson_interval(correct, n),
                                slices=len(slices), weighted=False)
    total = sum(s.pool_size for s in slices)
    weights = [s.pool_size / total for s in slices]
    accuracy = sum(w * s.correct / s.n for w, s in zip(weights, slices, strict=True))
    variance = sum(w * w * ((s.correct + 1) / (s.n + 2)) * (1 - (s.correct + 1) / (s.n + 2)) / s.n
                   for w, s in zip(weights, slices, strict=True))
    half = z * math.sqrt(variance)
    return AccuracyEstimate(version, n, correct, accuracy, max(0.0, accuracy - half), min(1.0, accuracy + half),
                            slices=len(slices), weighted=True)


def audit_accuracy(project: Project, *, until: datetime | None = None,
                   deployment: Deployment | None = None) -> list[AccuracyEstimate]:
    """Live accuracy per model version, from the human labels of the random audit slices: the
    fraction of audited items where the human agreed with the model's prediction, each batch's
    slice weighted by the size of the pool it was drawn from (``pooled_accuracy``). ``until``:
    only labels given before then (the monitor's window end). ``deployment``: only the audited
    predictions that deployment reported (a uniform draw from the pool is uniform over each
    deployment's part of it; the slices keep the whole pool's weights, which assumes each
    deployment's share of the pool changed little from batch to batch)."""
    agreed = Q(prediction__predicted_label=F("item__labels__value"))
    scope = {} if until is None else {"item__labels__created_at__lt": until}
    if deployment is not None:
        scope["prediction__deployment"] = deployment
    rows = (ReviewTask.objects.filter(batch__project=project, reason=ReviewReason.AUDIT, status=ReviewTaskStatus.DONE,
                                      item__labels__status=LabelStatus.CURRENT, **scope)
            .values("prediction__model_version__name", "batch_id", "batch__audit_pool_size")
            .annotate(n=Count("item", distinct=True),  # an item audited twice in a batch counts once
                      correct=Count("item", distinct=True, filter=agreed))
            .order_by("prediction__model_version__name", "batch_id"))
    by_version: dict[str, list[AuditSlice]] = {}
    for r in rows:
        by_version.setdefault(r["prediction__model_version__name"], []).append(
            AuditSlice(r["n"], r["correct"], r["batch__audit_pool_size"]))
    return [pooled_accuracy(version, slices) for version, slices in by_version.items()]


# Trust events that say how a model came to be where it is.
MODEL_EVENT_KINDS = ("model_trained", "model_evaluated", "gate_evaluated", "cycle_approved", "model_promoted",
                     "model_rejected", "model_rolled_back", "model_registered")


def model_training_labels(version: ModelVersion) -> QuerySet[Label]:
    """The labels a model learned from, with their sources, in label-id order."""
    return version.training_labels.select_related("item").order_by("id")


def model_explain(version: ModelVersion) -> dict:
    """Why ``version`` is where it is: its parent chain, a summary of the labels it learned from
    (counts by source and reviewer, and the manifest digest, which should equal the one its
    ``model_trained`` trust event recorded), its evaluations with intervals, the gate verdict of
    the cycle that produced it, and the trust events that trained, promoted or rolled it back."""
    from hitl.services.cycles import labeled_set_digest  # services build on selectors

    chain, parent = [], version.parent
    while parent is not None and len(chain) < 1000:
        chain.append({"name": parent.name, "stage": parent.stage, "created_at": parent.created_at.isoformat()})
        parent = parent.parent
    labels = model_training_labels(version)
    rows = list(labels.values_list("id", "item__sha256", "value"))
    by_source = dict(labels.order_by().values_list("source").annotate(n=Count("id")))
    by_reviewer = dict(labels.order_by().values_list("reviewer_name").annotate(n=Count("id")))
    digest = labeled_set_digest(rows)
    events = list(
        TrustEvent.objects.filter(project_id=version.project_id, kind__in=MODEL_EVENT_KINDS)
        .filter(Q(payload__model_version=version.name) | Q(payload__candidate=version.name))
        .order_by("sequence")
    )
    trained = next((e for e in events if e.kind == "model_trained"), None)
    cycle = RetrainingCycle.objects.filter(candidate_version=version).first()
    snapshots = (EvaluationSnapshot.objects.filter(model_version=version)
                 .select_related("cycle", "golden_set").order_by("cycle__number", "eval_set"))
    return {
        "model_version": version.name, "stage": version.stage, "architecture": version.architecture,
        "created_at": version.created_at.isoformat(),
        "promoted_at": version.promoted_at.isoformat() if version.promoted_at else None,
        "promoted_by": version.promoted_by,
        "parents": chain,
        "training_labels": {
            "count": len(rows), "by_source": by_source, "by_reviewer": by_reviewer, "manifest_sha256": digest,
            "recorded_manifest_sha256": trained.payload.get("training_set_sha256") if trained else None,
            "manifest_matches_trust_history": bool(trained) and trained.payload.get("training_set_sha256") == digest,
        },
        "produced_by_cycle": None if cycle is None else {
            "number": cycle.number, "status": cycle.status, "decision": cycle.decision,
            "decision_reason": cycle.decision_reason, "decided_by": cycle.decided_by, "gate": cycle.gate,
        },
        "evaluations": [{
            "cycle": s.cycle.number, "role": s.role, "eval_set": s.eval_set,
            "golden_set_version": s.golden_set.version if s.golden_set else None, "n_items": s.n_items,
            "accuracy": s.accuracy, "intervals": s.intervals, "eval_set_sha256": s.eval_set_sha256,
        } for s in snapshots],
        "trust_events": [{"sequence": e.sequence, "kind": e.kind, "actor": e.actor,
                          "created_at": e.created_at.isoformat(), "hash": e.hash, "payload": e.payload}
                         for e in events],
    }


def golden_sets_list(project: Project) -> QuerySet[GoldenSet]:
    return GoldenSet.objects.filter(project=project).order_by("-version")


def rollback_choices(project: Project) -> QuerySet[ModelVersion]:
    """Earlier production models a project can roll back to, newest first."""
    return (ModelVersion.objects.filter(project=project, promoted_at__isnull=False)
            .exclude(stage=ModelStage.PRODUCTION).order_by("-promoted_at"))


def review_waiting(project: Project, reviewer: AbstractBaseUser) -> int:
    """Open review tasks of the project that this reviewer could take: not leased to someone else."""
    now = timezone.now()
    return ReviewTask.objects.filter(batch__project=project, status=ReviewTaskStatus.OPEN).filter(
        Q(leased_to__isnull=True) | Q(lease_expires_at__lte=now) | Q(leased_to=reviewer)).count()


def golden_item_ids(item_ids: list[int]) -> set[int]:
    return set(GoldenItem.objects.filter(item_id__in=item_ids).values_list("item_id", flat=True))


@dataclass(frozen=True)
class ItemHistory:
    """What the item page shows: every model version's prediction (oldest version first), every
    label ever given (oldest first, each with the label it replaced), and each review task that
    put the item in front of people, with its batch."""

    item: Item
    golden: GoldenItem | None
    predictions: list[Prediction]
    labels: list[Label]
    review_tasks: list[ReviewTask]


def item_history(item_id: int) -> ItemHistory | None:
    item = Item.objects.select_related("project").filter(pk=item_id).first()
    if item is None:
        return None
    predictions = (Prediction.objects.filter(item=item).select_related("model_version", "deployment")
                   .order_by("model_version__created_at", "model_version_id"))
    labels = (Label.objects.filter(item=item).select_related("previous", "review_task__batch", "prediction__model_version")
              .order_by("created_at", "id"))
    tasks = (ReviewTask.objects.filter(item=item).select_related("batch__model_version", "prediction__model_version")
             .order_by("created_at", "id"))
    return ItemHistory(item=item, golden=GoldenItem.objects.filter(item=item).first(),
                       predictions=list(predictions), labels=list(labels), review_tasks=list(tasks))


def conflicts_queue(project: Project) -> QuerySet[ReviewTask]:
    """Review tasks whose two blind answers differ, oldest first, with both answers."""
    return (ReviewTask.objects.filter(batch__project=project, status=ReviewTaskStatus.CONFLICT)
            .select_related("item", "prediction__model_version").prefetch_related("answers")
            .order_by("batch__created_at", "rank"))


def cohen_kappa(table: Mapping[tuple[str, str], int]) -> float | None:
    """Cohen's kappa of two raters from their contingency table (how many times rater A said
    the first label and rater B the second); None where it is undefined (no pairs, or both raters
    always gave one and the same label)."""
    n = sum(table.values())
    if n == 0:
        return None
    observed = sum(count for (a, b), count in table.items() if a == b) / n
    first, second = Counter(), Counter()
    for (a, b), count in table.items():
        first[a] += count
        second[b] += count
    expected = sum(first[label] * second[label] for label in first) / (n * n)
    return None if expected == 1 else (observed - expected) / (1 - expected)


@dataclass(frozen=True)
class ReviewerStats:
    reviewer: str
    labels: int  # labels given (not withdrawn), all time
    labels_24h: int
    median_seconds: float | None  # time spent per label, as the review page measured it
    paired: int  # blind answers compared with another reviewer's
    agreed: int
    kappa: float | None  # Cohen's kappa against the other reviewers, pooled
    with_model: int  # labels given where the model had a prediction
    agreed_with_model: int

    @property
    def per_hour(self) -> float | None:
        return None if not self.median_seconds else 3600 / self.median_seconds

    @property
    def model_agreement(self) -> float | None:
        return self.agreed_with_model / self.with_model if self.with_model else None


def blind_answer_pairs(project: Project) -> dict[str, Counter[tuple[str, str]]]:
    """Per reviewer, how often they answered a label and the other reviewer of the same task
    another (or the same) one: tasks two reviewers answered blind, counted in the database."""
    # One pass over the project's answers in task order (window functions; the ORM cannot group
    # over them): a self-join or a correlated lookup of the other answer took twice as long.
    answers, tasks, batches = (connection.ops.quote_name(m._meta.db_table) for m in (ReviewAnswer, ReviewTask, ReviewBatch))
    sql = f"""
        SELECT reviewer_name, value, other, COUNT(*) FROM (
            SELECT a.reviewer_name, a.value, COALESCE(LAG(a.value) OVER task, LEAD(a.value) OVER task) AS other,
                   COUNT(*) OVER (PARTITION BY a.task_id) AS answers
            FROM {answers} a JOIN {tasks} t ON t.id = a.task_id JOIN {batches} b ON b.id = t.batch_id
            WHERE b.project_id = %s
            WINDOW task AS (PARTITION BY a.task_id ORDER BY a.id)
        ) answered WHERE answers = 2 GROUP BY reviewer_name, value, other"""
    pairs: dict[str, Counter[tuple[str, str]]] = {}
    with connection.cursor() as cursor:
        cursor.execute(sql, [project.id])
        for name, mine, theirs, n in cursor.fetchall():
            pairs.setdefault(name, Counter())[(mine, theirs)] += n
    return pairs


def reviewer_stats(project: Project) -> list[ReviewerStats]:
    """Per reviewer: throughput, agreement with other reviewers (blind double answers, Cohen's
    kappa) and agreement with the model's prediction they were shown."""
    since = timezone.now() - timedelta(hours=24)
    labels = Label.objects.filter(project=project).exclude(status=LabelStatus.RETRACTED).exclude(
        source__in=["import", "simulated"])
    rows = {r["reviewer_name"]: r for r in labels.values("reviewer_name").annotate(
        n=Count("id"), n24=Count("id", filter=Q(created_at__gte=since)),
        with_model=Count("id", filter=~Q(model_value="")), agreed=Count("id", filter=Q(model_value=F("value"))),
        median_seconds=Median("lead_time_seconds"),
    ).order_by()}
    pairs = blind_answer_pairs(project)
    stats = []
    for name in sorted(set(rows) | set(pairs)):
        row, mine = rows.get(name, {}), pairs.get(name, {})
        stats.append(ReviewerStats(
            reviewer=name, labels=row.get("n", 0), labels_24h=row.get("n24", 0), median_seconds=row.get("median_seconds"),
            paired=sum(mine.values()), agreed=sum(n for (a, b), n in mine.items() if a == b), kappa=cohen_kappa(mine),
            with_model=row.get("with_model", 0), agreed_with_model=row.get("agreed", 0),
        ))
    return stats


def alerts_list(project: Project, *, status: str | None = None) -> QuerySet[Alert]:
    """The project's monitoring alerts, newest first (open ones only with ``status="open"``)."""
    alerts = Alert.objects.filter(project=project).select_related(
        "deployment", "model_version", "review_batch", "cycle")
    return alerts.filter(status=status) if status else alerts


def monitor_windows_list(project: Project) -> QuerySet[MonitorWindow]:
    """The project's measured windows, newest first: per deployment (drift) and per model
    version (live accuracy, agreement)."""
    windows = MonitorWindow.objects.filter(project=project).select_related("deployment", "model_version")
    return windows.order_by("-window_start", "deployment_id", "model_version_id")


def projects_with_trust_events() -> list[int]:
    """Projects whose trust chain has events (beat verifies each in full)."""
    return list(Project.objects.filter(trust_events__isnull=False).distinct().order_by("id").values_list("id", flat=True))


# --- The workbench pages (issue 11): dashboard, model registry, trust timeline, charts over time.

def golden_snapshots_newest(project: Project) -> dict[int, EvaluationSnapshot]:
    """Each model version's newest golden-set snapshot (the highest cycle number), by version id."""
    snapshots = (EvaluationSnapshot.objects.filter(cycle__project=project, eval_set=EvaluationSet.GOLDEN)
                 .select_related("golden_set", "cycle").order_by("model_version_id", "-cycle__number"))
    newest: dict[int, EvaluationSnapshot] = {}
    for snapshot in snapshots:
        newest.setdefault(snapshot.model_version_id, snapshot)
    return newest


@dataclass(frozen=True)
class RegistryRow:
    """A model version in the registry, ``depth`` steps below the first model of its lineage."""

    version: ModelVersion
    depth: int
    golden: EvaluationSnapshot | None
    cycle: RetrainingCycle | None  # the cycle that produced it (none for a registered model)


def model_registry(project: Project) -> list[RegistryRow]:
    """Every model version as a lineage tree, parents before their children (newest first among
    siblings), with its training-label count, newest golden-set snapshot and producing cycle."""
    versions = list(model_versions_list(project).select_related("parent", "produced_by_cycle"))
    golden = golden_snapshots_newest(project)
    known = {v.pk for v in versions}
    children: dict[int | None, list[ModelVersion]] = {}
    for version in versions:  # newest first already
        parent = version.parent_id if version.parent_id in known else None
        children.setdefault(parent, []).append(version)
    rows: list[RegistryRow] = []
    stack = [(v, 0) for v in reversed(children.get(None, []))]
    while stack:
        version, depth = stack.pop()
        cycle = getattr(version, "produced_by_cycle", None)
        rows.append(RegistryRow(version, depth, golden.get(version.pk), cycle))
        stack.extend((child, depth + 1) for child in reversed(children.get(version.pk, [])))
    return rows


def model_artifact_find(project: Project, *, name: str, kind: str) -> ModelArtifact | None:
    return ModelArtifact.objects.filter(model_version__project=project, model_version__name=name, kind=kind).first()


def review_queue_sizes(project: Project) -> dict[str, int]:
    """Open review tasks by why they were picked (strategy, audit, golden), their total, and the
    batches still waiting to be selected."""
    open_tasks = ReviewTask.objects.filter(batch__project=project, status=ReviewTaskStatus.OPEN)
    by_reason = dict(open_tasks.order_by().values_list("reason").annotate(n=Count("id")))
    sizes = {reason: by_reason.get(reason, 0) for reason in ReviewReason.values}
    sizes["open"] = sum(by_reason.values())
    sizes["batches_pending"] = ReviewBatch.objects.filter(project=project, status=ReviewBatchStatus.PENDING).count()
    return sizes


def cycle_newest(project: Project) -> RetrainingCycle | None:
    return (RetrainingCycle.objects.filter(project=project).select_related("candidate_version", "base_version")
            .order_by("-number").first())


def live_accuracy(project: Project, version: ModelVersion | None) -> AccuracyEstimate | None:
    """The audit-slice estimate of one version's live accuracy (None before any audit label)."""
    if version is None:
        return None
    return next((e for e in audit_accuracy(project) if e.model_version == version.name), None)


def trust_events_newest(project: Project, limit: int) -> list[TrustEvent]:
    return list(TrustEvent.objects.filter(project=project).order_by("-sequence")[:limit])


@dataclass(frozen=True)
class AccuracyPoint:
    """One accuracy estimate at one time, with its interval, for charts over time."""

    at: datetime
    model_version: str
    accuracy: float
    low: float
    high: float
    n: int
    source: str  # e.g. "cycle 3, golden set v1" or "audit of batch 12"


def golden_accuracy_history(project: Project) -> list[AccuracyPoint]:
    """The production model's golden-set accuracy over time: each time a version entered
    production (a ``model_promoted`` trust event: the gate, an approval or a rollback), its newest
    golden-set snapshot by then; and each cycle's measurement of the production model it compared
    against."""
    snapshots = list(EvaluationSnapshot.objects.filter(cycle__project=project, eval_set=EvaluationSet.GOLDEN)
                     .select_related("cycle", "golden_set", "model_version").order_by("created_at", "id"))

    def point(s: EvaluationSnapshot, at: datetime, how: str) -> AccuracyPoint:
        interval = s.intervals.get("accuracy") or {}
        version = s.golden_set.version if s.golden_set else "?"
        return AccuracyPoint(at, s.model_version.name, s.accuracy, interval.get("lower", s.accuracy),
                             interval.get("upper", s.accuracy), s.n_items,
                             f"{how}; cycle {s.cycle.number}, golden set v{version}")

    points = [point(s, s.created_at, "measured as production") for s in snapshots if s.role == "production"]
    for event in TrustEvent.objects.filter(project=project, kind="model_promoted").order_by("sequence"):
        name = event.payload.get("model_version")
        known = [s for s in snapshots if s.model_version.name == name and s.created_at <= event.created_at]
        if known:
            points.append(point(known[-1], event.created_at, f"entered production ({event.actor})"))
    return sorted(points, key=lambda p: p.at)


def audit_accuracy_history(project: Project) -> list[AccuracyPoint]:
    """Live accuracy per audit slice (one point per review batch and model version), with its
    95% Wilson interval: the fraction of audited items whose human label agreed with the model."""
    agreed = Q(prediction__predicted_label=F("item__labels__value"))
    rows = (ReviewTask.objects.filter(batch__project=project, reason=ReviewReason.AUDIT,
                                      status=ReviewTaskStatus.DONE, item__labels__status=LabelStatus.CURRENT)
            .values("batch_id", "batch__created_at", "prediction__model_version__name")
            .annotate(n=Count("item", distinct=True), correct=Count("item", distinct=True, filter=agreed))
            .order_by("batch__created_at", "batch_id"))
    return [AccuracyPoint(r["batch__created_at"], r["prediction__model_version__name"], r["correct"] / r["n"],
                          *wilson_interval(r["correct"], r["n"]), r["n"], f"audit of batch {r['batch_id']}")
            for r in rows if r["n"]]


DASHBOARD_ALERTS = 10
DRIFT_WINDOWS = 48


def open_alerts(project: Project) -> list[Alert]:
    """The newest open monitoring alerts, for the dashboard (the alerts page has them all)."""
    return list(alerts_list(project, status="open")[:DASHBOARD_ALERTS])


def drift_history(project: Project) -> list[MonitorWindow]:
    """The newest judged drift windows of the project's deployments, oldest first, for the
    dashboard's sparkline."""
    windows = (monitor_windows_list(project).filter(deployment__isnull=False, metrics__judged=True)
               [:DRIFT_WINDOWS])
    return sorted(windows, key=lambda w: (w.window_start, w.deployment_id))
