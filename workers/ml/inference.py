"""Running a trained model: logits and class probabilities for uint8 image batches."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from workers.ml.architectures import InputSpec
from workers.ml.images import normalize


@torch.inference_mode()
def predict_logits(
    model: nn.Module, images: torch.Tensor, spec: InputSpec,
    *, batch_size: int = 256, device: torch.device | None = None,
) -> torch.Tensor:
    """Logits ``[n, k]`` on the CPU for uint8 images ``[n, c, h, w]``, in eval mode."""
    device = device or next(model.parameters()).device
    model.eval()
    outputs = [
        model(normalize(images[start:start + batch_size].to(device), spec)).float().cpu()
        for start in range(0, len(images), batch_size)
    ]
    if not outputs:
        raise ValueError("no images to predict")
    return torch.cat(outputs)


def predict_proba(
    model: nn.Module, images: torch.Tensor, spec: InputSpec,
    *, batch_size: int = 256, device: torch.device | None = None,
) -> np.ndarray:
    """Class probabilities ``[n, k]`` (float32, rows sum to 1)."""
    logits = predict_logits(model, images, spec, batch_size=batch_size, device=device)
    return torch.softmax(logits, dim=1).numpy()
