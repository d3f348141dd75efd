"""Where tensors run: CUDA when present, CPU otherwise."""

from __future__ import annotations

import re

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")
DEVICE_SYNTAX = re.compile(r"auto|cpu|cuda(?::(0|[1-9][0-9]*))?")


def is_device_name(preference: object) -> bool:
    """Exactly "auto", "cpu", "cuda" or "cuda:N": nothing else reaches torch.device()."""
    return isinstance(preference, str) and DEVICE_SYNTAX.fullmatch(preference) is not None


def select_device(preference: str = "auto") -> torch.device:
    """Resolve a device preference ("auto", "cpu", "cuda", "cuda:1") to a torch device."""
    if not is_device_name(preference):
        raise ValueError(f"unknown device {preference!r}: use one of {', '.join(DEVICE_CHOICES)}")
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if preference.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {preference!r} requested but CUDA is not available")
    return torch.device(preference)
