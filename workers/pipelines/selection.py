"""Picking a review batch's items: the audit slice, then the strategy's picks, from stored
scores or by running the production model (and committee) on a bounded sample of the pool."""

from __future__ import annotations

import logging

import numpy as np
from django.conf import settings
from django.db.models import Exists, Max, Min, OuterRef, Q

from hitl.errors import TRANSIENT_DB_ERRORS, Busy, InvalidInput
from hitl.locks import exclusive
from hitl.models import (
    GoldenItem,
    Item,
    Label,
    LabelStatus,
    ModelVersion,
    Prediction,
    Project,
    ReviewBatch,
    ReviewBatchStatus,
    ReviewReason,
    ReviewTask,
    ReviewTaskStatus,
    UncertaintyScore,
)
from hitl.selectors import production_version
from hitl.services.golden import GOLDEN_STRATEGY
from hitl.services.selection import Pick, review_batch_store
from workers.ml.device import select_device
from workers.ml.inference import model_outputs, predict_proba
from workers.ml.strategies import (
    COVERAGE_STRATEGIES,
    STRATEGY_INPUTS,
    PoolView,
    SelectOptions,
    select_batch,
)
from workers.ml.uncertainty import SCORERS
from workers.pipelines.embeddings import backbone_embeddings
from workers.pipelines.scoring import predictions_score, probabilities_matrix
from workers.pipelines.versions import item_images, load_version, loader_workers

MAX_COVERED_EMBEDDINGS = 20_000  # labeled items the diversity strategies measure distance to
SELECTION_WAIT_SECONDS = 60  # then a Busy error, and Celery tries again later
log = logging.getLogger(__name__)


def _busy_items(project_id: int) -> set[int]:
    """Items a strategy must not pick: labeled by a human, or already under review."""
    labeled = Label.objects.filter(project_id=project_id, status=LabelStatus.CURRENT).values_list("item_id", flat=True)
    reviewing = ReviewTask.objects.filter(batch__project_id=project_id, status=ReviewTaskStatus.OPEN).values_list(
        "item_id", flat=True)
    golden = GoldenItem.objects.filter(project_id=project_id).values_list("item_id", flat=True)
    return set(labeled) | set(reviewing) | set(golden)


def _pool_size(version_id: int) -> int:
    """How many of the version's predictions the audit draw chose from: those of items that are
    not busy (``_busy_items``, counted here in SQL rather than sent as a list of ids): the weight
    of its slice when slices from pools of different sizes are pooled."""
    item = OuterRef("item_id")
    return (Prediction.objects.filter(model_version_id=version_id)
            .exclude(Exists(Label.objects.filter(item_id=item, status=LabelStatus.CURRENT)))
            .exclude(Exists(ReviewTask.objects.filter(item_id=item, status=ReviewTaskStatus.OPEN)))
            .exclude(Exists(GoldenItem.objects.filter(item_id=item)))
            .count())


def _sample_pool(version_id: int, n: int, rng: np.random.Generator, skip_items: set[int]) -> list[tuple[int, int]]:
    """Up to n (prediction id, item id) of the version, drawn uniformly among items not in
    ``skip_items``, reproducibly for a seed.

    Draws ids uniformly from the predictions' id range and keeps the version's, so it reads about
    n rows, not the whole pool; where the ids are too sparse it reads them all.
    """
    if n <= 0:
        return []
    predictions = Prediction.objects.filter(model_version_id=version_id)
    bounds = predictions.aggregate(lo=Min("id"), hi=Max("id"))
    if bounds["lo"] is None:
        return []
    chosen: dict[int, int] = {}
    dense = bounds["hi"] - bounds["lo"] + 1 <= 4 * n  # reading the whole range is then as cheap
    for _ in range(0 if dense else 8):
        draws = rng.integers(bounds["lo"], bounds["hi"] + 1, size=max(64, 3 * (n - len(chosen))))
        found = dict(predictions.filter(id__in=np.unique(draws).tolist()).values_list("id", "item_id"))
        for prediction_id in draws.tolist():
            item_id = found.get(prediction_id)
            if item_id is not None and item_id not in skip_items and prediction_id not in chosen:
                chosen[prediction_id] = item_id
                if len(chosen) == n:
                    return list(chosen.items())
    taken = set(chosen.values())
    rest = [(pid, item) for pid, item in predictions.order_by("id").values_list("id", "item_id")
            if item not in skip_items and item not in taken]
    order = rng.permutation(len(rest))[: n - len(chosen)]
    return list(chosen.items()) + [rest[i] for i in order]


def _stored_score_picks(batch: ReviewBatch, version: ModelVersion, n: int, busy: set[int]) -> list[Pick]:
    """The top n by a stored score, walking the (version, method, value) index in growing chunks
    and skipping busy items: the cost follows the rows walked, never the size of the pool."""
    predictions_score(model_version_id=version.id, wait=True)
    ranked = UncertaintyScore.objects.filter(model_version_id=version.id, method=batch.strategy).order_by(
        "-value", "prediction_id")
    picks: list[Pick] = []
    after: tuple[float, int] | None = None
    chunk = 2 * n
    while len(picks) < n:
        page = ranked if after is None else ranked.filter(
            Q(value__lt=after[0]) | Q(value=after[0], prediction_id__gt=after[1]))
        rows = list(page.values_list("prediction_id", "prediction__item_id", "value")[:chunk])
        picks += [Pick(pid, item_id, ReviewReason.STRATEGY, value) for pid, item_id, value in rows
                  if item_id not in busy][: n - len(picks)]
        if len(rows) < chunk:
            break
        after, chunk = (rows[-1][2], rows[-1][0]), chunk * 2
    return picks


def _committee(project: Project, version: ModelVersion) -> list[ModelVersion]:
    """The production model and the versions that served before it, newest first."""
    earlier = ModelVersion.objects.filter(project=project, promoted_at__isnull=False).exclude(pk=version.pk)
    members = [version] + [v for v in earlier.order_by("-promoted_at") if v.labels == version.labels]
    return members[: project.committee_size]


def _covered_embeddings(project: Project, model, spec) -> np.ndarray | None:
    """Embeddings of items humans labeled or are reviewing: what coverage strategies count as covered."""
    labeled = list(Label.objects.filter(project=project, status=LabelStatus.CURRENT)
                   .order_by("-id").values_list("item__image", flat=True)[:MAX_COVERED_EMBEDDINGS])
    reviewing = list(ReviewTask.objects.filter(batch__project=project, status=ReviewTaskStatus.OPEN)
                     .values_list("item__image", flat=True)[:MAX_COVERED_EMBEDDINGS])
    paths = labeled + reviewing
    if not paths:
        return None
    return model_outputs(model, item_images(paths, spec), spec, embeddings=True,
                         num_workers=loader_workers()).embeddings


def _model_picks(batch: ReviewBatch, project: Project, version: ModelVersion, n: int,
                 rng: np.random.Generator, busy: set[int]) -> list[Pick]:
    """Run the production model (and committee) on a random sample of the pool, then select."""
    rows = _sample_pool(version.id, project.selection_pool_limit, rng, busy)
    if not rows:
        return []
    prediction_ids, item_ids = [r[0] for r in rows], [r[1] for r in rows]
    paths = dict(Prediction.objects.filter(id__in=prediction_ids).values_list("id", "item__image"))
    model, meta = load_version(version)
    images = item_images([paths[pid] for pid in prediction_ids], meta.input_spec)
    needs = STRATEGY_INPUTS[batch.strategy]
    outputs = model_outputs(model, images, meta.input_spec, embeddings="embeddings" in needs,
                            mc_samples=project.mc_samples if "mc_probs" in needs else 0, seed=batch.seed % 2**31,
                            temperature=version.temperature,
                            num_workers=loader_workers())
    committee = None
    if "committee_probs" in needs:
        members = _committee(project, version)
        if len(members) < 2:
            raise InvalidInput.single("strategy", "committee needs at least two model versions that served in "
                                                  f"production; {project.slug} has {len(members)}")
        committee = np.stack([outputs.probs] + [
            predict_proba(load_version(m)[0], images, meta.input_spec, temperature=m.temperature,
                          num_workers=loader_workers())
            for m in members[1:]], axis=2)
    covered = _covered_embeddings(project, model, meta.input_spec) if batch.strategy in COVERAGE_STRATEGIES else None
    selection = select_batch(
        batch.strategy,
        PoolView(probs=outputs.probs, mc_probs=outputs.mc_probs, committee_probs=committee,
                 embeddings=outputs.embeddings, labeled_embeddings=covered),
        n, rng=rng,
        options=SelectOptions(class_balance=project.class_balance, device=str(select_device(settings.HITL_DEVICE))),
    )
    return [Pick(prediction_ids[i], item_ids[i], ReviewReason.STRATEGY, None if np.isnan(s) else float(s))
            for i, s in zip(selection.indices.tolist(), selection.scores.tolist())]


def _class_balanced_stored_picks(batch: ReviewBatch, project: Project, version: ModelVersion, n: int,
                                 rng: np.random.Generator, busy: set[int]) -> list[Pick]:
    """Stored probabilities, scored and balanced over predicted classes in memory."""
    rows = _sample_pool(version.id, project.selection_pool_limit, rng, busy)
    if not rows:
        return []
    blobs = dict(Prediction.objects.filter(id__in=[r[0] for r in rows]).values_list("id", "probabilities"))
    probs = probabilities_matrix([blobs[r[0]] for r in rows], len(version.labels))
    selection = select_batch(batch.strategy, PoolView(probs=probs), n, rng=rng,
                             options=SelectOptions(class_balance=True))
    return [Pick(rows[i][0], rows[i][1], ReviewReason.STRATEGY, float(s))
            for i, s in zip(selection.indices.tolist(), selection.scores.tolist())]


def _golden_picks(project: Project, version: ModelVersion, n: int, rng: np.random.Generator,
                  busy: set[int]) -> list[Pick]:
    """n uniform draws from the pool, stratified by the predicted class with proportional
    allocation: each class gets its share of a uniform sample, then a random n_c of its items,
    so every pool item keeps the same chance and the classes are spread as in the pool."""
    rows = _sample_pool(version.id, max(n, min(project.selection_pool_limit, 10 * n)), rng, busy)
    if len(rows) <= n:
        return [Pick(pid, item, ReviewReason.GOLDEN, None) for pid, item in rows]
    predicted = dict(Prediction.objects.filter(id__in=[r[0] for r in rows]).values_list("id", "predicted_label"))
    strata: dict[str, list[tuple[int, int]]] = {}
    for row in rows:
        strata.setdefault(predicted[row[0]], []).append(row)
    shares = {label: n * len(members) / len(rows) for label, members in strata.items()}
    counts = {label: int(share) for label, share in shares.items()}
    by_remainder = sorted(strata, key=lambda label: (shares[label] - counts[label], rng.random()), reverse=True)
    for label in by_remainder[: n - sum(counts.values())]:
        counts[label] += 1
    picks = []
    for label in sorted(strata):
        members = strata[label]
        for i in rng.permutation(len(members))[: counts[label]].tolist():
            picks.append(Pick(members[i][0], members[i][1], ReviewReason.GOLDEN, None))
    return picks


def _strategy_picks(batch: ReviewBatch, project: Project, version: ModelVersion, n: int,
                    rng: np.random.Generator, busy: set[int]) -> list[Pick]:
    if n == 0:
        return []
    if batch.strategy == "random":
        return [Pick(pid, item, ReviewReason.STRATEGY, None) for pid, item in _sample_pool(version.id, n, rng, busy)]
    if batch.strategy in SCORERS and not project.class_balance:
        return _stored_score_picks(batch, version, n, busy)
    if batch.strategy in SCORERS:
        return _class_balanced_stored_picks(batch, project, version, n, rng, busy)
    return _model_picks(batch, project, version, n, rng, busy)


COLD_START_STRATEGIES = ("random", "coreset", "typiclust")


def _sample_items(project_id: int, n: int, rng: np.random.Generator, skip_items: set[int]) -> list[int]:
    """Up to n item ids of the project, uniformly among those not in ``skip_items``."""
    ids = np.array(Item.objects.filter(project_id=project_id).order_by("id").values_list("id", flat=True))
    ids = ids[~np.isin(ids, np.fromiter(skip_items, dtype=np.int64, count=len(skip_items)))]
    return ids[rng.permutation(len(ids))[:n]].tolist()


def _cold_start_picks(batch: ReviewBatch, n: int, rng: np.random.Generator, busy: set[int]) -> list[Pick]:
    """Random items, or k-center (core-set) or TypiClust picks on a pretrained backbone's
    embeddings of a random sample of the pool, counting the items humans labeled as covered."""
    project = batch.project
    if batch.strategy == "random":
        return [Pick(None, item, ReviewReason.STRATEGY, None) for item in _sample_items(project.id, n, rng, busy)]
    pool = _sample_items(project.id, project.selection_pool_limit, rng, busy)
    if not pool:
        return []
    paths = dict(Item.objects.filter(id__in=pool).values_list("id", "image"))
    labeled = list(Label.objects.filter(project=project, status=LabelStatus.CURRENT)
                   .order_by("-id").values_list("item__image", flat=True)[:MAX_COVERED_EMBEDDINGS])
    embeddings = backbone_embeddings(project.architecture, [paths[i] for i in pool] + labeled)
    selection = select_batch(batch.strategy, PoolView(embeddings=embeddings[:len(pool)],
                                                 labeled_embeddings=embeddings[len(pool):] if labeled else None),
                             n, rng=rng, options=SelectOptions(device=str(select_device(settings.HITL_DEVICE))))
    return [Pick(None, pool[i], ReviewReason.STRATEGY, float(s))
            for i, s in zip(selection.indices.tolist(), selection.scores.tolist())]


def _cold_start_select(batch: ReviewBatch, rng: np.random.Generator, busy: set[int]) -> ReviewBatch:
    """The first batches, before any model: no audit slice (there is no live model to audit)."""
    if batch.strategy not in COLD_START_STRATEGIES:
        return review_batch_store(batch_id=batch.id, version=None, picks=[], error=(
            f"the project has no production model yet, so {batch.strategy} has nothing to rank; "
            f"select the first batches with strategy {' or '.join(COLD_START_STRATEGIES)}"))
    try:
        picks = _cold_start_picks(batch, batch.size, rng, busy)
    except TRANSIENT_DB_ERRORS:
        raise
    except Exception as exc:
        log.exception("cold-start selection of batch %s failed", batch.id)
        return review_batch_store(batch_id=batch.id, version=None, picks=[], error=f"{type(exc).__name__}: {exc}")
    return review_batch_store(batch_id=batch.id, version=None, picks=picks,
                              error="" if picks else "no unlabeled items are left to review")


def review_batch_select(*, batch_id: int) -> ReviewBatch:
    """Fill a pending batch with review tasks. Safe to run twice or in parallel: a project's
    selections take turns (an advisory lock, so no transaction stays open while a model runs),
    and a batch is filled once."""
    project_id = ReviewBatch.objects.values_list("project_id", flat=True).get(pk=batch_id)
    with exclusive(f"review-selection:{project_id}", wait_seconds=SELECTION_WAIT_SECONDS) as mine:
        if not mine:
            raise Busy(f"another selection of project {project_id} is still running")
        batch = ReviewBatch.objects.select_related("project").get(pk=batch_id)
        if batch.status != ReviewBatchStatus.PENDING:
            return batch
        version = production_version(project_id)
        rng = np.random.default_rng(batch.seed)
        busy = _busy_items(project_id)
        if version is None:
            return _cold_start_select(batch, rng, busy)
        if batch.strategy == GOLDEN_STRATEGY:
            picks = _golden_picks(batch.project, version, batch.size, rng, busy)
            return review_batch_store(batch_id=batch_id, version=version, picks=picks,
                                      error="" if picks else "no unlabeled pool items are left for the golden set")
        # The audit slice is drawn first, uniformly from the whole pool, so the strategy's picks
        # cannot bias it: its labels estimate the live model's accuracy (selectors.audit_accuracy).
        audit_size = round(batch.size * batch.audit_fraction)
        audit = _sample_pool(version.id, audit_size, rng, busy)
        pool_size = _pool_size(version.id) if audit_size else None
        try:
            picks = _strategy_picks(batch, batch.project, version, batch.size - len(audit), rng,
                                    busy | {item for _, item in audit})
        except TRANSIENT_DB_ERRORS:
            raise  # transient: Celery retries
        except Exception as exc:  # bad settings or data (a missing image, a model that won't load): say so
            log.exception("selection of batch %s failed", batch_id)
            return review_batch_store(batch_id=batch_id, version=version, picks=[], error=f"{type(exc).__name__}: {exc}")
        picks += [Pick(pid, item, ReviewReason.AUDIT, None) for pid, item in audit]
        return review_batch_store(batch_id=batch_id, version=version, picks=picks, audit_pool_size=pool_size,
                                  error="" if picks else f"no unlabeled items with predictions from {version.name} are left to review")
