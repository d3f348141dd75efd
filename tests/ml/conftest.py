import numpy as np
import pytest
import torch

from workers.ml.datasets import ArrayDataset, load_fashion_mnist


@pytest.fixture(scope="session")
def fashion_train() -> ArrayDataset:
    return load_fashion_mnist("train")


@pytest.fixture(scope="session")
def fashion_test() -> ArrayDataset:
    return load_fashion_mnist("test")


def as_tensors(data: ArrayDataset, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(data.images[indices][:, None].copy()), torch.from_numpy(data.targets[indices])
