"""Embeddings of item images by a pretrained backbone: what diversity sampling measures before
a project has a model of its own (a cold start)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from django.conf import settings
from torch import nn

from hitl.mlspec import PRETRAINED_BY_DEFAULT
from workers.ml.architectures import build_model, input_spec_for
from workers.ml.device import select_device
from workers.ml.inference import model_outputs
from workers.pipelines.versions import item_images, loader_workers


def backbone_name(architecture: str) -> str:
    """The project's architecture when it has offline ImageNet weights, else the default backbone."""
    return architecture if architecture in PRETRAINED_BY_DEFAULT else PRETRAINED_BY_DEFAULT[0]


@lru_cache(maxsize=2)
def _backbone(name: str) -> nn.Module:
    # ImageNet's 1,000-class head is kept: embeddings are the input of that last linear layer
    model = build_model(name, 1000, pretrained=True)
    return model.to(select_device(settings.HITL_DEVICE)).eval()


def backbone_embeddings(architecture: str, image_paths: Sequence[str]) -> np.ndarray:
    """``[n, d]`` float32 embeddings of item images (``Item.image``), read and decoded lazily in
    chunks, by the pretrained backbone the project's first model will fine-tune."""
    name = backbone_name(architecture)
    spec = input_spec_for(name)
    return model_outputs(_backbone(name), item_images(image_paths, spec), spec, embeddings=True,
                         num_workers=loader_workers()).embeddings
