import numpy as np
import pytest
import torch

from tests.ml.conftest import as_tensors
from workers.ml.architectures import build_model, input_spec_for
from workers.ml.inference import predict_proba
from workers.ml.training import TrainConfig, evaluate, fit

SPEC = input_spec_for("small_cnn")


def test_small_cnn_learns_fashion_mnist(fashion_train, fashion_test) -> None:
    x, y = as_tensors(fashion_train, np.arange(600))
    model = build_model("small_cnn", 10)
    history = fit(model, x, y, SPEC, TrainConfig(epochs=6, seed=1, device="cpu"))
    assert history[-1].train_loss < history[0].train_loss
    x_test, y_test = as_tensors(fashion_test, np.arange(1000))
    result = evaluate(model, x_test, y_test, SPEC)
    assert result["accuracy"] > 0.6  # chance is 0.1


def test_same_seed_gives_the_same_model(fashion_train) -> None:
    x, y = as_tensors(fashion_train, np.arange(128))
    weights = []
    for _ in range(2):
        torch.manual_seed(0)  # the same initial weights
        model = build_model("small_cnn", 10)
        fit(model, x, y, SPEC, TrainConfig(epochs=2, seed=7, device="cpu", augment=True))
        weights.append(model.state_dict())
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key


def test_callback_can_stop_training(fashion_train) -> None:
    x, y = as_tensors(fashion_train, np.arange(64))
    seen = []
    history = fit(build_model("small_cnn", 10), x, y, SPEC, TrainConfig(epochs=10, device="cpu"),
                  on_epoch=lambda s: seen.append(s.epoch) or s.epoch < 2)
    assert [s.epoch for s in history] == [1, 2] == seen


def test_probabilities_are_distributions(fashion_test) -> None:
    x, _ = as_tensors(fashion_test, np.arange(50))
    probs = predict_proba(build_model("small_cnn", 10), x, SPEC)
    assert probs.shape == (50, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    ("options", "message"),
    [({"epochs": 0}, "epochs"), ({"learning_rate": -1}, "learning_rate"), ({"batch_size": 0}, "batch_size"),
     ({"label_smoothing": 1.0}, "label_smoothing"), ({"epochs": 2.5}, "epochs must be int"),
     ({"augment": "no"}, "augment must be bool"), ({"batch_size": True}, "batch_size must be int"),
     ({"device": "tpu"}, "device must be")],
)
def test_bad_config_fails_fast(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(**options)


def test_unknown_config_keys_are_named() -> None:
    with pytest.raises(ValueError, match="unknown training options: epochz"):
        TrainConfig.from_dict({"epochz": 3})


def test_training_input_is_checked() -> None:
    model = build_model("small_cnn", 3)
    with pytest.raises(ValueError, match="uint8"):
        fit(model, torch.zeros(4, 1, 28, 28), torch.zeros(4, dtype=torch.int64), SPEC, TrainConfig(device="cpu"))
    with pytest.raises(ValueError, match="empty"):
        fit(model, torch.zeros(0, 1, 28, 28, dtype=torch.uint8), torch.zeros(0), SPEC, TrainConfig(device="cpu"))


def test_image_folder_layout(tmp_path, fashion_test) -> None:
    from PIL import Image

    from workers.ml.datasets import load_image_folder

    for name, start in (("boots", 0), ("coats", 10)):
        (tmp_path / name).mkdir()
        for i in range(start, start + 4):
            Image.fromarray(fashion_test.images[i]).save(tmp_path / name / f"{i}.png")
    (tmp_path / "coats" / "notes.txt").write_text("not an image")
    data = load_image_folder(tmp_path, channels=3, size=16)
    assert data.labels == ["boots", "coats"] and data.images.shape == (8, 16, 16, 3)
    assert data.targets.tolist() == [0] * 4 + [1] * 4
    with pytest.raises(ValueError, match="two class folders"):
        load_image_folder(tmp_path / "boots")
