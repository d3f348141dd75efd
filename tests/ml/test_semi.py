"""Semi-supervised training on the unlabeled pool, even mini-batches, and TypiClust."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.ml.conftest import as_tensors
from workers.ml.architectures import build_model, input_spec_for
from workers.ml.checkpoint import load_training_state, save_training_state
from workers.ml.data import EvenBatches, TensorImages, make_loader
from workers.ml.semi import cutout, strong_distort, unlabeled_draws, unlabeled_loss, weak_augment
from workers.ml.strategies import PoolView, select_batch, typiclust
from workers.ml.training import TrainConfig, fit

SPEC = input_spec_for("small_cnn")


# --- even batches ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("n", "batch_size", "sizes"), [
    (900, 64, [60] * 15), (1800, 64, [63] * 2 + [62] * 27), (128, 64, [64, 64]), (65, 64, [33, 32]),
    (3, 64, [3]), (1, 64, [1]),
])
def test_an_epoch_is_cut_into_even_batches_that_cover_every_item_once(n: int, batch_size: int,
                                                                      sizes: list[int]) -> None:
    batches = list(EvenBatches(n, batch_size, torch.Generator().manual_seed(0)))
    assert [len(b) for b in batches] == sizes
    assert sorted(i for b in batches for i in b) == list(range(n))


def test_the_training_loader_has_no_short_last_batch_and_inference_keeps_order() -> None:
    data = TensorImages(torch.zeros(900, 1, 28, 28, dtype=torch.uint8), torch.arange(900))
    shuffled = make_loader(data, lambda x: x, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(1))
    assert len(shuffled) == 15 and {len(t) for _, t in shuffled} == {60}
    ordered = make_loader(data, lambda x: x, batch_size=64)
    assert torch.equal(torch.cat([t for _, t in ordered]), torch.arange(900))


# --- augmentations and the unlabeled loss ---------------------------------------------------------------

def test_weak_and_strong_views_keep_shape_and_differ_from_the_image(fashion_train) -> None:
    images, _ = as_tensors(fashion_train, np.arange(32))
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    strong = strong_distort(images)
    assert strong.shape == images.shape and strong.dtype == torch.uint8
    assert (strong != images).flatten(1).any(dim=1).float().mean() > 0.5  # most images are changed
    batch = images.float() / 255
    weak = weak_augment(batch, generator)
    assert weak.shape == batch.shape and not torch.equal(weak, batch)


def test_cutout_blanks_one_square_per_image() -> None:
    batch = torch.ones(64, 1, 28, 28)
    out = cutout(batch, torch.Generator().manual_seed(0))
    blank = (out == 0).squeeze(1)
    assert blank.any(dim=(1, 2)).float().mean() > 0.8  # a side drawn as 0 blanks nothing
    for image in blank[blank.any(dim=(1, 2))]:
        rows, cols = image.any(dim=1).nonzero().flatten(), image.any(dim=0).nonzero().flatten()
        assert image[rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()  # one solid rectangle
        assert len(rows) <= 14 and len(cols) <= 14


def test_the_unlabeled_loss_counts_only_confident_images_and_its_targets_carry_no_gradient() -> None:
    weak = torch.tensor([[9.0, 0.0, 0.0], [0.0, 0.2, 0.1], [0.0, 0.0, 9.0]], requires_grad=True)
    strong = torch.zeros(3, 3, requires_grad=True)
    part = unlabeled_loss(weak, strong, threshold=0.95)
    assert part.confident.tolist() == [True, False, True]
    assert part.pseudo_labels.tolist() == [0, 1, 2]
    # uniform strong logits: cross-entropy ln 3 for each confident image, averaged over all three
    assert float(part.loss.detach()) == pytest.approx(2 * np.log(3) / 3)
    part.loss.backward()
    assert weak.grad is None and strong.grad is not None
    assert strong.grad[1].abs().sum() == 0  # the unconfident image adds nothing


def test_unlabeled_draws_are_whole_passes_over_the_pool() -> None:
    draws = unlabeled_draws(10, 25, torch.Generator().manual_seed(0))
    counts = torch.bincount(draws, minlength=10)
    assert len(draws) == 25 and counts.min() >= 2 and counts.max() <= 3


# --- semi-supervised fit --------------------------------------------------------------------------------

SEMI = TrainConfig(epochs=3, batch_size=32, seed=3, device="cpu", semi_supervised="fixmatch",
                   confidence_threshold=0.5, unlabeled_ratio=2)


def _trained(x: torch.Tensor, y: torch.Tensor, config: TrainConfig, unlabeled: torch.Tensor | None, **kwargs):
    torch.manual_seed(0)
    model = build_model("small_cnn", 10)
    history = fit(model, x, y, SPEC, config, unlabeled=unlabeled, **kwargs)
    return model.state_dict(), history


@pytest.fixture(scope="module")
def small_split(fashion_train) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x, y = as_tensors(fashion_train, np.arange(96))
    pool, _ = as_tensors(fashion_train, np.arange(96, 496))
    return x, y, pool


@pytest.mark.parametrize("method", ["pseudo_label", "fixmatch"])
def test_the_pool_changes_the_model_only_when_semi_supervision_is_on(small_split, method: str) -> None:
    x, y, pool = small_split
    config = TrainConfig(**{**SEMI.to_dict(), "semi_supervised": method})
    plain, _ = _trained(x, y, TrainConfig(**{**SEMI.to_dict(), "semi_supervised": "off"}), None)
    ignored, off_history = _trained(x, y, TrainConfig(**{**SEMI.to_dict(), "semi_supervised": "off"}), pool)
    semi, history = _trained(x, y, config, pool)
    assert all(torch.equal(plain[k], ignored[k]) for k in plain)
    assert any(not torch.equal(plain[k], semi[k]) for k in plain)
    assert off_history[-1].pseudo_labeled == 0
    # 3 epochs x 3 steps x 64 draws = 576 draws from 400 images: every image drawn at least once
    assert 0 < history[-1].pseudo_labeled <= len(pool)
    assert [h.pseudo_labeled for h in history] == sorted(h.pseudo_labeled for h in history)  # distinct, cumulative
    assert 0 < history[-1].confident_share <= 1


def test_a_threshold_nothing_reaches_uses_no_pseudo_label_and_a_low_one_uses_every_draw(small_split) -> None:
    x, y, pool = small_split
    _, none = _trained(x, y, TrainConfig(**{**SEMI.to_dict(), "confidence_threshold": 1.0, "epochs": 1}), pool)
    _, every = _trained(x, y, TrainConfig(**{**SEMI.to_dict(), "confidence_threshold": 0.01, "epochs": 1}), pool)
    assert none[-1].pseudo_labeled == 0 and none[-1].confident_share == 0
    assert every[-1].pseudo_labeled == 3 * 64 and every[-1].confident_share == 1.0  # 3 steps x 64 distinct draws


def test_resumed_semi_supervised_training_gives_the_same_weights_and_count(small_split, tmp_path: Path) -> None:
    x, y, pool = small_split
    expected, expected_history = _trained(x, y, SEMI, pool)
    path = tmp_path / "state.pt"
    _trained(x, y, SEMI, pool, on_state=lambda s: save_training_state(s, path), on_epoch=lambda s: s.epoch < 2)
    state = load_training_state(path)
    assert state is not None and state["epoch"] == 2
    torch.manual_seed(12345)  # a disturbed global stream: RandAugment's must be restored
    model = build_model("small_cnn", 10)
    history = fit(model, x, y, SPEC, SEMI, unlabeled=pool, resume=state)
    assert all(torch.equal(expected[k], model.state_dict()[k]) for k in expected)
    assert history[-1].pseudo_labeled == expected_history[-1].pseudo_labeled
    with pytest.raises(ValueError, match="another unlabeled pool"):
        fit(build_model("small_cnn", 10), x, y, SPEC, SEMI, unlabeled=pool[:100], resume=state)


@pytest.mark.parametrize(("options", "message"), [
    ({"semi_supervised": "mixmatch"}, "semi_supervised must be one of"), ({"confidence_threshold": 0.0}, "confidence"),
    ({"confidence_threshold": 1.5}, "confidence"), ({"unlabeled_ratio": 0}, "unlabeled_ratio"),
    ({"unlabeled_ratio": 1.5}, "unlabeled_ratio must be int"), ({"unlabeled_weight": -1.0}, "unlabeled_weight"),
])
def test_bad_semi_supervised_options_fail_fast(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(**options)


# --- TypiClust -----------------------------------------------------------------------------------------------

def _blobs(rng: np.random.Generator, sizes: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    centres = np.array([[0.0, 0.0], [20.0, 0.0], [0.0, 20.0], [20.0, 20.0]])[:len(sizes)]
    points = np.concatenate([c + rng.normal(size=(n, 2)) for c, n in zip(centres, sizes, strict=True)])
    return points.astype(np.float32), np.repeat(np.arange(len(sizes)), sizes), centres


def test_typiclust_picks_the_typical_middle_of_each_cluster_largest_first() -> None:
    rng = np.random.default_rng(0)
    points, blob, centres = _blobs(rng, [300, 200, 100])
    selection = select_batch("typiclust", PoolView(embeddings=points), 3, rng=rng)
    assert blob[selection.indices].tolist() == [0, 1, 2]
    for index, b in zip(selection.indices, blob[selection.indices], strict=True):
        distances = np.linalg.norm(points[blob == b] - centres[b], axis=1)
        assert np.linalg.norm(points[index] - centres[b]) <= np.quantile(distances, 0.35)  # typical, not an edge


def test_typiclust_skips_clusters_that_labeled_items_cover() -> None:
    rng = np.random.default_rng(1)
    points, blob, _ = _blobs(rng, [300, 200, 100, 100])
    labeled = points[blob == 0][:2]
    selection = typiclust(points, labeled, np.ones(len(points), dtype=bool), 3, rng)
    assert sorted(blob[selection.indices].tolist()) == [1, 2, 3]


def test_typiclust_respects_exclusions_and_the_batch_size() -> None:
    rng = np.random.default_rng(2)
    points, blob, _ = _blobs(rng, [50, 50])
    exclude = blob == 0
    selection = select_batch("typiclust", PoolView(embeddings=points, exclude=exclude), 5, rng=rng)
    assert len(selection.indices) == len(set(selection.indices.tolist())) == 5
    assert not exclude[selection.indices].any()
