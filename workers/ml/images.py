"""Images to tensors: decoding, resizing to a model's input and normalising."""

from __future__ import annotations

import io
from collections.abc import Iterable

import numpy as np
import torch
from PIL import Image

from workers.ml.architectures import InputSpec


def decode_image(data: bytes, spec: InputSpec) -> np.ndarray:
    """One encoded image (its file's bytes) as uint8 ``[c, size, size]`` in the model's channel
    layout. Callers read the bytes themselves: this module opens no paths."""
    with Image.open(io.BytesIO(data)) as image:
        image = image.convert("L" if spec.channels == 1 else "RGB")
        if image.size != (spec.size, spec.size):
            image = image.resize((spec.size, spec.size), Image.Resampling.BILINEAR)
        array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[None, :, :]
    else:
        array = array.transpose(2, 0, 1)
    return np.ascontiguousarray(array)


def decode_images(images: Iterable[bytes], count: int, spec: InputSpec) -> torch.Tensor:
    """``count`` encoded images as one uint8 tensor ``[count, c, size, size]``; ``images`` may be
    a generator, so only one encoded image need be in memory at a time."""
    batch = np.empty((count, spec.channels, spec.size, spec.size), dtype=np.uint8)
    i = -1
    for i, data in enumerate(images):
        batch[i] = decode_image(data, spec)
    if i + 1 != count:
        raise ValueError(f"expected {count} images, got {i + 1}")
    return torch.from_numpy(batch)


def normalize(batch: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """uint8 ``[n, c, h, w]`` to float, scaled to [0, 1] and normalised per channel."""
    if batch.ndim != 4 or batch.shape[1] != spec.channels:
        raise ValueError(f"expected images [n, {spec.channels}, h, w], got {tuple(batch.shape)}")
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=batch.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32, device=batch.device).view(1, -1, 1, 1)
    return (batch.float() / 255.0 - mean) / std
