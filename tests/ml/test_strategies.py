"""Query strategies: checked against independent implementations (baal, modAL, naive loops)
on the same arrays, and against invariants with hypothesis."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from workers.ml.strategies import (
    STRATEGY_INPUTS,
    PoolView,
    SelectOptions,
    gradient_embeddings,
    select_batch,
)
from workers.ml.uncertainty import (
    bald,
    consensus_kl,
    entropy,
    least_confidence,
    margin,
    vote_entropy,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from baal.active import heuristics as baal
    from modAL import batch as modal_batch
    from modAL import uncertainty as modal


def dirichlet(rng: np.random.Generator, shape: tuple, concentration: float = 1.0) -> np.ndarray:
    return rng.dirichlet(np.ones(shape[1]) * concentration, size=shape[0])


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(42)


# --- reference checks ---------------------------------------------------------------------------

def test_single_model_scores_match_baal_and_modal(rng) -> None:
    probs = dirichlet(rng, (500, 7), 0.7)
    np.testing.assert_allclose(entropy(probs), baal.Entropy().get_uncertainties(probs), rtol=1e-5)
    np.testing.assert_allclose(entropy(probs), modal._proba_entropy(probs), rtol=1e-9)
    np.testing.assert_allclose(margin(probs), 1 - baal.Margin().get_uncertainties(probs), atol=1e-6)
    np.testing.assert_allclose(margin(probs), 1 - modal._proba_margin(probs), atol=1e-12)
    np.testing.assert_allclose(least_confidence(probs), 1 - baal.Certainty().get_uncertainties(probs), atol=1e-6)
    np.testing.assert_allclose(least_confidence(probs), modal._proba_uncertainty(probs), atol=1e-12)


def test_bald_matches_baal(rng) -> None:
    samples = rng.dirichlet(np.ones(5), size=(300, 12)).transpose(0, 2, 1)  # [n, k, T]
    np.testing.assert_allclose(bald(samples), baal.BALD().get_uncertainties(samples), rtol=1e-5, atol=1e-7)


def test_mutual_information_is_mean_kl_to_the_consensus(rng) -> None:
    samples = rng.dirichlet(np.ones(4), size=(200, 3)).transpose(0, 2, 1)
    np.testing.assert_allclose(consensus_kl(samples), bald(samples), atol=1e-10)


def test_hybrid_matches_modals_ranked_batch(rng) -> None:
    """Same embeddings, labeled set and least-confidence uncertainty: the same ranking."""
    probs = dirichlet(rng, (300, 4))
    embeddings = rng.normal(size=(300, 6)).astype(np.float32)
    labeled = rng.normal(size=(20, 6)).astype(np.float32)

    class Learner:  # what modAL's ranked_batch reads from a learner
        X_training = labeled
        on_transformed = False

    expected, _ = modal_batch.ranked_batch(Learner(), embeddings, least_confidence(probs), 25, "euclidean", None)
    ours = select_batch("hybrid", PoolView(probs=probs, embeddings=embeddings, labeled_embeddings=labeled), 25,
                        rng=rng, options=SelectOptions(uncertainty="least_confidence"))
    assert ours.indices.tolist() == list(expected)


def naive_k_center(embeddings: np.ndarray, labeled: np.ndarray, b: int) -> list[int]:
    centers = list(labeled)
    picked: list[int] = []
    for _ in range(b):
        best, best_distance = -1, -1.0
        for i, point in enumerate(embeddings):
            if i in picked:
                continue
            distance = min(float(np.linalg.norm(point - c)) for c in centers)
            if distance > best_distance:
                best, best_distance = i, distance
        picked.append(best)
        centers.append(embeddings[best])
    return picked


def test_coreset_matches_a_naive_k_center_greedy(rng) -> None:
    embeddings = rng.normal(size=(120, 5)).astype(np.float32)
    labeled = rng.normal(size=(4, 5)).astype(np.float32)
    ours = select_batch("coreset", PoolView(embeddings=embeddings, labeled_embeddings=labeled), 10, rng=rng)
    assert ours.indices.tolist() == naive_k_center(embeddings, labeled, 10)
    assert (np.diff(ours.scores) <= 1e-5).all()  # each pick covers a smaller hole than the last


# --- behaviour ------------------------------------------------------------------------------------

def test_badge_spreads_over_clusters(rng) -> None:
    """Four tight, far-apart clusters of equally uncertain items: a batch of four takes one from
    each (k-means++ seeding samples by squared distance in gradient space)."""
    centers = np.eye(4, 8, dtype=np.float32) * 50
    embeddings = np.concatenate([c + rng.normal(scale=0.01, size=(25, 8)) for c in centers]).astype(np.float32)
    probs = np.tile([0.4, 0.35, 0.25], (100, 1))
    chosen = select_batch("badge", PoolView(probs=probs, embeddings=embeddings), 4, rng=rng).indices
    assert sorted(chosen // 25) == [0, 1, 2, 3]
    assert gradient_embeddings(probs, embeddings).shape == (100, 24)


def test_hybrid_avoids_near_duplicates_that_margin_takes(rng) -> None:
    """Ten copies of one very uncertain image: margin takes them all, the hybrid one of them."""
    probs = dirichlet(rng, (200, 5), 0.5)
    probs[:10] = 0.2
    embeddings = rng.normal(size=(200, 8)).astype(np.float32) * 3
    embeddings[:10] = embeddings[0] + rng.normal(scale=1e-3, size=(10, 8))
    pool = PoolView(probs=probs, embeddings=embeddings, labeled_embeddings=embeddings[150:160])
    assert set(select_batch("margin", pool, 10, rng=rng).indices) == set(range(10))
    assert len(set(select_batch("hybrid", pool, 10, rng=rng).indices) & set(range(10))) <= 2


def test_class_balance_spreads_picks_over_predicted_classes(rng) -> None:
    probs = dirichlet(rng, (400, 4), 2.0)
    probs[:, 0] += 2 * rng.random(400)  # class 0 dominates the uncertain end
    probs /= probs.sum(axis=1, keepdims=True)
    pool = PoolView(probs=probs)
    balanced = select_batch("entropy", pool, 40, rng=rng, options=SelectOptions(class_balance=True))
    counts = np.bincount(probs[balanced.indices].argmax(axis=1), minlength=4)
    available = np.bincount(probs.argmax(axis=1), minlength=4)
    assert (counts >= np.minimum(10, available)).all()


@pytest.mark.parametrize("strategy", list(STRATEGY_INPUTS))
def test_every_strategy_respects_exclusions_and_size(strategy, rng) -> None:
    n = 60
    probs = dirichlet(rng, (n, 3))
    samples = rng.dirichlet(np.ones(3), size=(n, 4)).transpose(0, 2, 1)
    pool = PoolView(probs=probs, mc_probs=samples, committee_probs=samples,
                    embeddings=rng.normal(size=(n, 4)).astype(np.float32), exclude=np.arange(n) < 50)
    chosen = select_batch(strategy, pool, 25, rng=rng)
    assert len(chosen.indices) == 10 and set(chosen.indices) == set(range(50, 60))
    assert len(chosen.scores) == 10


def test_the_same_seed_gives_the_same_batch(rng) -> None:
    probs = dirichlet(rng, (300, 5))
    embeddings = rng.normal(size=(300, 4)).astype(np.float32)
    for strategy in ("random", "badge", "coreset"):
        pool = PoolView(probs=probs, embeddings=embeddings)
        first = select_batch(strategy, pool, 20, rng=np.random.default_rng(7)).indices
        again = select_batch(strategy, pool, 20, rng=np.random.default_rng(7)).indices
        assert first.tolist() == again.tolist()


@pytest.mark.parametrize(
    ("strategy", "pool", "message"),
    [
        ("vibes", PoolView(size=3), "unknown strategy"),
        ("margin", PoolView(size=3), "needs probs"),
        ("bald", PoolView(probs=np.full((3, 2), 0.5)), "needs mc_probs"),
        ("margin", PoolView(probs=np.zeros((0, 2))), "empty"),
        ("margin", PoolView(probs=np.full((2, 2), 0.5), exclude=np.array([True, True])), "nothing left"),
        ("margin", PoolView(probs=np.full((2, 2), 0.5), exclude=np.array([1, 0])), "boolean mask"),
        ("margin", PoolView(probs=np.array([[0.5, np.nan]])), "non-finite"),
        ("coreset", PoolView(embeddings=np.array([[1.0, np.inf]])), "non-finite"),
        ("badge", PoolView(probs=np.full((3, 2), 0.5), embeddings=np.zeros((4, 2))), "disagree"),
        ("bald", PoolView(mc_probs=np.full((3, 2, 1), 0.5)), "at least 2"),
        ("coreset", PoolView(embeddings=np.zeros((3, 2)), labeled_embeddings=np.zeros((2, 5))), "dimensions"),
    ],
)
def test_bad_inputs_fail_clearly(strategy, pool, message) -> None:
    with pytest.raises(ValueError, match=message):
        select_batch(strategy, pool, 2, rng=np.random.default_rng(0))


# --- properties ---------------------------------------------------------------------------------

def sample_arrays(n: int, k: int, t: int) -> st.SearchStrategy[np.ndarray]:
    return arrays(np.float64, (n, k, t), elements=st.floats(0.001, 1.0)).map(lambda a: a / a.sum(axis=1, keepdims=True))


@settings(max_examples=50, deadline=None)
@given(st.tuples(st.integers(1, 6), st.integers(2, 5), st.integers(2, 6)).flatmap(lambda s: sample_arrays(*s)))
def test_disagreement_is_zero_when_all_passes_agree_and_never_negative(samples: np.ndarray) -> None:
    agreeing = np.repeat(samples[:, :, :1], samples.shape[2], axis=2)
    np.testing.assert_allclose(bald(agreeing), 0.0, atol=1e-9)
    np.testing.assert_allclose(vote_entropy(agreeing), 0.0, atol=1e-12)
    assert (bald(samples) >= -1e-9).all()
    assert (bald(samples) <= entropy(samples.mean(axis=2)) + 1e-9).all()  # MI <= predictive entropy


@settings(max_examples=40, deadline=None)
@given(st.integers(5, 40), st.integers(1, 10), st.integers(0, 10_000))
def test_selections_are_distinct_eligible_and_sized(n: int, b: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    exclude = rng.random(n) < 0.3
    if exclude.all():
        exclude[0] = False
    pool = PoolView(probs=rng.dirichlet(np.ones(3), size=n), embeddings=rng.normal(size=(n, 3)).astype(np.float32),
                    exclude=exclude)
    for strategy in ("random", "margin", "coreset", "badge", "hybrid"):
        chosen = select_batch(strategy, pool, b, rng=rng).indices
        assert len(chosen) == min(b, int((~exclude).sum())) == len(set(chosen))
        assert not exclude[chosen].any()
