"""Bring your own model: a torchvision-architecture state_dict (``.pt``/``.pth``) or a plain
safetensors file, with its label list and preprocessing, turned into a hitl checkpoint.

The weights are loaded strictly (every tensor must match the architecture with the given number
of classes) and checked with a forward pass before anything is written.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from workers.ml.architectures import ARCHITECTURES, InputSpec, get_architecture, read_state_dict
from workers.ml.checkpoint import ArtifactFile, CheckpointMeta, save_checkpoint

ACCEPTED = ("a torchvision-architecture state_dict saved with torch.save(model.state_dict(), 'model.pth') "
            "(.pt/.pth, read with weights_only=True), or the same tensors in a .safetensors file; "
            f"architectures: {', '.join(ARCHITECTURES)}")


def read_foreign_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a state_dict file, or a ValueError that says what hitl accepts."""
    path = Path(path)
    if path.suffix not in (".pt", ".pth", ".safetensors"):
        raise ValueError(f"{path.name}: unknown file type {path.suffix or '(none)'!r}; hitl accepts {ACCEPTED}")
    try:
        return read_state_dict(path)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - a bad pickle raises anything from IndexError to UnpicklingError
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ValueError(f"{path.name} is not readable as model weights ({reason}); hitl accepts {ACCEPTED}") from None


def strict_model(architecture: str, labels: list[str], state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The architecture with ``len(labels)`` classes and exactly these weights (strict load)."""
    model = get_architecture(architecture).build(len(labels))
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong_shape = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if missing or unexpected or wrong_shape:
        raise ValueError(
            f"the weights do not fit {architecture} with {len(labels)} classes: "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}), "
            f"{len(wrong_shape)} of another shape (e.g. {wrong_shape[:3]}); check --architecture and that "
            "--labels lists the model's classes in output order")
    model.load_state_dict(state, strict=True)
    return model.eval()


def check_forward(model: torch.nn.Module, spec: InputSpec, num_classes: int) -> None:
    """One forward pass on a batch of two: the output must be finite logits [2, num_classes]."""
    with torch.inference_mode():
        logits = model(torch.zeros(2, spec.channels, spec.size, spec.size))
    if tuple(logits.shape) != (2, num_classes):
        raise ValueError(f"the model's output is {tuple(logits.shape)}, expected (2, {num_classes}) for the labels")
    if not torch.isfinite(logits).all():
        raise ValueError("the model's output is not finite on a blank image: the weights are broken")


def checkpoint_from_state_dict(
    weights: Path, *, architecture: str, labels: list[str], spec: InputSpec, directory: Path,
) -> list[ArtifactFile]:
    """Write a hitl checkpoint (safetensors with metadata, and ONNX) for foreign weights."""
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise ValueError("give at least two distinct labels, in the model's output order")
    if len(spec.mean) != spec.channels or len(spec.std) != spec.channels or not all(
            math.isfinite(s) and s > 0 for s in spec.std) or not 16 <= spec.size <= 1024:
        raise ValueError(f"preprocessing must give one mean and one positive std per channel ({spec.channels}) "
                         "and a size between 16 and 1024 pixels")
    model = strict_model(architecture, labels, read_foreign_weights(weights))
    check_forward(model, spec, len(labels))
    meta = CheckpointMeta(architecture, list(labels), spec, {}, {"imported_from": Path(weights).name})
    return save_checkpoint(model, meta, directory)
