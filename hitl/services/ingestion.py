"""Bulk prediction ingestion: the one path by which predictions enter hitl (API and demo alike).

A bulk is validated whole before anything is written: it is stored all-or-nothing. Sending the
same bulk again stores nothing new (one prediction per item and model version), so a deployment
may retry freely after a timeout. A re-sent prediction that differs from the stored one is not
stored either, but reported back as a conflict.

Concurrent bulks may share images in any order. Each transaction inserts its rows in one fixed
order (items by sha256, predictions by item id), so two bulks never hold each other's rows in a
cycle; a transaction PostgreSQL still refuses (deadlock or serialization failure) is retried a
few times, then the deployment gets a 503 with Retry-After.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.db import OperationalError, connection, transaction
from django.utils import timezone

from hitl.errors import FieldError, InvalidInput, Unavailable
from hitl.media import (
    ImageInfo,
    ImageRejected,
    StorageReader,
    content_addressed_path,
    inspect_image,
    write_once,
)
from hitl.models import (
    Deployment,
    Item,
    Label,
    LabelSource,
    LabelStatus,
    ModelVersion,
    Prediction,
    Split,
)
from hitl.services.golden import review_only_items
from hitl.services.labels import label_submit
from hitl.services.queue import enqueue

IMAGE_KEYS = ("image_path", "image_base64", "image_upload")
RECORD_KEYS = frozenset((*IMAGE_KEYS, "probabilities", "predicted_label"))
ENVELOPE_KEYS = frozenset(("model_version", "predictions"))
MAX_REPORTED_ERRORS = 100
# How often one bulk's transaction is tried when PostgreSQL aborts it for contention.
TRANSACTION_ATTEMPTS = 4
RETRYABLE_SQLSTATES = frozenset(("40P01", "40001"))  # deadlock detected, serialization failure
T = TypeVar("T")


@dataclass(frozen=True)
class PredictionConflict:
    """A re-sent prediction that differs from the stored one (which stands)."""

    index: int  # position in the bulk
    item_id: int
    field: str  # "probabilities" or "predicted_label"


@dataclass(frozen=True)
class IngestResult:
    model_version: ModelVersion
    created: int
    duplicates: int  # already stored, identical: a retry
    items_created: int
    item_ids: list[int]
    conflicts: list[PredictionConflict]


@dataclass(frozen=True)
class _ImageRow:
    sha256: str
    image: str  # relative to MEDIA_ROOT
    info: ImageInfo
    size_bytes: int


def split_for(sha256: str, holdout_fraction: float) -> str:
    """Deterministic split from the content hash: reproducible, and stable as data grows."""
    return Split.HOLDOUT if int(sha256[:8], 16) / 0x1_0000_0000 < holdout_fraction else Split.TRAIN


def _resolve_version(deployment: Deployment, name: Any) -> ModelVersion:
    if name is None:
        return deployment.model_version
    if not isinstance(name, str) or not name:
        raise InvalidInput.single("model_version", "must be a model version name (a non-empty string)")
    version = ModelVersion.objects.filter(project_id=deployment.project_id, name=name).first()
    if version is None:
        known = list(ModelVersion.objects.filter(project_id=deployment.project_id).values_list("name", flat=True))
        raise InvalidInput.single(
            "model_version",
            f"unknown model version {name!r} for project {deployment.project.slug!r} (known: {', '.join(known) or 'none'})",
        )
    return version


def _records(payload: Any) -> list[Any]:
    if not isinstance(payload, dict):
        raise InvalidInput.single("", "body must be a JSON object with a 'predictions' list")
    unknown = sorted(set(payload) - ENVELOPE_KEYS)
    if unknown:
        raise InvalidInput.single(unknown[0], f"unknown field; allowed: {', '.join(sorted(ENVELOPE_KEYS))}")
    records = payload.get("predictions")
    if not isinstance(records, list) or not records:
        raise InvalidInput.single("predictions", "must be a non-empty list")
    if len(records) > settings.HITL_MAX_BULK_PREDICTIONS:
        raise InvalidInput.single(
            "predictions",
            f"{len(records)} predictions in one request; the limit is {settings.HITL_MAX_BULK_PREDICTIONS}",
        )
    return records


def _check_record_shape(index: int, record: Any, k: int, errors: list[FieldError]) -> bool:
    field = f"predictions[{index}]"
    if not isinstance(record, dict):
        errors.append(FieldError(field, "must be an object"))
        return False
    ok = True
    unknown = set(record) - RECORD_KEYS
    if unknown:
        errors.append(FieldError(f"{field}.{sorted(unknown)[0]}", f"unknown field; allowed: {', '.join(sorted(RECORD_KEYS))}"))
        ok = False
    sources = [key for key in IMAGE_KEYS if key in record]
    if len(sources) != 1:
        errors.append(FieldError(f"{field}.image", f"give exactly one of {', '.join(IMAGE_KEYS)}"))
        ok = False
    probs = record.get("probabilities")
    if not isinstance(probs, list):
        errors.append(FieldError(f"{field}.probabilities", "must be a list of numbers"))
        return False
    if len(probs) != k:
        errors.append(FieldError(f"{field}.probabilities", f"has {len(probs)} values; the model version has {k} labels"))
        return False
    if not all(type(v) is float or type(v) is int for v in probs):
        errors.append(FieldError(f"{field}.probabilities", "must contain only numbers"))
        return False
    return ok


def _check_probabilities(probs: np.ndarray, rows: list[int], tolerance: float, errors: list[FieldError]) -> np.ndarray:
    """Vectorised range and sum checks; returns a mask of the good rows."""
    finite = np.isfinite(probs).all(axis=1)
    in_range = ((probs >= 0) & (probs <= 1)).all(axis=1) | ~finite
    sums = np.where(finite, probs.sum(axis=1), 1.0)
    sums_ok = np.abs(sums - 1.0) <= tolerance
    for position in np.flatnonzero(~(finite & in_range & sums_ok)):
        field = f"predictions[{rows[position]}].probabilities"
        if not finite[position]:
            errors.append(FieldError(field, "contains NaN or infinity"))
        elif not in_range[position]:
            errors.append(FieldError(field, "values must lie between 0 and 1"))
        else:
            errors.append(FieldError(field, f"sums to {sums[position]:.6f}; must be 1 within {tolerance}"))
    return finite & in_range & sums_ok


def _load_image(record: dict, uploads: Mapping[str, UploadedFile], storage: StorageReader) -> _ImageRow:
    if "image_path" in record:
        path = record["image_path"]
        if not isinstance(path, str):
            raise ImageRejected("image_path must be a string")
        data = storage.read(path)  # copied into the content store: never read at that path again
    elif "image_base64" in record:
        encoded = record["image_base64"]
        if not isinstance(encoded, str):
            raise ImageRejected("image_base64 must be a string")
        if len(encoded) * 3 // 4 > settings.HITL_MAX_IMAGE_BYTES:
            raise ImageRejected(f"image is larger than the limit of {settings.HITL_MAX_IMAGE_BYTES} bytes")
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ImageRejected("image_base64 is not valid base64") from None
    else:
        name = record["image_upload"]
        upload = uploads.get(name) if isinstance(name, str) else None
        if upload is None:
            raise ImageRejected(f"no uploaded file named {name!r} in this multipart request")
        if upload.size > settings.HITL_MAX_IMAGE_BYTES:
            raise ImageRejected(f"image is {upload.size} bytes, more than the limit of {settings.HITL_MAX_IMAGE_BYTES}")
        upload.seek(0)
        data = upload.read()
    return _store_image(data)


def _store_image(data: bytes) -> _ImageRow:
    info = inspect_image(data)
    sha256 = hashlib.sha256(data).hexdigest()
    relative = content_addressed_path(sha256, info.format)
    # Stored at once, so a bulk holds one image in memory at a time. Content-addressed: a bulk
    # rejected later leaves at most unreferenced files, never a wrong one.
    write_once(relative, data)
    return _ImageRow(sha256, relative, info, len(data))


def _validate(
    records: list[Any], version: ModelVersion, uploads: Mapping[str, UploadedFile], deployment: Deployment
) -> tuple[np.ndarray, list[int], list[_ImageRow]]:
    labels: list[str] = version.labels
    k = len(labels)
    errors: list[FieldError] = []
    good = [i for i, record in enumerate(records) if _check_record_shape(i, record, k, errors)]
    probs = np.array([records[i]["probabilities"] for i in good], dtype=np.float64).reshape(len(good), k)
    mask = _check_probabilities(probs, good, settings.HITL_PROBABILITY_TOLERANCE, errors)
    label_index = {label: j for j, label in enumerate(labels)}
    predicted = probs.argmax(axis=1) if len(good) else np.zeros(0, dtype=np.int64)
    images: list[_ImageRow] = []
    first_seen: dict[str, int] = {}
    storage = StorageReader(prefix=deployment.storage_prefix)
    for position, i in enumerate(good):
        record = records[i]
        if "predicted_label" in record:
            index = label_index.get(record["predicted_label"]) if isinstance(record["predicted_label"], str) else None
            if index is None:
                errors.append(FieldError(
                    f"predictions[{i}].predicted_label",
                    f"unknown label {record['predicted_label']!r}; labels are {', '.join(labels)}",
                ))
                mask[position] = False
            else:
                predicted[position] = index
        try:
            image = _load_image(record, uploads, storage)
        except ImageRejected as exc:
            source = next(key for key in IMAGE_KEYS if key in record)
            errors.append(FieldError(f"predictions[{i}].{source}", str(exc)))
            continue
        if image.sha256 in first_seen:
            errors.append(FieldError(
                f"predictions[{i}]",
                f"same image as predictions[{first_seen[image.sha256]}]: one prediction per image and model version",
            ))
            continue
        first_seen[image.sha256] = i
        images.append(image)
    if errors:
        errors.sort(key=lambda e: _record_index(e.field))
        raise InvalidInput(errors[:MAX_REPORTED_ERRORS])
    return probs, predicted.tolist(), images


def _record_index(field: str) -> int:
    if field.startswith("predictions["):
        return int(field[len("predictions["):field.index("]")])
    return -1


def predictions_ingest(
    *, deployment: Deployment, payload: Any, uploads: Mapping[str, UploadedFile] | None = None,
    model_version: ModelVersion | None = None,
) -> IngestResult:
    """Validate a whole bulk of predictions, then store it in one transaction.

    ``payload`` is ``{"model_version": name?, "predictions": [{image_path | image_base64 |
    image_upload, probabilities, predicted_label?}, ...]}``; the deployment's current model
    version is used when none is named.
    """
    records = _records(payload)
    version = model_version or _resolve_version(deployment, payload.get("model_version"))
    if version.project_id != deployment.project_id:
        raise InvalidInput.single("model_version", "belongs to another project than the deployment")
    probs, predicted, images = _validate(records, version, uploads or {}, deployment)
    labels = version.labels
    confidence = probs[np.arange(len(predicted)), predicted]
    blobs = [row.tobytes() for row in probs.astype("<f4")]
    predicted_labels = [labels[j] for j in predicted]

    def store() -> tuple[list[int], int, int]:
        with transaction.atomic():
            item_ids, items_created = _insert_items(deployment.project, images)
            created = predictions_bulk_insert(
                item_ids=item_ids, version_id=version.id, deployment_id=deployment.id, blobs=blobs,
                predicted_labels=predicted_labels, confidence=confidence.tolist(),
            )
            Deployment.objects.filter(pk=deployment.pk).update(last_seen_at=timezone.now())
            if created:
                enqueue("workers.tasks.score_predictions", version.id)
        return item_ids, items_created, created

    item_ids, items_created, created = _retry_on_contention(store)
    conflicts = _prediction_conflicts(version_id=version.id, item_ids=item_ids, blobs=blobs,
                                      predicted_labels=predicted_labels)
    duplicates = len(records) - created - len(conflicts)
    return IngestResult(version, created, duplicates, items_created, item_ids, conflicts)


def _retry_on_contention(store: Callable[[], T]) -> T:
    """Run ``store`` (one transaction), again if PostgreSQL aborted it for a deadlock or a
    serialization failure; after TRANSACTION_ATTEMPTS refusals, :class:`Unavailable`.

    Inside a caller's transaction a retry could not undo what that transaction already holds,
    so there the first refusal propagates.
    """
    attempts = 1 if connection.in_atomic_block else TRANSACTION_ATTEMPTS
    for attempt in range(1, attempts + 1):
        try:
            return store()
        except OperationalError as exc:
            if getattr(exc.__cause__, "sqlstate", None) not in RETRYABLE_SQLSTATES or attempts == 1:
                raise
            if attempt == attempts:
                raise Unavailable(
                    f"the database refused this bulk {attempts} times under concurrent writes; "
                    "nothing was stored, send it again", retry_after=1,
                ) from exc
            time.sleep(random.uniform(0.01, 0.05) * attempt)  # jitter: let the other bulk commit
    raise AssertionError("unreachable")


def _prediction_conflicts(
    *, version_id: int, item_ids: list[int], blobs: list[bytes], predicted_labels: list[str],
) -> list[PredictionConflict]:
    """Compare what is stored for each item with what this bulk sent (read after the commit, so
    a concurrent bulk's prediction for the same item is seen)."""
    stored: dict[int, tuple[bytes, str]] = {}
    for start in range(0, len(item_ids), 1000):
        rows = Prediction.objects.filter(
            model_version_id=version_id, item_id__in=item_ids[start:start + 1000]
        ).values_list("item_id", "probabilities", "predicted_label")
        stored.update((item_id, (bytes(blob), label)) for item_id, blob, label in rows)
    conflicts = []
    for index, (item_id, blob, label) in enumerate(zip(item_ids, blobs, predicted_labels)):
        stored_blob, stored_label = stored[item_id]
        if stored_blob != blob:
            conflicts.append(PredictionConflict(index, item_id, "probabilities"))
        elif stored_label != label:
            conflicts.append(PredictionConflict(index, item_id, "predicted_label"))
    return conflicts


def _insert_items(project: Any, images: list[_ImageRow]) -> tuple[list[int], int]:
    """Create the items not yet known; return every image's item id, in the order given.

    Rows are inserted sorted by sha256: two transactions sharing images then wait for each
    other's uncommitted rows in the same order, never in a cycle.
    """
    shas = [image.sha256 for image in images]
    images = sorted(images, key=lambda image: image.sha256)
    splits = [split_for(image.sha256, project.holdout_fraction) for image in images]
    now = timezone.now()
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                f"""INSERT INTO {Item._meta.db_table}
                    (project_id, sha256, image, width, height, size_bytes, format, split, created_at)
                SELECT %s, t.* , %s FROM unnest(%s::text[], %s::text[], %s::int[], %s::int[],
                    %s::int[], %s::text[], %s::text[]) AS t
                ON CONFLICT (project_id, sha256) DO NOTHING""",
                [project.id, now, [i.sha256 for i in images], [i.image for i in images],
                 [i.info.width for i in images],
                 [i.info.height for i in images], [i.size_bytes for i in images],
                 [i.info.format for i in images], splits],
            )
            created = cursor.rowcount
            cursor.execute(
                f"SELECT sha256, id FROM {Item._meta.db_table} WHERE project_id = %s AND sha256 = ANY(%s)",
                [project.id, shas],
            )
            ids = dict(cursor.fetchall())
    else:
        before = Item.objects.filter(project=project).count()
        Item.objects.bulk_create(
            [Item(project=project, sha256=i.sha256, image=i.image, width=i.info.width, height=i.info.height,
                  size_bytes=i.size_bytes, format=i.info.format, split=s, created_at=now)
             for i, s in zip(images, splits)],
            ignore_conflicts=True, batch_size=500,
        )
        created = Item.objects.filter(project=project).count() - before
        ids = {}
        for start in range(0, len(shas), 500):
            ids.update(Item.objects.filter(project=project, sha256__in=shas[start:start + 500]).values_list("sha256", "id"))
    return [ids[sha] for sha in shas], created


def predictions_bulk_insert(
    *, item_ids: list[int], version_id: int, deployment_id: int | None, blobs: list[bytes],
    predicted_labels: list[str], confidence: list[float],
) -> int:
    """Insert predictions, skipping (item, version) pairs already stored; returns how many were new.

    Rows are inserted sorted by item id, for the same reason items are sorted by sha256.
    """
    now = timezone.now()
    order = sorted(range(len(item_ids)), key=item_ids.__getitem__)
    item_ids, blobs, predicted_labels, confidence = (
        [column[i] for i in order] for column in (item_ids, blobs, predicted_labels, confidence)
    )
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                f"""INSERT INTO {Prediction._meta.db_table}
                    (item_id, model_version_id, deployment_id, probabilities, predicted_label, confidence, received_at)
                SELECT t.item_id, %s, %s, t.probabilities, t.predicted_label, t.confidence, %s
                FROM unnest(%s::bigint[], %s::bytea[], %s::text[], %s::float8[])
                    AS t(item_id, probabilities, predicted_label, confidence)
                ON CONFLICT (item_id, model_version_id) DO NOTHING""",
                [version_id, deployment_id, now, item_ids, blobs, predicted_labels, confidence],
            )
            return cursor.rowcount
    existing = set()
    for start in range(0, len(item_ids), 500):
        existing.update(Prediction.objects.filter(
            model_version_id=version_id, item_id__in=item_ids[start:start + 500]
        ).values_list("item_id", flat=True))
    new = [
        Prediction(item_id=item_id, model_version_id=version_id, deployment_id=deployment_id,
                   probabilities=blob, predicted_label=label, confidence=conf, received_at=now)
        for item_id, blob, label, conf in zip(item_ids, blobs, predicted_labels, confidence)
        if item_id not in existing
    ]
    Prediction.objects.bulk_create(new, batch_size=500)
    return len(new)


def items_register(*, project: Any, image_paths: list[str]) -> list[int]:
    """Register images under the storage root as items without predictions (e.g. a seed set
    to label before any model exists). All-or-nothing; returns item ids in order."""
    if not image_paths:
        raise InvalidInput.single("images", "give at least one image path")
    errors: list[FieldError] = []
    images: list[_ImageRow] = []
    storage = StorageReader()
    for i, path in enumerate(image_paths):
        try:
            images.append(_load_image({"image_path": path}, {}, storage))
        except ImageRejected as exc:
            errors.append(FieldError(f"images[{i}]", str(exc)))
    if errors:
        raise InvalidInput(errors[:MAX_REPORTED_ERRORS])
    with transaction.atomic():
        item_ids, _ = _insert_items(project, images)
    return item_ids


@dataclass(frozen=True)
class ImportedImage:
    """One image to import: its bytes, a name for error messages, and optionally its label."""

    name: str
    data: bytes
    label: str | None = None


@dataclass(frozen=True)
class ImportResult:
    item_ids: list[int]
    items_created: int
    labels_created: int


def _label_refusals(project: Any, labeled: list[tuple[int, ImportedImage, str]]) -> list[FieldError]:
    """Why an import may not give these (index, image, sha256) their labels: an existing item
    whose labels come only through review (golden set, held out, audit draw) takes an import's
    label only where its current label is already that very import's."""
    existing = dict(Item.objects.filter(project=project, sha256__in=[sha for _, _, sha in labeled])
                    .values_list("sha256", "id"))
    roles = review_only_items(project_id=project.id, item_ids=existing.values())
    current = {label.item_id: label for label in Label.objects.filter(item_id__in=list(roles), status=LabelStatus.CURRENT)}
    errors = []
    for index, image, sha256 in labeled:
        item_id = existing.get(sha256)
        if item_id in roles and not _imported_as(current.get(item_id), image):
            errors.append(FieldError(f"images[{index}]", (
                f"{image.name}: item {item_id} is {roles[item_id]}: its label comes only through a review "
                "task; import this image without a label")))
    return errors


def _imported_as(label: Label | None, image: ImportedImage) -> bool:
    """Whether ``label`` is what importing ``image`` records (so importing it again writes nothing)."""
    return label is not None and bool(image.name) and (label.value, label.source, label.external_id) == (
        image.label, LabelSource.IMPORT, image.name[:200])


def import_label_refusals(*, project: Any, images: list[ImportedImage], first_index: int = 0) -> list[FieldError]:
    """The labeled images ``items_import`` would refuse (see ``_label_refusals``), without
    writing anything: a command importing in chunks checks every chunk before it stores one."""
    labeled = [(first_index + i, image, hashlib.sha256(image.data).hexdigest())
               for i, image in enumerate(images) if image.label is not None]
    return _label_refusals(project, labeled) if labeled else []


def items_import(*, project: Any, images: list[ImportedImage], source: str, actor: str = "") -> ImportResult:
    """Add images with no prediction (a cold start: no model yet), all-or-nothing; returns item
    ids in order. An image with a label (an ImageFolder of labeled images) also gets a current
    Label with source IMPORT whose reviewer name records ``source`` (e.g. the folder path) and
    whose external id is the image's name. Importing the same images again changes nothing.

    An import's label goes to a new item or an existing item with no evaluation role; a label
    for a golden-set, held-out or audit-drawn item that exists already is refused, naming the
    items, and nothing is stored: their labels come only through review tasks."""
    if not images:
        raise InvalidInput.single("images", "give at least one image")
    errors = [FieldError(f"images[{i}]", f"{image.name}: unknown label {image.label!r}; the project's labels "
                                         f"are {', '.join(project.labels)}")
              for i, image in enumerate(images) if image.label is not None and image.label not in project.labels]
    rows: list[_ImageRow] = []
    for i, image in enumerate(images):
        try:
            rows.append(_store_image(image.data))
        except ImageRejected as exc:
            errors.append(FieldError(f"images[{i}]", f"{image.name}: {exc}"))
    if errors:
        raise InvalidInput(errors[:MAX_REPORTED_ERRORS])
    name = (f"import: {source}" if source else f"import by {actor}")[:200]
    labeled = [(i, image, row.sha256) for i, (image, row) in enumerate(zip(images, rows)) if image.label is not None]
    with transaction.atomic():
        refused = _label_refusals(project, labeled) if labeled else []
        if refused:
            raise InvalidInput(refused[:MAX_REPORTED_ERRORS])
        item_ids, created = _insert_items(project, rows)
        existing = set(Label.objects.filter(item_id__in=item_ids, status=LabelStatus.CURRENT).values_list("id", flat=True))
        labeled_now = [label_submit(item_id=item_id, value=image.label, source=LabelSource.IMPORT,
                                    reviewer_name=name, external_id=image.name[:200])
                       for item_id, image in zip(item_ids, images) if image.label is not None]
    return ImportResult(item_ids, created, sum(label.id not in existing for label in labeled_now))
