"""Where tensors run: CUDA when present, CPU otherwise."""

from __future__ import annotations

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def select_device(preference: str = "auto") -> torch.device:
    """Resolve a device preference ("auto", "cpu", "cuda", "cuda:1") to a torch device."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if preference.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {preference!r} requested but CUDA is not available")
        return torch.device(preference)
    if preference == "cpu":
        return torch.device("cpu")
    raise ValueError(f"unknown device {preference!r}: use one of {', '.join(DEVICE_CHOICES)}")
