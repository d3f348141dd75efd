"""Model artifacts in open formats: safetensors (weights + metadata) and ONNX.

A checkpoint is one safetensors file whose header metadata holds everything needed to rebuild
and run the model (architecture, label map, input spec, training config, metrics, temperature).

The weights are the trained network's, uncalibrated: whoever loads them divides the logits by
``temperature`` before the softmax. The ONNX graph has the temperature built in: its ``logits``
output is already divided by it, so a deployment's softmax gives calibrated probabilities with
nothing else to apply; its metadata_props hold the same metadata under the key ``hitl``.

A cycle's training state (weights, optimizer, schedule, random streams; see
``workers.ml.training.training_state``) is saved each epoch by ``save_training_state`` so that a
worker that dies mid-training can be resumed from its last epoch.
"""

from __future__ import annotations

import json
import pickle
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from workers.ml.architectures import InputSpec, build_model
from workers.ml.files import atomic_write, file_sha256

WEIGHTS_FILE = "model.safetensors"
ONNX_FILE = "model.onnx"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class CheckpointMeta:
    architecture: str
    labels: list[str]
    input_spec: InputSpec
    train_config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    temperature: float = 1.0  # divides the logits (temperature scaling); 1.0 = not calibrated

    def to_json(self) -> str:
        return json.dumps({
            "format_version": FORMAT_VERSION,
            "architecture": self.architecture,
            "labels": self.labels,
            "input_spec": self.input_spec.to_dict(),
            "train_config": self.train_config,
            "metrics": self.metrics,
            "temperature": self.temperature,
        })

    @classmethod
    def from_json(cls, text: str) -> CheckpointMeta:
        data = json.loads(text)
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"unsupported checkpoint format {data.get('format_version')!r}")
        return cls(architecture=data["architecture"], labels=list(data["labels"]),
                   input_spec=InputSpec.from_dict(data["input_spec"]),
                   train_config=data.get("train_config", {}), metrics=data.get("metrics", {}),
                   temperature=float(data.get("temperature", 1.0)))


@dataclass(frozen=True)
class ArtifactFile:
    name: str
    sha256: str
    size: int


class TemperatureScaled(nn.Module):
    """The model with its logits divided by a fixed temperature: what the ONNX export runs."""

    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) / self.temperature


def export_onnx(
    model: nn.Module, spec: InputSpec, path: Path, *, temperature: float = 1.0,
    metadata: dict[str, str] | None = None,
) -> None:
    """Export to ONNX with the logits divided by ``temperature``; ``metadata`` goes into the
    graph's metadata_props (a deployment reads it with ``session.get_modelmeta()``)."""
    model = model.eval().cpu()
    if temperature != 1.0:
        model = TemperatureScaled(model, temperature).eval()
    example = torch.zeros(1, spec.channels, spec.size, spec.size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter warns that it is legacy
        torch.onnx.export(
            model, (example,), str(path), dynamo=False, input_names=["image"],
            output_names=["logits"], dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        )
    if metadata:
        graph = onnx.load(str(path))
        for key, value in metadata.items():
            entry = graph.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(graph, str(path))


def save_checkpoint(
    model: nn.Module, meta: CheckpointMeta, directory: Path, *, onnx: bool = True
) -> list[ArtifactFile]:
    """Write the model's artifacts under ``directory``; returns each file with its sha256."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(directory / WEIGHTS_FILE,
                  lambda tmp: save_file(state, tmp, metadata={"hitl": meta.to_json()}))
    names = [WEIGHTS_FILE]
    if onnx:
        atomic_write(directory / ONNX_FILE, lambda tmp: export_onnx(model, meta.input_spec, Path(tmp),
                                                        temperature=meta.temperature,
                                                        metadata={"hitl": meta.to_json()}))
        names.append(ONNX_FILE)
    return [ArtifactFile(n, file_sha256(directory / n), (directory / n).stat().st_size) for n in names]


def read_meta(weights_path: Path) -> CheckpointMeta:
    with safe_open(str(weights_path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if "hitl" not in metadata:
        raise ValueError(f"{weights_path} is not a hitl checkpoint (no metadata)")
    return CheckpointMeta.from_json(metadata["hitl"])


def load_checkpoint(weights_path: Path, *, expected_sha256: str | None = None) -> tuple[nn.Module, CheckpointMeta]:
    """Rebuild the model from its safetensors file, checking its digest when one is given."""
    weights_path = Path(weights_path)
    if expected_sha256 is not None and file_sha256(weights_path) != expected_sha256:
        raise ValueError(f"{weights_path} does not match its recorded sha256")
    meta = read_meta(weights_path)
    model = build_model(meta.architecture, len(meta.labels), weights_path=weights_path)
    return model.eval(), meta


def save_training_state(state: dict[str, Any], path: Path) -> None:
    """Write a training state whole or not at all (a kill mid-write keeps the previous one)."""
    atomic_write(Path(path), lambda tmp: torch.save(state, tmp))


def load_training_state(path: Path) -> dict[str, Any] | None:
    """The saved training state, or None when there is none or it cannot be read (training then
    starts over rather than failing every attempt on a damaged file)."""
    try:
        return torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        return None
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError):
        return None
