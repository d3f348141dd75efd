"""Training loop: a dataclass config and a few small functions (train_one_epoch, evaluate, fit)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
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
from workers.ml.semi import (
    SEMI_SUPERVISED_METHODS,
    UnlabeledLoss,
    cutout,
    strong_distort,
    unlabeled_batches,
    unlabeled_draws,
    unlabeled_loss,
    weak_augment,
)

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
    semi_supervised: str = "off"  # off, pseudo_label or fixmatch (workers.ml.semi)
    confidence_threshold: float = 0.95  # an unlabeled image's pseudo-label counts from this confidence
    unlabeled_ratio: int = 3  # unlabeled images per labeled image in a step (FixMatch's mu)
    unlabeled_weight: float = 1.0  # the unlabeled loss's weight against the labeled one

    def __post_init__(self) -> None:
        problems = [f"{name} must be {kind.__name__ if kind is not float else 'a number'}, got {value!r}"
                    for name, kind in (("epochs", int), ("batch_size", int), ("seed", int), ("augment", bool),
                                       ("learning_rate", float), ("weight_decay", float),
                                       ("label_smoothing", float), ("device", str),
                                       ("semi_supervised", str), ("confidence_threshold", float),
                                       ("unlabeled_ratio", int), ("unlabeled_weight", float))
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
        if self.semi_supervised not in SEMI_SUPERVISED_METHODS:
            problems.append(f"semi_supervised must be one of {', '.join(SEMI_SUPERVISED_METHODS)}, "
                            f"got {self.semi_supervised!r}")
        if not (0 < self.confidence_threshold <= 1):
            problems.append(f"confidence_threshold must be in (0, 1], got {self.confidence_threshold}")
        if self.unlabeled_ratio < 1:
            problems.append(f"unlabeled_ratio must be >= 1, got {self.unlabeled_ratio}")
        if not (0 <= self.unlabeled_weight < math.inf):
            problems.append(f"unlabeled_weight must be a finite number >= 0, got {self.unlabeled_weight}")
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
    # semi-supervised training: distinct unlabeled images pseudo-labeled at least once so far
    # (their weak view reached the confidence threshold), and the share of this epoch's draws that did
    pseudo_labeled: int = 0
    confident_share: float = 0.0


EpochCallback = Callable[[EpochStats], bool | None]
StateCallback = Callable[[dict[str, Any]], None]


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@dataclass
class UnlabeledPool:
    """The unlabeled images a semi-supervised run learns from, the random stream that draws them
    and which of them have had a pseudo-label (kept in the training state, so a resumed run
    counts the same)."""

    data: Dataset
    generator: torch.Generator
    pseudo_labeled: torch.Tensor  # bool [n]
    num_workers: int = 0

    @classmethod
    def of(cls, images: Images, spec: InputSpec, seed: int, num_workers: int) -> UnlabeledPool:
        data = decoded_once(as_dataset(images), spec, augment=False)
        return cls(data, torch.Generator().manual_seed(seed + 1), torch.zeros(len(data), dtype=torch.bool),  # type: ignore[arg-type]
                   num_workers)

    def __len__(self) -> int:
        return len(self.pseudo_labeled)


@dataclass(frozen=True)
class EpochFigures:
    loss: float
    accuracy: float
    confident_share: float = 0.0


def _weak_labeled(config: TrainConfig, spec: InputSpec) -> bool:
    """Gray labeled batches are flipped and shifted on the batch when asked to augment (RGB ones
    are cropped and flipped by the loader). Semi-supervised training does not add it: on the short
    schedules of a few hundred labels it cost accuracy (docs/benchmarks.md, label efficiency)."""
    return config.augment and spec.channels == 1


def _step_loss(model: nn.Module, batch: torch.Tensor, target: torch.Tensor, unlabeled: torch.Tensor | None,
               config: TrainConfig, spec: InputSpec, generator: torch.Generator,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor, UnlabeledLoss | None]:
    """The step's loss, the labeled images' logits and, with unlabeled images, their part: one
    forward pass over labeled, weak and (FixMatch) strong views together, as FixMatch does, so
    BatchNorm sees them all."""
    views = [batch]
    if unlabeled is not None:
        views.append(weak_augment(model_input(unlabeled, spec, device), generator))
        if config.semi_supervised == "fixmatch":
            strong = weak_augment(model_input(strong_distort(unlabeled), spec, device), generator)
            views.append(cutout(strong, generator))
    with accelerated(device):
        logits = model(torch.cat(views)).float()
    labeled_logits = logits[:len(batch)]
    loss = F.cross_entropy(labeled_logits, target, label_smoothing=config.label_smoothing)
    if unlabeled is None:
        return loss, labeled_logits, None
    weak_logits, *strong_logits = logits[len(batch):].split(len(unlabeled))
    part = unlabeled_loss(weak_logits, strong_logits[0] if strong_logits else weak_logits,
                          config.confidence_threshold)
    return loss + config.unlabeled_weight * part.loss, labeled_logits, part


def _unlabeled_stream(pool: UnlabeledPool | None, steps: int, config: TrainConfig, spec: InputSpec,
                      device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor] | None]:
    if pool is None:
        while True:
            yield None
    size = config.unlabeled_ratio * config.batch_size
    draws = unlabeled_draws(len(pool), steps * size, pool.generator)
    yield from unlabeled_batches(pool.data, spec, draws, size, num_workers=pool.num_workers,
                                 pin_memory=device.type == "cuda")


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    spec: InputSpec,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: TrainConfig,
    generator: torch.Generator,
    device: torch.device,
    pool: UnlabeledPool | None = None,
) -> EpochFigures:
    """One pass over the labeled images; with a ``pool``, each step also learns from
    ``unlabeled_ratio`` times as many unlabeled images (config.semi_supervised says how)."""
    model.train()
    total_loss, correct, seen, confident, drawn = 0.0, 0, 0, 0, 0
    unlabeled = _unlabeled_stream(pool, len(loader), config, spec, device)
    for (images, target), drawn_batch in zip(loader, unlabeled):
        if len(images) < 2 and len(loader.dataset) >= 2:  # type: ignore[arg-type]
            continue  # BatchNorm cannot train on a batch of one
        batch = model_input(images, spec, device)
        if _weak_labeled(config, spec):
            batch = weak_augment(batch, generator)
        target = target.to(device, non_blocking=True)
        u_images, u_index = drawn_batch if drawn_batch is not None else (None, None)
        loss, logits, part = _step_loss(model, batch, target, u_images, config, spec, generator, device)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total_loss += float(loss.detach()) * len(target)
        correct += int((logits.argmax(1) == target).sum())
        seen += len(target)
        if part is not None and pool is not None:
            pool.pseudo_labeled[u_index[part.confident.cpu()]] = True
            confident += int(part.confident.sum())
            drawn += len(u_index)
    return EpochFigures(total_loss / max(1, seen), correct / max(1, seen), confident / max(1, drawn))


@torch.inference_mode()
def evaluate(
    model: nn.Module, images: Images, targets: torch.Tensor | None, spec: InputSpec,
    *, batch_size: int | None = None, device: torch.device | None = None, num_workers: int = 0,
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
    config: TrainConfig, history: list[EpochStats], pool: UnlabeledPool | None = None,
) -> dict[str, Any]:
    """Everything ``fit`` needs to go on after ``epoch`` exactly as if it had never stopped:
    weights, optimizer and schedule, and every random stream the loop draws from (the batch order
    and augmentation generator, the global CPU stream dropout and RandAugment use, the CUDA
    streams, the unlabeled pool's draws and which of its images were pseudo-labeled)."""
    return {
        "unlabeled": None if pool is None else {"generator": pool.generator.get_state(),
                                                "pseudo_labeled": pool.pseudo_labeled.clone()},
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
    pool: UnlabeledPool | None,
) -> list[EpochStats]:
    if state.get("config") != config.to_dict():
        raise ValueError("the training state was saved under another training config: start over")
    if not 1 <= state["epoch"] <= config.epochs:
        raise ValueError(f"the training state is at epoch {state['epoch']}, outside 1..{config.epochs}")
    if len(state["history"]) != state["epoch"]:
        raise ValueError("the training state's history does not match its epoch")
    unlabeled = state.get("unlabeled")
    if (unlabeled is None) != (pool is None) or (pool is not None and len(unlabeled["pseudo_labeled"]) != len(pool)):
        raise ValueError("the training state was saved with another unlabeled pool: start over")
    if pool is not None:
        pool.generator.set_state(unlabeled["generator"])
        pool.pseudo_labeled.copy_(unlabeled["pseudo_labeled"])
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
    unlabeled: Images | None = None,
) -> list[EpochStats]:
    """Train ``model`` in place on uint8 ``images`` [n, c, h, w] and int ``targets`` [n], or on a
    dataset of (uint8 image, target) that decodes lazily (``targets=None``), streamed through a
    loader with ``num_workers`` decoding processes. bf16 autocast and channels-last on CUDA.

    ``on_epoch`` sees each epoch's figures; returning False stops training (a cancelled cycle).
    ``on_state`` receives ``training_state`` after each epoch (before ``on_epoch``), to be saved;
    ``resume`` is such a state: training goes on after its epoch, giving the same weights as a run
    that never stopped. The returned history covers all epochs, resumed ones included.

    ``unlabeled`` (uint8 images or a dataset; targets ignored) is the pool a semi-supervised
    config learns from; with ``semi_supervised="off"`` or an empty pool it is not read.
    """
    data = as_dataset(images, targets)
    if len(data) == 0:  # type: ignore[arg-type]
        raise ValueError("cannot train on an empty set")
    data = decoded_once(data, spec, config.augment)
    device = select_device(config.device)
    generator = seed_everything(config.seed)
    prepare_model(model, device)
    pool = None
    if config.semi_supervised != "off" and unlabeled is not None and len(as_dataset(unlabeled)):  # type: ignore[arg-type]
        pool = UnlabeledPool.of(unlabeled, spec, config.seed, num_workers)
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
        history = _restore(resume, model, optimizer, scheduler, generator, config, pool)
    for epoch in range(len(history) + 1, config.epochs + 1):
        figures = train_one_epoch(model, loader, spec, optimizer, scheduler, config, generator, device, pool)
        stats = EpochStats(epoch, config.epochs, figures.loss, figures.accuracy,
                           int(pool.pseudo_labeled.sum()) if pool is not None else 0, figures.confident_share)
        history.append(stats)
        if on_state is not None:
            on_state(training_state(epoch, model, optimizer, scheduler, generator, config, history, pool))
        if on_epoch is not None and on_epoch(stats) is False:
            break
    model.eval()
    return history
