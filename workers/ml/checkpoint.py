"""Model artifacts in open formats: safetensors (weights + metadata) and ONNX.

A checkpoint is one safetensors file whose header metadata holds everything needed to rebuild
and run the model (architecture, label map, input spec, training config, metrics).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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

    def to_json(self) -> str:
        return json.dumps({
            "format_version": FORMAT_VERSION,
            "architecture": self.architecture,
            "labels": self.labels,
            "input_spec": self.input_spec.to_dict(),
            "train_config": self.train_config,
            "metrics": self.metrics,
        })

    @classmethod
    def from_json(cls, text: str) -> "CheckpointMeta":
        data = json.loads(text)
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"unsupported checkpoint format {data.get('format_version')!r}")
        return cls(architecture=data["architecture"], labels=list(data["labels"]),
                   input_spec=InputSpec.from_dict(data["input_spec"]),
                   train_config=data.get("train_config", {}), metrics=data.get("metrics", {}))


@dataclass(frozen=True)
class ArtifactFile:
    name: str
    sha256: str
    size: int


def export_onnx(model: nn.Module, spec: InputSpec, path: Path) -> None:
    model = model.eval().cpu()
    example = torch.zeros(1, spec.channels, spec.size, spec.size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter warns that it is legacy
        torch.onnx.export(
            model, (example,), str(path), dynamo=False, input_names=["image"],
            output_names=["logits"], dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        )


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
        atomic_write(directory / ONNX_FILE, lambda tmp: export_onnx(model, meta.input_spec, Path(tmp)))
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
