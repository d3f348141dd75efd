"""Reads: the querysets views, the API and commands show."""

from __future__ import annotations

from django.db.models import Count, Exists, OuterRef, Prefetch, Q, QuerySet
from django.shortcuts import get_object_or_404

from hitl.models import (
    EvaluationSnapshot,
    Item,
    Label,
    LabelStatus,
    ModelVersion,
    Prediction,
    Project,
    RetrainingCycle,
    ReviewTask,
    ReviewTaskStatus,
    UncertaintyScore,
)


def project_get(slug: str) -> Project:
    return get_object_or_404(Project, slug=slug)


def projects_list() -> QuerySet[Project]:
    return Project.objects.order_by("slug")


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


def current_label(item_id: int) -> Label | None:
    return Label.objects.filter(item_id=item_id, status=LabelStatus.CURRENT).first()


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
    items = Item.objects.filter(project=project).aggregate(
        total=Count("id"), labeled=Count("id", filter=Q(labels__status=LabelStatus.CURRENT))
    )
    return {
        "items": items["total"],
        "labeled": items["labeled"],
        "open_review_tasks": ReviewTask.objects.filter(batch__project=project, status=ReviewTaskStatus.OPEN).count(),
        "predictions": Prediction.objects.filter(item__project=project).count(),
    }


def scores_for(prediction_ids: list[int]) -> dict[int, dict[str, float]]:
    scores: dict[int, dict[str, float]] = {}
    for pid, method, value in UncertaintyScore.objects.filter(prediction_id__in=prediction_ids).values_list(
        "prediction_id", "method", "value"
    ):
        scores.setdefault(pid, {})[method] = value
    return scores
