"""Lazy image datasets, the model-input transforms and streaming loaders (no database)."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from workers.ml.architectures import InputSpec, SmallCNN
from workers.ml.data import LazyImages, TensorImages, eval_transform, make_loader, train_transform
from workers.ml.inference import model_outputs, predict_proba
from workers.ml.training import TrainConfig, evaluate, fit

RGB = InputSpec(3, 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _png(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def _store(n: int, seed: int = 0, size: tuple[int, int] = (40, 48)) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    return {f"img{i}.png": _png(rng.integers(0, 256, (*size, 3), dtype=np.uint8)) for i in range(n)}


class CountingReader:
    def __init__(self, store: dict[str, bytes]) -> None:
        self.store, self.calls = store, 0

    def __call__(self, key: str) -> bytes:
        self.calls += 1
        return self.store[key]


def test_a_lazy_dataset_reads_nothing_until_an_item_is_asked_for() -> None:
    reader = CountingReader(_store(5))
    data = LazyImages(sorted(reader.store), reader, 3, targets=[0, 1, 0, 1, 0])
    assert len(data) == 5 and reader.calls == 0
    image, target = data[3]
    assert reader.calls == 1 and target == 1
    assert image.dtype == torch.uint8 and tuple(image.shape) == (3, 40, 48)  # its own size


def test_evaluation_resizes_and_crops_keeping_the_aspect_ratio() -> None:
    # 64 wide, 32 high: the left 16 columns red, the rest blue. Resize keeps the ratio (32x64 ->
    # 32x64) and the centre crop drops the red edge; squashing to a square would keep it.
    array = np.zeros((32, 64, 3), dtype=np.uint8)
    array[:, :16, 0] = 255
    array[:, 16:, 2] = 255
    image, _ = LazyImages(["a"], lambda _: _png(array), 3)[0]
    out = eval_transform(RGB)(image)
    assert tuple(out.shape) == (3, 32, 32)
    assert int(out[0].max()) == 0 and int(out[2].min()) == 255


def test_rgb_training_crops_and_flips_at_random_and_gray_training_does_not() -> None:
    image = torch.arange(3 * 40 * 48, dtype=torch.int64).remainder(251).to(torch.uint8).view(3, 40, 48)
    transform = train_transform(RGB, augment=True)
    torch.manual_seed(0)
    draws = [transform(image) for _ in range(4)]
    assert all(tuple(d.shape) == (3, 32, 32) for d in draws)
    assert any(not torch.equal(draws[0], d) for d in draws[1:])
    gray = InputSpec(1, 28, (0.5,), (0.5,))
    small = torch.zeros(1, 28, 28, dtype=torch.uint8)
    assert train_transform(gray, augment=True)(small) is small  # batch-level augmentation instead


def _trained(data, labels, config: TrainConfig, workers: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)  # the same initial weights
    model = SmallCNN(3, in_channels=3)
    fit(model, data, labels, RGB, config, num_workers=workers)
    return model.state_dict()


def test_training_on_a_lazy_dataset_is_seeded_with_loader_workers() -> None:
    store = _store(24, size=(36, 44))
    keys, targets = sorted(store), [i % 3 for i in range(24)]
    config = TrainConfig(epochs=2, batch_size=8, seed=3, device="cpu", augment=True)
    first, second = (_trained(LazyImages(keys, store.__getitem__, 3, targets=targets), None, config, 2)
                     for _ in range(2))
    for key in first:
        assert torch.equal(first[key], second[key]), key
    other_seed = _trained(LazyImages(keys, store.__getitem__, 3, targets=targets), None,
                          TrainConfig(epochs=2, batch_size=8, seed=4, device="cpu", augment=True), 2)
    assert not torch.equal(first["features.0.weight"], other_seed["features.0.weight"])


def test_training_on_a_lazy_dataset_matches_the_decoded_tensor() -> None:
    store = _store(24, size=(32, 32))
    keys, targets = sorted(store), [i % 3 for i in range(24)]
    decoded = torch.stack([LazyImages(keys, store.__getitem__, 3)[i][0] for i in range(24)])
    config = TrainConfig(epochs=2, batch_size=8, seed=3, device="cpu")
    lazy = _trained(LazyImages(keys, store.__getitem__, 3, targets=targets), None, config, 0)
    eager = _trained(decoded, torch.tensor(targets), config, 0)
    for key in lazy:
        assert torch.equal(lazy[key], eager[key]), key


def test_inference_streams_a_lazy_dataset_in_batches() -> None:
    reader = CountingReader(_store(10))
    keys = sorted(reader.store)
    data = LazyImages(keys, reader, 3, targets=[i % 2 for i in range(10)])
    torch.manual_seed(0)
    model = SmallCNN(2, in_channels=3).eval()
    decoded = torch.stack([eval_transform(RGB)(data[i][0]) for i in range(10)])
    reader.calls = 0
    streamed = predict_proba(model, data, RGB, batch_size=4)
    assert reader.calls == 10
    np.testing.assert_allclose(streamed, predict_proba(model, decoded, RGB), atol=1e-6)
    outputs = model_outputs(model, data, RGB, embeddings=True, batch_size=3)
    assert outputs.embeddings.shape == (10, 128)
    assert set(evaluate(model, data, None, RGB, batch_size=4)) == {"loss", "accuracy"}
    batches = [len(x) for x, _ in make_loader(data, eval_transform(RGB), batch_size=4)]
    assert batches == [4, 4, 2]


def test_bad_inputs_fail_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="2 images but 1 targets"):
        LazyImages(["a", "b"], bytes, 3, targets=[0])
    with pytest.raises(ValueError, match="uint8"):
        TensorImages(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="own targets"):
        fit(SmallCNN(2), LazyImages(["a"], bytes, 1), torch.zeros(1), InputSpec(1, 28, (0.5,), (0.5,)),
            TrainConfig(device="cpu"))


def test_a_small_set_without_random_crops_is_decoded_once_not_every_epoch() -> None:
    gray = InputSpec(1, 28, (0.5,), (0.5,))
    store = {f"{i}.png": _png(np.full((28, 28, 3), i * 20, dtype=np.uint8)) for i in range(8)}
    reader = CountingReader(store)
    data = LazyImages(sorted(store), reader, 1, targets=[i % 2 for i in range(8)])
    fit(SmallCNN(2), data, None, gray, TrainConfig(epochs=3, batch_size=4, device="cpu", augment=True))
    assert reader.calls == 8
    rgb = CountingReader(_store(8))
    fit(SmallCNN(2, in_channels=3), LazyImages(sorted(rgb.store), rgb, 3, targets=[i % 2 for i in range(8)]),
        None, RGB, TrainConfig(epochs=3, batch_size=4, device="cpu", augment=True))
    assert rgb.calls == 24  # random crops: read and cropped afresh every epoch
