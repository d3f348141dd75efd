"""Query strategies: which pool items a human should label next.

Each strategy is a pure function over arrays of the pool (``PoolView``): probabilities
``[n, k]``, MC-dropout samples ``[n, k, T]``, committee predictions ``[n, k, M]``, embeddings
``[n, d]``. ``select_batch`` validates the inputs once, dispatches by name and returns the chosen
pool indices in pick order with the score each had when it was picked.

| strategy | needs | picks |
| --- | --- | --- |
| random | - | uniformly at random |
| least_confidence, margin, entropy | probs | the most uncertain |
| bald | mc_probs | the highest mutual information under MC dropout |
| committee | committee_probs | the highest vote entropy across model versions |
| coreset | embeddings | k-center greedy: covers the embedding space (Sener & Savarese 2018) |
| badge | probs, embeddings | k-means++ seeding on gradient embeddings (Ash et al. 2020) |
| hybrid | probs, embeddings | ranked batch mode: uncertainty traded against similarity to what is
  labeled or already picked, so a batch is not near-duplicates (Cardoso et al. 2017) |
| typiclust | embeddings | the most typical item of each k-means cluster that holds no labeled
  item yet, largest first: representative picks for a cold start (Hacohen et al. 2022) |

Items in ``exclude`` (e.g. already under review) are never picked; the diversity strategies treat
them as covered, like labeled items.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from workers.ml.uncertainty import SCORERS, score_samples, validate_probabilities

STRATEGY_INPUTS: dict[str, frozenset[str]] = {
    "random": frozenset(),
    "least_confidence": frozenset({"probs"}),
    "margin": frozenset({"probs"}),
    "entropy": frozenset({"probs"}),
    "bald": frozenset({"mc_probs"}),
    "committee": frozenset({"committee_probs"}),
    "coreset": frozenset({"embeddings"}),
    "badge": frozenset({"probs", "embeddings"}),
    "hybrid": frozenset({"probs", "embeddings"}),
    "typiclust": frozenset({"embeddings"}),
}
SCORE_STRATEGIES = ("least_confidence", "margin", "entropy", "bald", "committee")
# Strategies that measure distance to PoolView.labeled_embeddings (what is already covered).
COVERAGE_STRATEGIES = frozenset({"coreset", "hybrid", "typiclust"})


@dataclass(frozen=True)
class PoolView:
    """What is known about the n pool items (only what the strategy needs must be given)."""

    probs: np.ndarray | None = None  # [n, k]
    mc_probs: np.ndarray | None = None  # [n, k, T]
    committee_probs: np.ndarray | None = None  # [n, k, M]
    embeddings: np.ndarray | None = None  # [n, d]
    labeled_embeddings: np.ndarray | None = None  # [m, d] of items already labeled
    exclude: np.ndarray | None = None  # bool [n]: never pick these (e.g. under review)
    size: int | None = None  # n, when no array is given (random)


@dataclass(frozen=True)
class Selection:
    indices: np.ndarray  # int64 [b], pool indices in pick order
    scores: np.ndarray  # float64 [b]; NaN where a strategy has no score (random)


@dataclass(frozen=True)
class SelectOptions:
    class_balance: bool = False  # spread score-based picks over the predicted classes
    uncertainty: str = "margin"  # the uncertainty the hybrid trades against diversity
    device: str = "cpu"


def _pool_size(pool: PoolView) -> int:
    sizes = {name: len(value) for name, value in vars(pool).items()
             if isinstance(value, np.ndarray) and name not in ("labeled_embeddings",)}
    if pool.size is not None:
        sizes["size"] = pool.size
    if not sizes:
        raise ValueError("the pool view holds no arrays and no size")
    if len(set(sizes.values())) != 1:
        raise ValueError(f"pool arrays disagree on the number of items: {sizes}")
    return next(iter(sizes.values()))


def _check_embeddings(name: str, array: np.ndarray, dims: int | None = None) -> np.ndarray:
    array = np.asarray(array, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [n, d], got shape {array.shape}")
    if dims is not None and array.shape[1] != dims:
        raise ValueError(f"{name} have {array.shape[1]} dimensions, the pool's embeddings {dims}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contain non-finite values")
    return array


def validate_pool(strategy: str, pool: PoolView) -> tuple[int, np.ndarray]:
    """Check that the pool has what the strategy needs; returns (n, eligible mask)."""
    if strategy not in STRATEGY_INPUTS:
        raise ValueError(f"unknown strategy {strategy!r}: use one of {', '.join(STRATEGY_INPUTS)}")
    missing = [name for name in STRATEGY_INPUTS[strategy] if getattr(pool, name) is None]
    if missing:
        raise ValueError(f"strategy {strategy!r} needs {', '.join(sorted(missing))}")
    n = _pool_size(pool)
    if n == 0:
        raise ValueError("the pool is empty")
    eligible = np.ones(n, dtype=bool)
    if pool.exclude is not None:
        exclude = np.asarray(pool.exclude)
        if exclude.dtype != bool or exclude.shape != (n,):
            raise ValueError(f"exclude must be a boolean mask of shape ({n},)")
        eligible = ~exclude
    if not eligible.any():
        raise ValueError("every pool item is excluded: nothing left to select")
    return n, eligible


# --- score-based -----------------------------------------------------------------------------------

def _top(scores: np.ndarray, eligible: np.ndarray, b: int) -> np.ndarray:
    candidates = np.flatnonzero(eligible)
    if b >= len(candidates):
        return candidates[np.argsort(-scores[candidates], kind="stable")]
    part = candidates[np.argpartition(-scores[candidates], b - 1)[:b]]
    return part[np.argsort(-scores[part], kind="stable")]


def _class_balanced_top(scores: np.ndarray, predicted: np.ndarray, eligible: np.ndarray, b: int) -> np.ndarray:
    """Round-robin over predicted classes, each class contributing its most uncertain items, so
    no class is starved; classes with too few candidates leave their share to the others."""
    queues = [list(_top(scores, eligible & (predicted == c), b)) for c in np.unique(predicted[eligible])]
    picked: list[int] = []
    while len(picked) < b and any(queues):
        for queue in queues:
            if queue and len(picked) < b:
                picked.append(queue.pop(0))
    picked_array = np.array(picked, dtype=np.int64)
    return picked_array[np.argsort(-scores[picked_array], kind="stable")]


def _scores(strategy: str, pool: PoolView) -> np.ndarray:
    if strategy in SCORERS:
        return SCORERS[strategy](validate_probabilities(pool.probs))
    if strategy == "bald":
        return score_samples("bald", pool.mc_probs)
    # Vote entropy takes few distinct values with a small committee; the soft disagreement
    # (mean KL to the consensus) breaks its ties.
    return score_samples("vote_entropy", pool.committee_probs) + 1e-3 * score_samples("consensus_kl", pool.committee_probs)


def _predicted(strategy: str, pool: PoolView) -> np.ndarray:
    probs = {"bald": pool.mc_probs, "committee": pool.committee_probs}.get(strategy)
    return (probs.mean(axis=2) if probs is not None else pool.probs).argmax(axis=1)


# --- diversity ---------------------------------------------------------------------------------------

HALF_PRECISION_MIN_ELEMENTS = 10_000_000


def _distance_dtype(points: torch.Tensor) -> torch.dtype:
    """float16 for the big matrix-vector products when that is faster here (always on a GPU;
    on a CPU only if a quick timing says so), else float32. Norms stay float32; the distances'
    relative error in half precision is about 1e-4, far below any gap that matters to a greedy pick."""
    if points.device.type == "cuda":
        return torch.float16
    if points.numel() < HALF_PRECISION_MIN_ELEMENTS:
        return torch.float32
    sample = points[:20_000]
    timings = {}
    for dtype in (torch.float32, torch.float16):
        work, vector = sample.to(dtype), sample[0].to(dtype)
        work @ vector
        started = time.perf_counter()
        for _ in range(3):
            work @ vector
        timings[dtype] = time.perf_counter() - started
    return min(timings, key=timings.get)


class Coverage:
    """Squared euclidean distance from every point to its nearest covered or chosen point,
    kept up to date with one matrix-vector product per choice."""

    def __init__(self, points: torch.Tensor, covered: torch.Tensor | None, chunk: int = 256) -> None:
        self.norms = (points.float() ** 2).sum(dim=1)
        self.work = points.to(_distance_dtype(points))
        self.d2 = torch.full((len(points),), float("inf"), device=points.device)
        if covered is not None:
            covered = covered.to(self.work.dtype)
            covered_norms = (covered.float() ** 2).sum(dim=1)
            for start in range(0, len(covered), chunk):
                dots = (self.work @ covered[start:start + chunk].T).float()
                d2 = self.norms[:, None] + covered_norms[None, start:start + chunk] - 2 * dots
                torch.minimum(self.d2, d2.min(dim=1).values.clamp_min(0), out=self.d2)

    def add(self, index: int) -> None:
        d2 = self.norms + self.norms[index] - 2 * (self.work @ self.work[index]).float()
        torch.minimum(self.d2, d2.clamp_min(0), out=self.d2)


def _covered(pool: PoolView, embeddings: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    parts = [embeddings[~eligible]]
    if pool.labeled_embeddings is not None and len(pool.labeled_embeddings):
        parts.append(_check_embeddings("labeled_embeddings", pool.labeled_embeddings, embeddings.shape[1]))
    return np.concatenate(parts)


def _coverage(embeddings: np.ndarray, covered: np.ndarray, device: str) -> Coverage:
    points = torch.from_numpy(embeddings).to(device)
    return Coverage(points, torch.from_numpy(covered).to(device) if len(covered) else None)


def k_center_greedy(embeddings: np.ndarray, covered: np.ndarray, eligible: np.ndarray, b: int,
                    rng: np.random.Generator, device: str = "cpu") -> Selection:
    """Repeatedly pick the eligible point farthest from every covered or picked point."""
    coverage = _coverage(embeddings, covered, device)
    mask = torch.from_numpy(eligible).to(device)
    picked, scores = [], []
    for _ in range(min(b, int(eligible.sum()))):
        if not picked and len(covered) == 0:  # nothing covered yet: start anywhere
            index, score = int(rng.choice(np.flatnonzero(mask.cpu().numpy()))), float("nan")
        else:
            index = int(torch.where(mask, coverage.d2, torch.tensor(-1.0, device=mask.device)).argmax())
            score = float(coverage.d2[index].sqrt())
        picked.append(index)
        scores.append(score)
        mask[index] = False
        coverage.add(index)
    return Selection(np.array(picked, dtype=np.int64), np.array(scores, dtype=np.float64))


def gradient_embeddings(probs: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
    """BADGE's hallucinated gradients of the last layer: (p - onehot(argmax p)) outer h, [n, k*d]."""
    residual = probs.astype(np.float32).copy()
    residual[np.arange(len(probs)), probs.argmax(axis=1)] -= 1.0
    return (residual[:, :, None] * embeddings[:, None, :]).reshape(len(probs), -1)


def kmeans_plus_plus(points_np: np.ndarray, eligible: np.ndarray, b: int, rng: np.random.Generator,
                     device: str = "cpu") -> Selection:
    """k-means++ seeding: the first point has the largest norm, each next one is drawn with
    probability proportional to its squared distance to the nearest point drawn so far."""
    coverage = _coverage(points_np, points_np[:0], device)
    candidates = np.flatnonzero(eligible)
    first = int(candidates[int(coverage.norms[torch.from_numpy(candidates).to(device)].argmax())])
    picked, scores = [first], [float(coverage.norms[first].sqrt())]
    mask = torch.from_numpy(eligible).to(device)
    mask[first] = False
    coverage.add(first)
    for _ in range(min(b, len(candidates)) - 1):
        weights = torch.where(mask, coverage.d2, torch.zeros((), device=mask.device)).double().cpu().numpy()
        total = weights.sum()
        index = (int(rng.choice(len(weights), p=weights / total)) if total > 0
                 else int(rng.choice(np.flatnonzero(mask.cpu().numpy()))))
        picked.append(index)
        scores.append(float(coverage.d2[index].sqrt()))
        mask[index] = False
        coverage.add(index)
    return Selection(np.array(picked, dtype=np.int64), np.array(scores, dtype=np.float64))


def ranked_batch(uncertainty: np.ndarray, embeddings: np.ndarray, covered: np.ndarray, eligible: np.ndarray,
                 b: int, device: str = "cpu") -> Selection:
    """Ranked batch mode (Cardoso et al. 2017, as modAL implements it): repeatedly pick the argmax
    of alpha * (1 - similarity) + (1 - alpha) * uncertainty, where similarity is 1 / (1 + the
    euclidean distance to the nearest labeled or already picked item), and alpha = |U| / (|U| + |L|)
    shifts weight from diversity to uncertainty as the batch grows. With nothing labeled yet the
    most uncertain item goes first (modAL takes the most central one, an O(n^2) search)."""
    coverage = _coverage(embeddings, covered, device)
    u = torch.from_numpy(uncertainty.astype(np.float32)).to(device)
    remaining, n_labeled = int(eligible.sum()), len(covered)
    mask = torch.from_numpy(eligible).to(device)
    picked, scores = [], []
    for _ in range(min(b, remaining)):
        alpha = remaining / (remaining + n_labeled)
        score = u if n_labeled == 0 else alpha * (1 - 1 / (1 + coverage.d2.sqrt())) + (1 - alpha) * u
        index = int(torch.where(mask, score, torch.tensor(-float("inf"), device=mask.device)).argmax())
        picked.append(index)
        scores.append(float(score[index]))
        mask[index] = False
        remaining, n_labeled = remaining - 1, n_labeled + 1
        coverage.add(index)
    return Selection(np.array(picked, dtype=np.int64), np.array(scores, dtype=np.float64))


# --- representativeness ----------------------------------------------------------------------------

TYPICALITY_NEIGHBOURS = 20  # TypiClust's K: typicality is the inverse mean distance to K neighbours
MAX_TYPICLUST_CLUSTERS = 500  # TypiClust's cap on k, which keeps k-means affordable on a big pool
TYPICALITY_SAMPLE = 2000  # a bigger cluster's typicality is measured against this many of its points
KMEANS_ITERATIONS = 30


def _nearest_centre(points: torch.Tensor, centres: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    norms = (centres ** 2).sum(dim=1)
    return torch.cat([(norms[None] - 2 * part @ centres.T).argmin(dim=1) for part in points.split(chunk)])


def kmeans(points_np: np.ndarray, k: int, rng: np.random.Generator, device: str = "cpu") -> np.ndarray:
    """Lloyd's k-means from k-means++ seeds; the cluster index of each point. An emptied cluster
    keeps its centre (it may win points back)."""
    seeds = kmeans_plus_plus(points_np, np.ones(len(points_np), dtype=bool), k, rng, device).indices
    points = torch.from_numpy(points_np).to(device)
    centres = points[torch.from_numpy(seeds).to(device)].clone()
    assignment = _nearest_centre(points, centres)
    for _ in range(KMEANS_ITERATIONS):
        sums = torch.zeros_like(centres).index_add_(0, assignment, points)
        counts = torch.bincount(assignment, minlength=len(centres)).to(points.dtype)
        moved = counts > 0
        centres[moved] = sums[moved] / counts[moved, None]
        update = _nearest_centre(points, centres)
        if torch.equal(update, assignment):
            break
        assignment = update
    return assignment.cpu().numpy()


def typicality(points: np.ndarray, candidates: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """1 / mean euclidean distance of each candidate to its K nearest other points of the cluster
    (a sample of TYPICALITY_SAMPLE of them in a bigger cluster): high in the dense middle."""
    reference = points if len(points) <= TYPICALITY_SAMPLE else points[rng.choice(len(points), TYPICALITY_SAMPLE,
                                                                                   replace=False)]
    d = torch.cdist(torch.from_numpy(points[candidates]), torch.from_numpy(reference))
    k = min(TYPICALITY_NEIGHBOURS, len(reference) - 1)
    if k < 1:
        return np.ones(len(candidates))
    nearest = d.topk(k + 1, dim=1, largest=False).values[:, 1:]  # the first is the point itself
    return (1.0 / (nearest.mean(dim=1) + 1e-12)).double().numpy()


def typiclust(embeddings: np.ndarray, covered: np.ndarray, eligible: np.ndarray, b: int,
              rng: np.random.Generator, device: str = "cpu") -> Selection:
    """TypiClust (Hacohen, Dekel & Weinshall 2022): cluster pool and covered items into
    min(covered + b, MAX_TYPICLUST_CLUSTERS) groups; then b times take the cluster with the fewest
    covered or picked items (the largest among equals) and pick its most typical eligible item.
    The score is that item's typicality."""
    points = np.concatenate([embeddings, covered]) if len(covered) else embeddings
    k = max(1, min(len(covered) + b, MAX_TYPICLUST_CLUSTERS, len(points)))
    cluster = kmeans(points, k, rng, device)
    sizes = np.bincount(cluster, minlength=k)
    taken = np.bincount(cluster[len(embeddings):], minlength=k)
    open_items = eligible.copy()
    picked, scores = [], []
    for _ in range(min(b, int(eligible.sum()))):
        has_open = np.bincount(cluster[:len(embeddings)][open_items], minlength=k) > 0
        order = np.lexsort((-sizes, taken))  # fewest covered first, then the largest
        c = int(next(c for c in order if has_open[c]))
        members = np.flatnonzero(cluster == c)
        candidates = np.flatnonzero((cluster[:len(embeddings)] == c) & open_items)
        typical = typicality(points[members], np.searchsorted(members, candidates), rng)
        best = int(typical.argmax())
        picked.append(int(candidates[best]))
        scores.append(float(typical[best]))
        open_items[candidates[best]] = False
        taken[c] += 1
    return Selection(np.array(picked, dtype=np.int64), np.array(scores, dtype=np.float64))


# --- entry ---------------------------------------------------------------------------------------------

def select_batch(strategy: str, pool: PoolView, batch_size: int, *, rng: np.random.Generator,
                 options: SelectOptions = SelectOptions()) -> Selection:
    """Choose up to ``batch_size`` eligible pool items with the named strategy."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    n, eligible = validate_pool(strategy, pool)
    b = min(batch_size, int(eligible.sum()))
    if strategy == "random":
        chosen = rng.choice(np.flatnonzero(eligible), size=b, replace=False)
        return Selection(chosen.astype(np.int64), np.full(b, np.nan))
    if strategy in SCORE_STRATEGIES:
        scores = _scores(strategy, pool)
        if options.class_balance:
            chosen = _class_balanced_top(scores, _predicted(strategy, pool), eligible, b)
        else:
            chosen = _top(scores, eligible, b)
        return Selection(chosen.astype(np.int64), scores[chosen])
    embeddings = _check_embeddings("embeddings", pool.embeddings)
    if strategy == "coreset":
        return k_center_greedy(embeddings, _covered(pool, embeddings, eligible), eligible, b, rng, options.device)
    if strategy == "typiclust":
        return typiclust(embeddings, _covered(pool, embeddings, eligible), eligible, b, rng, options.device)
    probs = validate_probabilities(pool.probs)
    if strategy == "badge":
        return kmeans_plus_plus(gradient_embeddings(probs, embeddings), eligible, b, rng, options.device)
    if options.uncertainty not in SCORERS:
        raise ValueError(f"hybrid uncertainty must be one of {', '.join(SCORERS)}")
    return ranked_batch(SCORERS[options.uncertainty](probs), embeddings, _covered(pool, embeddings, eligible),
                        eligible, b, options.device)

