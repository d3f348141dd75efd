"""The golden set: items drawn at random from the pool, labeled by people, never trained on,
frozen per version. The promotion gate decides on it (workers.pipelines.cycles).

* ``golden_set_propose`` asks for a review batch of uniform random draws from the production
  model's pool, stratified by predicted class (proportional allocation, so every item keeps the
  same chance); the items are reserved for the golden set the moment they are picked, so no
  training set can take them afterwards (``labeled_set`` excludes reserved items).
* ``golden_set_freeze`` is the one way a new version comes to be: an explicit, recorded action
  (trust event ``golden_set_frozen``). It may also take labeled audit-slice items (uniform draws
  too) that no model was trained on.
* ``golden_eval_set`` is what the gate evaluates on: the newest version's items with their
  current labels.

Hard cases (held-out items a strategy picked) are not golden: they are evaluated and reported
apart (``EvaluationSet.HARD_CASES``), never mixed in.

Labels on golden-set items come only through review: a member's current label must not be an
import (``LabelSource.IMPORT``: no person reviewed it), and ``review_only_items`` names the items
an import may not label at all.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Collection

from django.db import transaction
from django.db.models import Max, QuerySet

from hitl.errors import Conflict, InvalidInput
from hitl.models import (
    GoldenItem,
    GoldenSet,
    Item,
    Label,
    LabelSource,
    LabelStatus,
    Project,
    ReviewBatch,
    ReviewReason,
    ReviewTask,
    Split,
)
from hitl.services.cycles import LabeledSet, labeled_set_digest
from hitl.services.queue import enqueue
from hitl.services.trust import trust_record

GOLDEN_STRATEGY = "golden"
MAX_PROPOSAL = 10_000


@transaction.atomic
def golden_set_propose(*, project: Project, size: int, requested_by: str, seed: int | None = None) -> ReviewBatch:
    """Queue a review batch of ``size`` random pool items for the golden set (reason GOLDEN)."""
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_PROPOSAL:
        raise InvalidInput.single("size", f"must be an integer between 1 and {MAX_PROPOSAL}")
    batch = ReviewBatch.objects.create(
        project=project, strategy=GOLDEN_STRATEGY, size=size, audit_fraction=0.0,
        seed=secrets.randbits(62) if seed is None else seed, requested_by=requested_by,
    )
    enqueue("workers.tasks.select_review_batch", batch.id)
    return batch


def golden_items_reserve(*, batch: ReviewBatch, item_ids: list[int]) -> None:
    """Reserve a golden batch's picks (called as the batch is stored, in its transaction)."""
    GoldenItem.objects.bulk_create(
        [GoldenItem(project_id=batch.project_id, item_id=i, source="golden", review_batch=batch) for i in item_ids],
        ignore_conflicts=True,
    )


def review_only_items(*, project_id: int, item_ids: Collection[int]) -> dict[int, str]:
    """The items among ``item_ids`` whose labels come only through review tasks, each with why:
    golden-set items (reserved or frozen), held-out items (the evaluation split) and audit-slice
    draws (a golden set may take them, ``from_audit``)."""
    ids = list(item_ids)
    roles = {i: "held out for evaluation" for i in Item.objects.filter(
        project_id=project_id, id__in=ids, split=Split.HOLDOUT).values_list("id", flat=True)}
    roles.update((i, "drawn for an audit slice") for i in ReviewTask.objects.filter(
        batch__project_id=project_id, item_id__in=ids, reason=ReviewReason.AUDIT).values_list("item_id", flat=True))
    roles.update((i, "a golden-set item") for i in GoldenItem.objects.filter(
        project_id=project_id, item_id__in=ids).values_list("item_id", flat=True))
    return roles


def _reviewed_labels(project: Project) -> QuerySet[Label]:
    """Current labels that came through review: an import's label is nobody's review."""
    return Label.objects.filter(project=project, status=LabelStatus.CURRENT).exclude(source=LabelSource.IMPORT)


def _untrained_audit_items(project: Project) -> list[int]:
    """Reviewed audit-slice items no model was trained on and not reserved yet."""
    audited = ReviewTask.objects.filter(batch__project=project, reason=ReviewReason.AUDIT).values("item_id")
    trained = Label.objects.filter(project=project, trained_models__isnull=False).values("item_id")
    return list(
        _reviewed_labels(project).filter(item_id__in=audited)
        .exclude(item_id__in=trained).exclude(item__golden__isnull=False)
        .values_list("item_id", flat=True).distinct()
    )


def _items_digest(item_ids: list[int]) -> str:
    digest = hashlib.sha256()
    for item_id, sha256 in Item.objects.filter(id__in=item_ids).order_by("id").values_list("id", "sha256"):
        digest.update(f"{item_id}:{sha256}\n".encode())
    return digest.hexdigest()


def golden_set_latest(project_id: int) -> GoldenSet | None:
    return GoldenSet.objects.filter(project_id=project_id).order_by("-version").first()


@transaction.atomic
def golden_set_freeze(*, project: Project, actor: str, reason: str, from_audit: bool = False) -> GoldenSet:
    """Freeze a new golden-set version: every reserved item whose current label came through
    review (plus, with ``from_audit``, untrained reviewed audit items); a reserved item labeled
    only by an import waits for its review. Refused when nothing changed."""
    if not reason or not reason.strip():
        raise InvalidInput.single("reason", "say why the golden set gets a new version")
    Project.objects.select_for_update().get(pk=project.pk)
    added_from_audit = _untrained_audit_items(project) if from_audit else []
    GoldenItem.objects.bulk_create(
        [GoldenItem(project=project, item_id=i, source="audit") for i in added_from_audit], ignore_conflicts=True,
    )
    members = sorted(_reviewed_labels(project).filter(item__golden__project=project).values_list("item_id", flat=True))
    previous = golden_set_latest(project.id)
    if not members:
        raise Conflict("no reviewed golden-set items yet: propose some (golden-set --propose N) and review them"
                       + ("" if from_audit else ", or take audit items (--from-audit)"))
    if previous is not None and previous.item_ids == members:
        raise Conflict(f"golden set v{previous.version} already holds these {len(members)} items; label more first")
    version = (GoldenSet.objects.filter(project=project).aggregate(v=Max("version"))["v"] or 0) + 1
    golden = GoldenSet.objects.create(project=project, version=version, item_ids=members,
                                      items_sha256=_items_digest(members), created_by=actor, reason=reason.strip())
    trust_record(project_id=project.id, kind="golden_set_frozen", actor=actor, payload={
        "version": version, "n_items": len(members), "items_sha256": golden.items_sha256,
        "added": len(set(members) - set(previous.item_ids if previous else [])),
        "from_audit": len(added_from_audit), "reason": golden.reason,
    })
    return golden


def golden_eval_set(project: Project) -> tuple[GoldenSet | None, LabeledSet]:
    """The newest golden-set version's items with their current labels, in label-id order."""
    golden = golden_set_latest(project.id)
    if golden is None:
        return None, LabeledSet([], [], [], labeled_set_digest([]))
    rows = list(Label.objects.filter(item_id__in=golden.item_ids, status=LabelStatus.CURRENT)
                .order_by("id").values_list("id", "item__image", "value", "item__sha256"))
    index = project.label_index
    return golden, LabeledSet(
        label_ids=[r[0] for r in rows], image_paths=[r[1] for r in rows], targets=[index[r[2]] for r in rows],
        digest=labeled_set_digest([(r[0], r[3], r[2]) for r in rows]),
    )
