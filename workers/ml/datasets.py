"""Real datasets on disk: Fashion-MNIST IDX files and ImageFolder-style directories."""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_LABELS = [
    "t-shirt/top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
]


@dataclass(frozen=True)
class ArrayDataset:
    images: np.ndarray  # uint8 [n, h, w] or [n, h, w, c]
    targets: np.ndarray  # int64 [n]
    labels: list[str]


def read_idx(path: Path, offset: int) -> np.ndarray:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as handle:
        return np.frombuffer(handle.read(), dtype=np.uint8, offset=offset)


def load_fashion_mnist(split: str = "train", root: Path = FASHION_MNIST_DIR) -> ArrayDataset:
    """Fashion-MNIST from its IDX files (Debian package ``dataset-fashion-mnist``)."""
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    images_path = root / f"{prefix}-images-idx3-ubyte.gz"
    if not images_path.exists():
        raise FileNotFoundError(
            f"{images_path} is missing: install Fashion-MNIST with "
            "'apt-get install dataset-fashion-mnist' (or run 'make data')"
        )
    images = read_idx(images_path, 16).reshape(-1, 28, 28)
    targets = read_idx(root / f"{prefix}-labels-idx1-ubyte.gz", 8).astype(np.int64)
    return ArrayDataset(images=images, targets=targets, labels=list(FASHION_MNIST_LABELS))


def load_image_folder(root: Path, *, channels: int = 1, size: int = 28) -> ArrayDataset:
    """Any dataset laid out as one folder per class of image files (torchvision's ImageFolder
    layout), decoded to uint8 ``[n, size, size]`` (gray) or ``[n, size, size, 3]`` (RGB)."""
    from PIL import Image, UnidentifiedImageError

    root = Path(root)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if len(classes) < 2:
        raise ValueError(f"{root} needs at least two class folders (one folder per class)")
    images, targets = [], []
    for index, name in enumerate(classes):
        for path in sorted((root / name).iterdir()):
            try:
                with Image.open(path) as image:
                    image = image.convert("L" if channels == 1 else "RGB").resize((size, size))
                    images.append(np.asarray(image, dtype=np.uint8))
            except (UnidentifiedImageError, IsADirectoryError):
                continue  # not an image
            targets.append(index)
    if not images:
        raise ValueError(f"no images under {root}")
    return ArrayDataset(images=np.stack(images), targets=np.array(targets, dtype=np.int64), labels=classes)
