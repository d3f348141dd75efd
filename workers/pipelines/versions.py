"""Models of recorded versions and images of items, as ``workers.ml`` wants them."""

from __future__ import annotations

from collections.abc import Sequence

from django.conf import settings
from torch import nn

from hitl.media import item_image_bytes
from hitl.models import ModelVersion
from hitl.selectors import model_weights_file
from workers.ml.architectures import InputSpec
from workers.ml.checkpoint import CheckpointMeta, load_checkpoint
from workers.ml.data import LazyImages
from workers.ml.device import select_device


def item_images(image_paths: Sequence[str], spec: InputSpec, targets: Sequence[int] | None = None) -> LazyImages:
    """Item images (``Item.image``) as a dataset that reads each from the content store, through
    the same opener that serves them, only when a loader asks for it: memory holds the paths."""
    return LazyImages(image_paths, item_image_bytes, spec.channels, targets=targets, size_hint=spec.size)


def loader_workers() -> int:
    return settings.HITL_LOADER_WORKERS


def load_version(version: ModelVersion) -> tuple[nn.Module, CheckpointMeta]:
    """The version's model on the configured device, its digest checked against the record."""
    path, sha256 = model_weights_file(version)
    model, meta = load_checkpoint(path, expected_sha256=sha256)
    return model.to(select_device(settings.HITL_DEVICE)), meta
