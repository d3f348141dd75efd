"""Uncertainty scoring of stored predictions, in chunks, safe to run twice or in parallel."""

from __future__ import annotations

import numpy as np
from django.db import transaction
from django.utils import timezone

from hitl.errors import Busy
from hitl.models import ModelVersion, Prediction, UncertaintyScore
from workers.ml.uncertainty import SCORERS

SCORE_CHUNK = 5000


def probabilities_matrix(blobs: list[bytes | memoryview], k: int) -> np.ndarray:
    """Stored float32 probability blobs as a float64 ``[n, k]`` matrix, rows renormalised."""
    if not blobs:
        return np.zeros((0, k))
    probs = np.frombuffer(b"".join(bytes(b) for b in blobs), dtype="<f4").reshape(len(blobs), k)
    probs = probs.astype(np.float64)
    return probs / probs.sum(axis=1, keepdims=True)


def predictions_score(*, model_version_id: int, chunk_size: int = SCORE_CHUNK, wait: bool = False) -> int:
    """Score every unscored prediction of a model version with every scorer; returns how many.

    Chunks are claimed with SKIP LOCKED, so parallel runs split the work instead of repeating it,
    and a second run finds nothing left to do. With ``wait`` (selection needs every prediction
    scored) chunks another run holds are waited for instead of skipped.
    """
    version = ModelVersion.objects.get(pk=model_version_id)
    k = len(version.labels)
    total = 0
    while True:
        with transaction.atomic():
            rows = list(
                Prediction.objects.select_for_update(skip_locked=not wait)
                .filter(model_version_id=model_version_id, scored_at__isnull=True)
                .order_by("id").values_list("id", "probabilities")[:chunk_size]
            )
            if not rows:
                if not wait and _unscored(model_version_id):
                    # Rows another session still holds: a parallel run, or a worker that died
                    # mid-chunk and whose session PostgreSQL has not ended yet. Try again soon
                    # (Celery retries Busy) rather than leave them to the beat.
                    raise Busy(f"predictions of model version {model_version_id} are being scored elsewhere")
                return total
            ids = [row[0] for row in rows]
            probs = probabilities_matrix([row[1] for row in rows], k)
            scores = [
                UncertaintyScore(prediction_id=pid, model_version_id=model_version_id, method=method, value=value)
                for method, scorer in SCORERS.items()
                for pid, value in zip(ids, scorer(probs).tolist())
            ]
            UncertaintyScore.objects.bulk_create(scores, ignore_conflicts=True, batch_size=5000)
            Prediction.objects.filter(id__in=ids).update(scored_at=timezone.now())
            total += len(ids)


def _unscored(model_version_id: int) -> bool:
    return Prediction.objects.filter(model_version_id=model_version_id, scored_at__isnull=True).exists()
