"""The offline pretrained backbone (EfficientNet-Lite0 ImageNet weights), checked by what it
predicts on real photos, not by its file name."""

import io
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_images

from hitl import mlspec
from workers.ml.architectures import ARCHITECTURES, build_model, input_spec_for
from workers.ml.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from workers.ml.data import LazyImages, eval_transform
from workers.ml.images import normalize
from workers.ml.inference import predict_proba

PALACE, DAISY = 698, 985  # ImageNet-1k class indices (torchvision's ordering): "palace", "daisy"
SPEC = input_spec_for("efficientnet_lite0")


@pytest.fixture(scope="module")
def photos() -> LazyImages:
    """sklearn's two sample photos (china.jpg: a palace; flower.jpg: a daisy) as JPEG bytes."""
    encoded = {}
    for name, array in zip(("china", "flower"), load_sample_images().images):
        out = io.BytesIO()
        Image.fromarray(array).save(out, format="JPEG", quality=95)
        encoded[name] = out.getvalue()
    return LazyImages(["china", "flower"], encoded.__getitem__, 3)


def test_imagenet_weights_recognise_a_palace_and_a_daisy(photos) -> None:
    model = build_model("efficientnet_lite0", 1000, pretrained=True)
    probs = predict_proba(model, photos, SPEC)
    assert probs.argmax(axis=1).tolist() == [PALACE, DAISY]
    torch.manual_seed(0)
    untrained = predict_proba(build_model("efficientnet_lite0", 1000), photos, SPEC)
    assert untrained.argmax(axis=1).tolist() != [PALACE, DAISY]


def test_a_new_head_keeps_the_pretrained_backbone() -> None:
    imagenet = ARCHITECTURES["efficientnet_lite0"].pretrained()
    model = build_model("efficientnet_lite0", 4, pretrained=True)
    state = model.state_dict()
    assert state["_fc.weight"].shape == (4, 1280)
    backbone = [k for k in imagenet if not k.startswith("_fc.")]
    assert len(backbone) > 200
    assert all(torch.equal(state[k], imagenet[k]) for k in backbone)


def test_pretrained_and_a_weights_file_are_exclusive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not both"):
        build_model("efficientnet_lite0", 3, weights_path=tmp_path / "x.pt", pretrained=True)
    with pytest.raises(ValueError, match="no pretrained weights"):
        build_model("small_cnn", 3, pretrained=True)


def test_every_default_pretrained_architecture_has_weights() -> None:
    assert set(mlspec.PRETRAINED_BY_DEFAULT) <= set(mlspec.ARCHITECTURES)
    assert all(ARCHITECTURES[name].pretrained is not None for name in mlspec.PRETRAINED_BY_DEFAULT)


def test_a_fine_tuned_lite0_checkpoint_round_trips_to_onnx(tmp_path: Path, photos) -> None:
    model = build_model("efficientnet_lite0", 3, pretrained=True).eval()
    meta = CheckpointMeta("efficientnet_lite0", ["a", "b", "c"], SPEC)
    files = save_checkpoint(model, meta, tmp_path / "v1")
    loaded, _ = load_checkpoint(tmp_path / "v1" / "model.safetensors", expected_sha256=files[0].sha256)
    np.testing.assert_allclose(predict_proba(loaded, photos, SPEC), predict_proba(model, photos, SPEC), atol=1e-5)
    x = torch.stack([eval_transform(SPEC)(photos[i][0]) for i in range(2)])
    session = onnxruntime.InferenceSession(str(tmp_path / "v1" / "model.onnx"))
    (logits,) = session.run(None, {session.get_inputs()[0].name: normalize(x, SPEC).numpy()})
    with torch.inference_mode():
        expected = model(normalize(x, SPEC)).numpy()
    np.testing.assert_allclose(logits, expected, atol=1e-3)
