from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from workers.ml.architectures import build_model, get_architecture, input_spec_for
from workers.ml.device import select_device


@pytest.mark.parametrize("name", ["small_cnn", "resnet18", "mobilenet_v3_small"])
def test_architectures_produce_one_logit_per_class(name: str) -> None:
    spec = input_spec_for(name, 64 if name != "small_cnn" else None)
    model = build_model(name, 7).eval()
    with torch.inference_mode():
        out = model(torch.zeros(2, spec.channels, spec.size, spec.size))
    assert out.shape == (2, 7)


@pytest.mark.parametrize("name,suffix", [("resnet18", ".pth"), ("mobilenet_v3_small", ".safetensors")])
def test_starts_from_a_local_imagenet_style_weights_file(tmp_path: Path, name: str, suffix: str) -> None:
    """A 1000-class weights file (as torchvision ships) starts a 4-class model: the backbone is
    loaded exactly, the class head is new."""
    source = build_model(name, 1000)
    path = tmp_path / f"weights{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    model = build_model(name, 4, weights_path=path)
    head = get_architecture(name).head_prefixes
    loaded = model.state_dict()
    backbone_keys = [k for k in state if not k.startswith(head)]
    assert len(backbone_keys) > 50
    for key in backbone_keys:
        assert torch.equal(loaded[key], state[key]), key
    head_weight = next(k for k in loaded if k.startswith(head) and k.endswith("weight"))
    assert loaded[head_weight].shape[0] == 4


def test_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "resnet.pth"
    torch.save(build_model("resnet18", 10).state_dict(), path)
    with pytest.raises(ValueError, match="do not fit architecture 'mobilenet_v3_small'"):
        build_model("mobilenet_v3_small", 10, weights_path=path)


def test_missing_weights_and_unknown_names_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        build_model("resnet18", 3, weights_path=tmp_path / "nope.pth")
    with pytest.raises(ValueError, match="unknown architecture 'vgg'"):
        build_model("vgg", 3)
    with pytest.raises(ValueError, match="at least 2 classes"):
        build_model("small_cnn", 1)


def test_device_selection() -> None:
    assert select_device("cpu").type == "cpu"
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        select_device("tpu")
