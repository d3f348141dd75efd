"""Running a model version over its project's items."""

from __future__ import annotations

import numpy as np
from django.db import transaction

from hitl.models import Item, ModelVersion
from hitl.services.ingestion import predictions_bulk_insert
from hitl.services.queue import enqueue
from workers.ml.inference import predict_proba
from workers.pipelines.versions import item_images, load_version, loader_workers

PREDICT_CHUNK = 2048


def model_predict_items(*, model_version_id: int, unlabeled_only: bool = True) -> int:
    """Run a version on its project's items that have no prediction from it yet; returns how many.

    hitl runs its own model here (no deployment), so selection can rank the pool by the current
    production model; its probabilities are calibrated by the version's temperature. Stored with ON CONFLICT DO NOTHING: safe to run twice.
    """
    version = ModelVersion.objects.get(pk=model_version_id)
    items = Item.objects.filter(project_id=version.project_id).exclude(predictions__model_version=version)
    if unlabeled_only:
        items = items.exclude(labels__status="current")
    rows = list(items.order_by("id").values_list("id", "image"))
    if not rows:
        return 0
    model, meta = load_version(version)
    created = 0
    for start in range(0, len(rows), PREDICT_CHUNK):
        chunk = rows[start:start + PREDICT_CHUNK]
        probs = predict_proba(model, item_images([r[1] for r in chunk], meta.input_spec), meta.input_spec,
                              temperature=version.temperature, num_workers=loader_workers())
        predicted = probs.argmax(axis=1)
        with transaction.atomic():
            created += predictions_bulk_insert(
                item_ids=[r[0] for r in chunk], version_id=version.id, deployment_id=None,
                blobs=[row.tobytes() for row in probs.astype("<f4")],
                predicted_labels=[version.labels[j] for j in predicted],
                confidence=probs[np.arange(len(chunk)), predicted].tolist(),
            )
    with transaction.atomic():
        enqueue("workers.tasks.score_predictions", version.id)
    return created
