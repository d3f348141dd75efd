"""Image batches to a model's input: normalising. (Decoding and resizing: workers.ml.data.)"""

from __future__ import annotations

import torch

from workers.ml.architectures import InputSpec


def normalize(batch: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """uint8 ``[n, c, h, w]`` to float, scaled to [0, 1] and normalised per channel."""
    if batch.ndim != 4 or batch.shape[1] != spec.channels:
        raise ValueError(f"expected images [n, {spec.channels}, h, w], got {tuple(batch.shape)}")
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=batch.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32, device=batch.device).view(1, -1, 1, 1)
    return (batch.float() / 255.0 - mean) / std
