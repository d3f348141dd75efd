"""Images to tensors: decoding, resizing to a model's input and normalising."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from workers.ml.architectures import InputSpec


def decode_image(path: Path, spec: InputSpec) -> np.ndarray:
    """One image file as uint8 ``[c, size, size]`` in the model's channel layout."""
    with Image.open(path) as image:
        image = image.convert("L" if spec.channels == 1 else "RGB")
        if image.size != (spec.size, spec.size):
            image = image.resize((spec.size, spec.size), Image.Resampling.BILINEAR)
        array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[None, :, :]
    else:
        array = array.transpose(2, 0, 1)
    return np.ascontiguousarray(array)


def decode_images(paths: Sequence[Path], spec: InputSpec) -> torch.Tensor:
    """Many image files as one uint8 tensor ``[n, c, size, size]``."""
    batch = np.empty((len(paths), spec.channels, spec.size, spec.size), dtype=np.uint8)
    for i, path in enumerate(paths):
        batch[i] = decode_image(path, spec)
    return torch.from_numpy(batch)


def normalize(batch: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """uint8 ``[n, c, h, w]`` to float, scaled to [0, 1] and normalised per channel."""
    if batch.ndim != 4 or batch.shape[1] != spec.channels:
        raise ValueError(f"expected images [n, {spec.channels}, h, w], got {tuple(batch.shape)}")
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=batch.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32, device=batch.device).view(1, -1, 1, 1)
    return (batch.float() / 255.0 - mean) / std
