"""Glue between database rows and ``workers.ml``: images of items, models of versions."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from django.conf import settings
from django.db import transaction
from torch import nn

from hitl.media import item_image_bytes, media_path
from hitl.models import ArtifactKind, Item, ModelArtifact, ModelVersion
from hitl.services.ingestion import predictions_bulk_insert
from hitl.services.queue import enqueue
from workers.ml.architectures import InputSpec
from workers.ml.checkpoint import CheckpointMeta, load_checkpoint
from workers.ml.device import select_device
from workers.ml.images import decode_images
from workers.ml.inference import predict_proba

PREDICT_CHUNK = 2048


def item_images(image_paths: Sequence[str], spec: InputSpec) -> torch.Tensor:
    """uint8 ``[n, c, h, w]`` tensor for item images (``Item.image``), read from the content
    store through the same opener that serves them."""
    return decode_images((item_image_bytes(p) for p in image_paths), len(image_paths), spec)


def weights_file(version: ModelVersion) -> tuple[Path, str]:
    artifact = ModelArtifact.objects.get(model_version=version, kind=ArtifactKind.WEIGHTS)
    return media_path(artifact.path), artifact.sha256


def load_version(version: ModelVersion) -> tuple[nn.Module, CheckpointMeta]:
    """The version's model on the configured device, its digest checked against the record."""
    path, sha256 = weights_file(version)
    model, meta = load_checkpoint(path, expected_sha256=sha256)
    return model.to(select_device(settings.HITL_DEVICE)), meta


def labeled_set_digest(rows: Sequence[tuple[int, str, str]]) -> str:
    """A digest of (label id, item sha256, value) rows: names an exact labeled set."""
    digest = hashlib.sha256()
    for label_id, sha256, value in sorted(rows):
        digest.update(f"{label_id}:{sha256}:{value}\n".encode())
    return digest.hexdigest()


def model_predict_items(*, model_version_id: int, unlabeled_only: bool = True) -> int:
    """Run a version on its project's items that have no prediction from it yet; returns how many.

    hitl runs its own model here (no deployment), so selection can rank the pool by the current
    production model. Stored with ON CONFLICT DO NOTHING: safe to run twice.
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
        probs = predict_proba(model, item_images([r[1] for r in chunk], meta.input_spec), meta.input_spec)
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
