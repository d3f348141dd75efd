"""Running a trained model: logits, class probabilities, embeddings and MC-dropout samples for
uint8 image batches."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from workers.ml.architectures import InputSpec, SmallCNN
from workers.ml.data import image_batches
from workers.ml.images import normalize

Images = torch.Tensor | Dataset  # decoded uint8 [n, c, h, w], or a dataset that decodes lazily


# Images per forward pass. On a GPU a large batch keeps it busy; on the CPU a small one runs as
# fast (2.4 vs 2.7 images/s for EfficientNet-Lite0 at 224 px, 2 threads) in a third of the memory
# (1.7 vs 5.3 GB peak RSS): 256 activations of a 224 px network are gigabytes.
INFERENCE_BATCH = {"cuda": 256, "cpu": 32}


def inference_batch_size(device: torch.device, requested: int | None = None) -> int:
    """``requested``, or the default for the device's kind."""
    if requested is not None:
        if requested < 1:
            raise ValueError(f"batch_size must be at least 1, got {requested}")
        return requested
    return INFERENCE_BATCH.get(device.type, INFERENCE_BATCH["cpu"])


def accelerated(device: torch.device) -> AbstractContextManager:
    """bf16 autocast on CUDA; plain float32 elsewhere (CPU bf16 is slower and less exact)."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def model_input(batch: torch.Tensor, spec: InputSpec, device: torch.device) -> torch.Tensor:
    """A uint8 batch normalised on ``device``; channels-last on CUDA, where convolutions want it."""
    x = normalize(batch.to(device, non_blocking=True), spec)
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    model.to(device)
    return model.to(memory_format=torch.channels_last) if device.type == "cuda" else model


@torch.inference_mode()
def predict_logits(
    model: nn.Module, images: Images, spec: InputSpec,
    *, batch_size: int | None = None, device: torch.device | None = None, num_workers: int = 0,
) -> torch.Tensor:
    """Logits ``[n, k]`` on the CPU, in eval mode, streamed batch by batch."""
    device = device or next(model.parameters()).device
    batch_size = inference_batch_size(device, batch_size)
    prepare_model(model, device).eval()
    with accelerated(device):
        outputs = [model(model_input(batch, spec, device)).float().cpu()
                   for batch in image_batches(images, spec, batch_size=batch_size, num_workers=num_workers)]
    if not outputs:
        raise ValueError("no images to predict")
    return torch.cat(outputs)


def predict_proba(
    model: nn.Module, images: Images, spec: InputSpec,
    *, batch_size: int | None = None, device: torch.device | None = None, temperature: float = 1.0,
    num_workers: int = 0,
) -> np.ndarray:
    """Class probabilities ``[n, k]`` (float32, rows sum to 1) of the logits divided by the
    model's ``temperature`` (temperature scaling; 1.0 = as trained)."""
    _check_temperature(temperature)
    logits = predict_logits(model, images, spec, batch_size=batch_size, device=device, num_workers=num_workers)
    return torch.softmax(logits / temperature, dim=1).numpy()


def _check_temperature(temperature: float) -> None:
    if not (isinstance(temperature, (int, float)) and 0 < temperature < float("inf")):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")


@dataclass(frozen=True)
class ModelOutputs:
    probs: np.ndarray  # [n, k]
    embeddings: np.ndarray | None  # [n, d], the input of the last linear layer
    mc_probs: np.ndarray | None  # [n, k, T]


def _dropout_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]


def _last_linear(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("the model has no linear layer to take embeddings from")
    return linears[-1]


def _outputs_small_cnn(model: SmallCNN, x: torch.Tensor, embeddings: bool, mc_samples: int, t: float) -> tuple:
    z = model.trunk(x)
    h = model.embed(z)
    probs = torch.softmax(model.classify(h) / t, dim=1)
    samples = None
    if mc_samples:
        for layer in _dropout_layers(model):
            layer.train()
        # Only the head has dropout: the convolutional trunk runs once, the head T times.
        samples = torch.stack([torch.softmax(model.classify(model.embed(z)) / t, dim=1)
                               for _ in range(mc_samples)], dim=2)
        model.eval()
    return probs, h if embeddings else None, samples


def _outputs_generic(model: nn.Module, x: torch.Tensor, embeddings: bool, mc_samples: int, t: float) -> tuple:
    captured: list[torch.Tensor] = []
    hook = _last_linear(model).register_forward_hook(lambda m, inputs, out: captured.append(inputs[0]))
    try:
        probs = torch.softmax(model(x) / t, dim=1)
    finally:
        hook.remove()
    samples = None
    if mc_samples:
        for layer in _dropout_layers(model):
            layer.train()
        samples = torch.stack([torch.softmax(model(x) / t, dim=1) for _ in range(mc_samples)], dim=2)
        model.eval()
    return probs, captured[0] if embeddings else None, samples


@torch.inference_mode()
def model_outputs(
    model: nn.Module, images: Images, spec: InputSpec, *, embeddings: bool = False, mc_samples: int = 0,
    batch_size: int | None = None, device: torch.device | None = None, seed: int = 0, temperature: float = 1.0,
    num_workers: int = 0,
) -> ModelOutputs:
    """Probabilities, and on request embeddings and ``mc_samples`` MC-dropout passes; the
    probabilities (MC ones too) are of the logits divided by ``temperature``."""
    _check_temperature(temperature)
    if mc_samples < 0 or mc_samples == 1:
        raise ValueError(f"mc_samples must be 0 or at least 2, got {mc_samples}")
    if mc_samples and not _dropout_layers(model):
        raise ValueError("MC dropout needs a model with dropout layers; this one has none")
    if len(images) == 0:
        raise ValueError("no images to run the model on")
    device = device or next(model.parameters()).device
    batch_size = inference_batch_size(device, batch_size)
    prepare_model(model, device).eval()
    torch.manual_seed(seed)
    run = _outputs_small_cnn if isinstance(model, SmallCNN) else _outputs_generic
    parts: list[tuple] = []
    for batch in image_batches(images, spec, batch_size=batch_size, num_workers=num_workers):
        with accelerated(device):
            outputs = run(model, model_input(batch, spec, device), embeddings, mc_samples, temperature)
        parts.append(tuple(t.float().cpu() if t is not None else None for t in outputs))
    probs = torch.cat([p[0] for p in parts]).numpy()
    emb = torch.cat([p[1] for p in parts]).numpy() if embeddings else None
    mc = torch.cat([p[2] for p in parts]).numpy() if mc_samples else None
    return ModelOutputs(probs, emb, mc)
