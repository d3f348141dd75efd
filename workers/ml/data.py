"""Image datasets that decode lazily, the transforms a model's input needs, and batch loaders.

A dataset here holds an index (keys and targets), never the decoded images: an item is read
through a reader callable (key -> encoded bytes) and decoded when a loader asks for it, so memory
follows the batch size and the loader's workers, not the number of items. This module opens no
paths itself: the caller's reader decides where bytes come from.
"""

from __future__ import annotations

import io
import math
import random
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2

from workers.ml.architectures import InputSpec

Reader = Callable[[str], bytes]
Transform = Callable[[torch.Tensor], torch.Tensor]
NO_TARGET = -1
RESIZED_CROP_SCALE = (0.35, 1.0)  # the smallest crop of a training image, as a share of its area


def decode_image(data: bytes, channels: int, *, size_hint: int | None = None) -> torch.Tensor:
    """One encoded image as uint8 ``[channels, h, w]`` at its own aspect ratio. ``size_hint``
    lets JPEG decode at a reduced scale that still covers it (PIL's draft mode): a 4000 px photo
    for a 224 px model decodes at 1/8 the work."""
    mode = "L" if channels == 1 else "RGB"
    with Image.open(io.BytesIO(data)) as image:
        if size_hint is not None:
            image.draft(mode, (size_hint, size_hint))
        array = np.asarray(image.convert(mode), dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.transpose(2, 0, 1).copy())


class LazyImages(Dataset):
    """Items as ``(uint8 [c, h, w], target)``, read and decoded one at a time by ``reader``.

    Targets are class indices, or NO_TARGET for unlabeled items (inference, selection).
    """

    def __init__(self, keys: Sequence[str], reader: Reader, channels: int, *,
                 targets: Sequence[int] | None = None, size_hint: int | None = None) -> None:
        if targets is not None and len(targets) != len(keys):
            raise ValueError(f"{len(keys)} images but {len(targets)} targets")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.keys = list(keys)
        self.targets = np.asarray(targets if targets is not None else [NO_TARGET] * len(keys), dtype=np.int64)
        self.reader = reader
        self.channels = channels
        self.size_hint = size_hint

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = decode_image(self.reader(self.keys[index]), self.channels, size_hint=self.size_hint)
        return image, int(self.targets[index])


class TensorImages(Dataset):
    """Images already decoded into one uint8 tensor ``[n, c, h, w]`` (small sets, tests)."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor | None = None) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 [n, c, h, w], got {images.dtype} {tuple(images.shape)}")
        if targets is not None and len(targets) != len(images):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.images = images
        self.targets = (targets.to(torch.int64) if targets is not None
                        else torch.full((len(images),), NO_TARGET, dtype=torch.int64))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.targets[index])


class Transformed(Dataset):
    """``base`` with ``transform`` applied to each image (in the loader's worker processes)."""

    def __init__(self, base: Dataset, transform: Transform) -> None:
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, target = self.base[index]
        return self.transform(image), target


class FitToInput:
    """Resize the shorter side to the model's size and crop the centre: aspect ratio kept.
    Images already at the model's size pass untouched (the 28 px gray path costs nothing)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.resize = v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size)])

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if image.shape[-2:] == (self.size, self.size):
            return image
        return self.resize(image)


def eval_transform(spec: InputSpec) -> Transform:
    return FitToInput(spec.size)


def train_transform(spec: InputSpec, augment: bool) -> Transform:
    """RGB training with ``augment``: a random resized crop and a horizontal flip. Gray images
    are augmented on the batch instead (workers.ml.training.augment: flips and small shifts)."""
    if not augment or spec.channels != 3:
        return eval_transform(spec)
    return v2.Compose([v2.RandomResizedCrop(spec.size, scale=RESIZED_CROP_SCALE, antialias=True),
                       v2.RandomHorizontalFlip()])


def as_dataset(images: torch.Tensor | Dataset, targets: torch.Tensor | None = None) -> Dataset:
    """A dataset for either a decoded uint8 tensor (with its targets) or a dataset."""
    if isinstance(images, torch.Tensor):
        return TensorImages(images, targets)
    if targets is not None:
        raise ValueError("a dataset carries its own targets; pass targets=None")
    return images


def _seed_worker(worker_id: int) -> None:
    """Seed numpy and random in a loader worker from the seed torch gave it (deterministic runs)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class EvenBatches(Sampler[list[int]]):
    """A shuffled epoch cut into ceil(n / batch_size) batches whose sizes differ by at most one:
    900 items at batch size 64 are 15 batches of 60, not 14 of 64 and a last one of 4, whose
    BatchNorm statistics and gradient step are noise (it made accuracy curves dip at such sizes)."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.n, self.batches, self.generator = n, max(1, math.ceil(n / batch_size)), generator

    def __len__(self) -> int:
        return self.batches if self.n else 0

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(self.n, generator=self.generator)
        for part in torch.tensor_split(order, self.batches):
            if len(part):
                yield part.tolist()


def make_loader(data: Dataset, transform: Transform, *, batch_size: int, num_workers: int = 0,
                shuffle: bool = False, generator: torch.Generator | None = None,
                pin_memory: bool = False) -> DataLoader:
    """A loader of ``(uint8 [b, c, s, s], targets [b])`` batches; ``num_workers`` processes decode
    and transform while the model runs. A seeded ``generator`` makes order and augmentation
    reproducible for any number of workers. Shuffled (training) batches are even
    (``EvenBatches``); in order (inference) they are full but the last."""
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    batching: dict = ({"batch_sampler": EvenBatches(len(data), batch_size, generator)}  # type: ignore[arg-type]
                      if shuffle else {"batch_size": batch_size})
    return DataLoader(
        Transformed(data, transform), **batching, generator=generator,
        num_workers=num_workers, worker_init_fn=_seed_worker if num_workers else None,
        persistent_workers=num_workers > 0, pin_memory=pin_memory,
        prefetch_factor=2 if num_workers else None,
    )


def image_batches(images: torch.Tensor | Dataset, spec: InputSpec, *, batch_size: int,
                  num_workers: int = 0) -> Iterator[torch.Tensor]:
    """uint8 ``[b, c, size, size]`` batches in order, for inference: a tensor is sliced, a dataset
    streamed through a loader (never all images at once)."""
    if isinstance(images, torch.Tensor):
        for start in range(0, len(images), batch_size):
            yield images[start:start + batch_size]
        return
    for batch, _ in make_loader(images, eval_transform(spec), batch_size=batch_size, num_workers=num_workers):
        yield batch
