"""Training loop: a dataclass config and a few small functions (train_one_epoch, evaluate, fit)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from workers.ml.architectures import InputSpec
from workers.ml.data import (
    LazyImages,
    TensorImages,
    as_dataset,
    eval_transform,
    make_loader,
    train_transform,
)
from workers.ml.device import is_device_name, select_device
from workers.ml.inference import Images, accelerated, model_input, predict_logits, prepare_model

DECODED_CACHE_BYTES = 256 * 2**20  # decoded images a training run may hold to skip re-decoding


def _is(value: object, kind: type) -> bool:
    """Strict JSON-ish types: a bool is not an int, an int is a fine float."""
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    return isinstance(value, (int, float)) if kind is float else isinstance(value, kind)


@dataclass(frozen=True)
class TrainConfig:
    """What a training run needs; checked to make sense here. The web's limits on what a user may
    ask for (upper bounds) are hitl.mlspec.TRAIN_OPTIONS, whose names and defaults match these."""

    epochs: int = 20
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.0
    augment: bool = False
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        problems = [f"{name} must be {kind.__name__ if kind is not float else 'a number'}, got {value!r}"
                    for name, kind in (("epochs", int), ("batch_size", int), ("seed", int), ("augment", bool),
                                       ("learning_rate", float), ("weight_decay", float),
                                       ("label_smoothing", float), ("device", str))
                    if not _is(value := getattr(self, name), kind)]
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems))
        if not is_device_name(self.device):
            problems.append(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.epochs < 1:
            problems.append(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if not (0 < self.learning_rate < 10):
            problems.append(f"learning_rate must be in (0, 10), got {self.learning_rate}")
        if not (0 <= self.weight_decay < math.inf):
            problems.append(f"weight_decay must be a finite number >= 0, got {self.weight_decay}")
        if self.seed < 0:
            problems.append(f"seed must be >= 0, got {self.seed}")
        if not (0 <= self.label_smoothing < 1):
            problems.append(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown training options: {', '.join(unknown)}")
        return cls(**data)


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    epochs: int
    train_loss: float
    train_accuracy: float


EpochCallback = Callable[[EpochStats], bool | None]
StateCallback = Callable[[dict[str, Any]], None]


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and translations of up to 1/8 of the side, per image."""
    n = batch.shape[0]
    flip = torch.rand(n, generator=generator) < 0.5
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * 0.25  # grid units: 2 = full side
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = torch.where(flip, -1.0, 1.0)
    theta[:, 1, 1] = 1.0
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta.to(batch.device), list(batch.shape), align_corners=False)
    return F.grid_sample(batch, grid, padding_mode="border", align_corners=False)


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    spec: InputSpec,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: TrainConfig,
    generator: torch.Generator,
    device: torch.device,
) -> tuple[float, float]:
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    for images, target in loader:
        if len(images) < 2 and len(loader.dataset) >= 2:  # type: ignore[arg-type]
            continue  # BatchNorm cannot train on a batch of one
        batch = model_input(images, spec, device)
        if config.augment and spec.channels == 1:
            batch = augment(batch, generator)
        target = target.to(device, non_blocking=True)
        with accelerated(device):
            logits = model(batch)
            loss = F.cross_entropy(logits.float(), target, label_smoothing=config.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total_loss += float(loss.detach()) * len(target)
        correct += int((logits.argmax(1) == target).sum())
        seen += len(target)
    return total_loss / max(1, seen), correct / max(1, seen)


@torch.inference_mode()
def evaluate(
    model: nn.Module, images: Images, targets: torch.Tensor | None, spec: InputSpec,
    *, batch_size: int = 256, device: torch.device | None = None, num_workers: int = 0,
) -> dict[str, float]:
    """Loss and accuracy on a held-out set (no augmentation, dropout off). ``images`` is a uint8
    tensor with its ``targets``, or a dataset of (image, target) with ``targets=None``."""
    data = as_dataset(images, targets)
    logits = predict_logits(model, data, spec, batch_size=batch_size, device=device, num_workers=num_workers)
    truth = torch.as_tensor(targets if targets is not None else _dataset_targets(data), dtype=torch.int64)
    loss = F.cross_entropy(logits, truth)
    return {"loss": float(loss), "accuracy": float((logits.argmax(1) == truth).float().mean())}


def _dataset_targets(data: Dataset) -> np.ndarray:
    targets = getattr(data, "targets", None)
    if targets is None:
        raise ValueError("the dataset has no targets attribute to evaluate against")
    return np.asarray(targets)


def decoded_once(data: Dataset, spec: InputSpec, augment: bool) -> Dataset:
    """A small lazy set whose training images are the same every epoch (gray, or RGB without
    random crops) decoded once into memory, when that takes at most DECODED_CACHE_BYTES: many
    epochs over a few hundred 28 px images then decode each once, not once per epoch. Larger sets
    and randomly cropped RGB stay lazy."""
    if not isinstance(data, LazyImages) or (augment and spec.channels == 3):
        return data
    if len(data) * spec.channels * spec.size * spec.size > DECODED_CACHE_BYTES:
        return data
    fit_to_input = eval_transform(spec)
    images = torch.stack([fit_to_input(data[i][0]) for i in range(len(data))])
    return TensorImages(images, torch.from_numpy(data.targets))


def training_state(
    epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler, generator: torch.Generator,
    config: TrainConfig, history: list[EpochStats],
) -> dict[str, Any]:
    """Everything ``fit`` needs to go on after ``epoch`` exactly as if it had never stopped:
    weights, optimizer and schedule, and every random stream the loop draws from (the batch order
    and augmentation generator, the global CPU stream dropout uses, the CUDA streams)."""
    return {
        "epoch": epoch,
        "config": config.to_dict(),
        "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "generator": generator.get_state(),
        "cpu_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "history": [asdict(h) for h in history],
    }


def _restore(
    state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler, generator: torch.Generator, config: TrainConfig,
) -> list[EpochStats]:
    if state.get("config") != config.to_dict():
        raise ValueError("the training state was saved under another training config: start over")
    if not 1 <= state["epoch"] <= config.epochs:
        raise ValueError(f"the training state is at epoch {state['epoch']}, outside 1..{config.epochs}")
    if len(state["history"]) != state["epoch"]:
        raise ValueError("the training state's history does not match its epoch")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["cpu_rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return [EpochStats(**h) for h in state["history"]]


def fit(
    model: nn.Module,
    images: Images,
    targets: torch.Tensor | None,
    spec: InputSpec,
    config: TrainConfig,
    on_epoch: EpochCallback | None = None,
    *,
    resume: dict[str, Any] | None = None,
    on_state: StateCallback | None = None,
    num_workers: int = 0,
) -> list[EpochStats]:
    """Train ``model`` in place on uint8 ``images`` [n, c, h, w] and int ``targets`` [n], or on a
    dataset of (uint8 image, target) that decodes lazily (``targets=None``), streamed through a
    loader with ``num_workers`` decoding processes. bf16 autocast and channels-last on CUDA.

    ``on_epoch`` sees each epoch's figures; returning False stops training (a cancelled cycle).
    ``on_state`` receives ``training_state`` after each epoch (before ``on_epoch``), to be saved;
    ``resume`` is such a state: training goes on after its epoch, giving the same weights as a run
    that never stopped. The returned history covers all epochs, resumed ones included.
    """
    data = as_dataset(images, targets)
    if len(data) == 0:  # type: ignore[arg-type]
        raise ValueError("cannot train on an empty set")
    data = decoded_once(data, spec, config.augment)
    device = select_device(config.device)
    generator = seed_everything(config.seed)
    prepare_model(model, device)
    loader = make_loader(data, train_transform(spec, config.augment), batch_size=config.batch_size,
                         num_workers=num_workers, shuffle=True, generator=generator,
                         pin_memory=device.type == "cuda")
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    steps = config.epochs * max(1, len(loader))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.learning_rate, total_steps=steps + 1, pct_start=0.15
    )
    history: list[EpochStats] = []
    if resume is not None:
        history = _restore(resume, model, optimizer, scheduler, generator, config)
    for epoch in range(len(history) + 1, config.epochs + 1):
        loss, accuracy = train_one_epoch(
            model, loader, spec, optimizer, scheduler, config, generator, device
        )
        stats = EpochStats(epoch, config.epochs, loss, accuracy)
        history.append(stats)
        if on_state is not None:
            on_state(training_state(epoch, model, optimizer, scheduler, generator, config, history))
        if on_epoch is not None and on_epoch(stats) is False:
            break
    model.eval()
    return history
