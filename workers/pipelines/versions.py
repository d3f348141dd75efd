"""Models of recorded versions and images of items, as ``workers.ml`` wants them."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from django.conf import settings
from torch import nn

from hitl.media import item_image_bytes
from hitl.models import ModelVersion
from hitl.selectors import model_weights_file
from workers.ml.architectures import InputSpec
from workers.ml.checkpoint import CheckpointMeta, load_checkpoint
from workers.ml.device import select_device
from workers.ml.images import decode_images


def item_images(image_paths: Sequence[str], spec: InputSpec) -> torch.Tensor:
    """uint8 ``[n, c, h, w]`` tensor for item images (``Item.image``), read from the content
    store through the same opener that serves them."""
    return decode_images((item_image_bytes(p) for p in image_paths), len(image_paths), spec)


def load_version(version: ModelVersion) -> tuple[nn.Module, CheckpointMeta]:
    """The version's model on the configured device, its digest checked against the record."""
    path, sha256 = model_weights_file(version)
    model, meta = load_checkpoint(path, expected_sha256=sha256)
    return model.to(select_device(settings.HITL_DEVICE)), meta
