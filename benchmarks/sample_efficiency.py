"""Sample efficiency of hitl's query strategies: pool-based active learning on real data.

From a random seed of labels, each round trains the same small CNN from scratch with the same
recipe, lets a strategy pick the next batch from the unlabeled pool, "labels" it with the
dataset's ground truth, and measures accuracy on the held-out test images. Every strategy sees
the same seed labels and pool for a given seed.

    python benchmarks/sample_efficiency.py               # full: 3 seeds, 100 -> 2,000 labels
    python benchmarks/sample_efficiency.py --quick       # 1 seed, 100 -> 1,000 labels, smaller pool
    python benchmarks/sample_efficiency.py --data /path/to/imagefolder --channels 3 --size 32

``--data`` takes any dataset laid out as one folder per class of image files (ImageFolder);
the default is Fashion-MNIST (train as pool, the official 10k test images as test set). Writes
``docs/sample_efficiency.json`` (every accuracy), ``docs/sample_efficiency.png`` and a section of
``docs/benchmarks.md``. Needs only torch, numpy, Pillow and matplotlib (no Django).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import machine, write_section  # noqa: E402
from workers.ml.architectures import InputSpec, SmallCNN  # noqa: E402
from workers.ml.datasets import load_fashion_mnist, load_image_folder  # noqa: E402
from workers.ml.inference import model_outputs, predict_proba  # noqa: E402
from workers.ml.strategies import STRATEGY_INPUTS, PoolView, select_batch  # noqa: E402
from workers.ml.training import TrainConfig, fit  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
COMMITTEE_SIZE = 3


@dataclass(frozen=True)
class Data:
    name: str
    pool_images: torch.Tensor  # uint8 [n, c, h, w]
    pool_targets: np.ndarray
    test_images: torch.Tensor
    test_targets: np.ndarray
    labels: list[str]
    spec: InputSpec


def load_data(args: argparse.Namespace) -> Data:
    if args.data != "fashion-mnist":
        folder = load_image_folder(Path(args.data), channels=args.channels, size=args.size)
        order = np.random.default_rng(0).permutation(len(folder.targets))
        test, pool = order[:len(order) // 5], order[len(order) // 5:]  # a fixed 20% test split
        images = folder.images[:, None] if args.channels == 1 else folder.images.transpose(0, 3, 1, 2)
        spec = InputSpec(args.channels, args.size, (0.5,) * args.channels, (0.5,) * args.channels)
        return Data(Path(args.data).name, torch.from_numpy(np.ascontiguousarray(images[pool])), folder.targets[pool],
                    torch.from_numpy(np.ascontiguousarray(images[test])), folder.targets[test], folder.labels, spec)
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    return Data("Fashion-MNIST", torch.from_numpy(train.images[:, None].copy()), train.targets,
                torch.from_numpy(test.images[:, None].copy()), test.targets, train.labels,
                InputSpec(1, 28, (0.5,), (0.5,)))


def recipe(n_labels: int, seed: int) -> TrainConfig:
    """The one training recipe for every strategy: at least 15 epochs and 6,000 samples seen."""
    return TrainConfig(epochs=max(15, math.ceil(6000 / n_labels)), batch_size=64, learning_rate=1e-3,
                       weight_decay=1e-4, seed=seed, device="cpu")


def train(data: Data, pool_index: np.ndarray, labeled: np.ndarray, seed: int) -> SmallCNN:
    torch.manual_seed(seed)
    model = SmallCNN(len(data.labels), in_channels=data.spec.channels)
    rows = pool_index[labeled]
    fit(model, data.pool_images[rows], torch.from_numpy(data.pool_targets[rows]), data.spec, recipe(len(rows), seed))
    return model


def pool_view(strategy: str, models: list[SmallCNN], data: Data, pool_index: np.ndarray, labeled: np.ndarray,
              mc_samples: int, seed: int) -> PoolView:
    """What the strategy needs, computed by the current model (and the committee) on the pool."""
    needs = STRATEGY_INPUTS[strategy]
    images = data.pool_images[pool_index]
    if strategy == "committee" and len(models) < 2:  # one model so far: no committee yet
        needs = STRATEGY_INPUTS["margin"]
    out = model_outputs(models[-1], images, data.spec, embeddings="embeddings" in needs,
                        mc_samples=mc_samples if "mc_probs" in needs else 0, seed=seed)
    committee = None
    if "committee_probs" in needs:
        members = [out.probs] + [predict_proba(m, images, data.spec) for m in models[-COMMITTEE_SIZE:-1]]
        committee = np.stack(members, axis=2)
    labeled_embeddings = out.embeddings[labeled] if out.embeddings is not None else None
    return PoolView(probs=out.probs, mc_probs=out.mc_probs, committee_probs=committee, embeddings=out.embeddings,
                    labeled_embeddings=labeled_embeddings, exclude=labeled)


def run(strategy: str, seed: int, data: Data, args: argparse.Namespace) -> dict[int, float]:
    rng = np.random.default_rng(seed)
    pool_index = rng.choice(len(data.pool_targets), size=min(args.pool, len(data.pool_targets)), replace=False)
    labeled = np.zeros(len(pool_index), dtype=bool)
    labeled[rng.choice(len(pool_index), size=args.seed_labels, replace=False)] = True
    select_rng = np.random.default_rng(seed + 1000)
    models: list[SmallCNN] = []
    curve: dict[int, float] = {}
    while True:
        models = (models + [train(data, pool_index, labeled, seed)])[-COMMITTEE_SIZE:]
        probs = predict_proba(models[-1], data.test_images, data.spec)
        curve[int(labeled.sum())] = float((probs.argmax(axis=1) == data.test_targets).mean())
        print(f"  {strategy:<16} seed {seed}  {int(labeled.sum()):>5} labels  accuracy {curve[int(labeled.sum())]:.4f}",
              flush=True)
        if labeled.sum() >= args.budget:
            return curve
        name = "margin" if strategy == "committee" and len(models) < 2 else strategy
        view = pool_view(strategy, models, data, pool_index, labeled, args.mc_samples, seed)
        chosen = select_batch(name, view, min(args.step, args.budget - int(labeled.sum())), rng=select_rng).indices
        labeled[chosen] = True


def labels_to_reach(curve: dict[int, float], target: float) -> int | None:
    return next((n for n in sorted(curve) if curve[n] >= target), None)


def summarise(results: dict, strategies: list[str]) -> tuple[dict, dict]:
    """Mean and std of accuracy at each budget, per strategy."""
    means, stds = {}, {}
    for strategy in strategies:
        runs = results.get(strategy, {})
        budgets = sorted({int(n) for curve in runs.values() for n in curve})
        means[strategy] = {n: float(np.mean([c[str(n)] for c in runs.values() if str(n) in c])) for n in budgets}
        stds[strategy] = {n: float(np.std([c[str(n)] for c in runs.values() if str(n) in c])) for n in budgets}
    return means, stds


def plot(means: dict, stds: dict, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6))
    colours = iter(c for i, c in enumerate(plt.get_cmap("tab10").colors) if i != 7)  # grey is random's
    for strategy, curve in means.items():
        x = np.array(sorted(curve))
        y = np.array([curve[n] for n in x])
        s = np.array([stds[strategy][n] for n in x])
        style = {"color": "black", "linewidth": 2.5, "linestyle": "--"} if strategy == "random" else \
            {"color": next(colours), "linewidth": 1.6}
        ax.plot(x, y, label=strategy, **style)
        ax.fill_between(x, y - s, y + s, alpha=0.12, color=style["color"])
    if "random" in means:
        target = means["random"][max(means["random"])]
        ax.axhline(target, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("human labels")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(ncol=3, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def report(results: dict, strategies: list[str], args: argparse.Namespace, data: Data, seconds: float, measured: str,
           plot_path: Path | None) -> str:
    means, stds = summarise(results, strategies)
    budgets = sorted(means["random"])
    shown = [n for n in budgets if n in {args.seed_labels, 200, 500, 1000, 1500, args.budget}]
    target = means["random"][budgets[-1]]
    header = "| strategy | " + " | ".join(f"{n} labels" for n in shown) + f" | labels to reach random's {budgets[-1]}-label accuracy ({target:.4f}) |"
    lines = [header, "| --- |" + " ---: |" * (len(shown) + 1)]
    seeds = sorted({int(s) for runs in results.values() for s in runs})
    spread = len(seeds) > 1
    for strategy in strategies:
        reach = labels_to_reach(means[strategy], target)
        reach_text = f"{reach} ({reach / budgets[-1]:.2f}x)" if reach else f"not within {budgets[-1]}"
        cells = " | ".join(f"{means[strategy][n]:.4f}" + (f" ± {stds[strategy][n]:.4f}" if spread else "")
                           for n in shown)
        lines.append(f"| {strategy} | {cells} | {reach_text} |")
    never_worse = [s for s in strategies if s != "random" and all(
        means[s][n] >= means["random"][n] - 1e-9 for n in budgets if n > args.seed_labels)]
    if plot_path is not None:
        plot(means, stds, f"{data.name}: accuracy vs human labels ({len(seeds)} seed{'s' if spread else ''})",
             plot_path)
    mode = "quick" if args.quick else "full"
    return f"""
## Sample efficiency of the query strategies ({data.name}, {mode} run)

`python benchmarks/sample_efficiency.py{' --quick' if args.quick else ''}`, measured {measured} on
{machine()}, torch {torch.__version__}; the run took {seconds / 60:.0f} minutes (time spent running, summed when a run is resumed). Pool: {args.pool:,} training images; test: {len(data.test_targets):,}
held-out images; start: {args.seed_labels} random labels; then batches of {args.step} up to {args.budget};
random seed{'s' if spread else ''} {', '.join(map(str, seeds))} (the same seed labels and pool for every strategy); a small CNN trained from scratch each
round with one recipe for all (`recipe()`: AdamW, at least 15 epochs and 6,000 samples seen); BALD with
{args.mc_samples} MC-dropout passes; the committee is the models of the last {COMMITTEE_SIZE} rounds (margin until
there are two). {'Accuracy mean ± std over the seeds' if spread else 'Accuracy (one seed, so no spread)'}:

{chr(10).join(lines)}

Strategies at least as good as random at every budget{' (mean over seeds)' if spread else ''}: {', '.join(never_worse) or 'none'}.

![accuracy vs labels](sample_efficiency{'_quick' if args.quick else ''}.png)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 seed, up to 1,000 labels, a 5,000-image pool")
    parser.add_argument("--data", default="fashion-mnist", help="'fashion-mnist' or an ImageFolder directory")
    parser.add_argument("--channels", type=int, default=1, choices=[1, 3], help="for --data folders")
    parser.add_argument("--size", type=int, default=28, help="image side for --data folders")
    parser.add_argument("--strategies", default=",".join(STRATEGY_INPUTS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--seed-labels", type=int, default=100)
    parser.add_argument("--step", type=int, default=100)
    parser.add_argument("--budget", type=int, default=2000)
    parser.add_argument("--pool", type=int, default=10_000)
    parser.add_argument("--mc-samples", type=int, default=10)
    parser.add_argument("--results", type=Path, default=None, help="JSON to resume from and write to")
    parser.add_argument("--no-write", action="store_true", help="leave docs/ alone")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.budget, args.pool = 1, 1000, 5000
    strategies = [s.strip() for s in args.strategies.split(",")]
    unknown = [s for s in strategies if s not in STRATEGY_INPUTS]
    if unknown or "random" not in strategies:
        raise SystemExit(f"unknown strategies {unknown}; 'random' must be included (the baseline)")
    data = load_data(args)
    results_path = args.results or (DOCS / f"sample_efficiency{'_quick' if args.quick else ''}.json")
    results: dict = json.loads(results_path.read_text()) if results_path.exists() else {}
    config = {"budget": args.budget, "pool": args.pool, "step": args.step, "seed_labels": args.seed_labels,
              "data": data.name, "mc_samples": args.mc_samples}
    if results.get("_config", config) != config:  # resuming another run's results would mix them
        raise SystemExit(f"{results_path} holds a run with other settings ({results['_config']}); "
                         "pass --results elsewhere")
    results["_config"] = config
    started = time.monotonic() - results.get("_seconds", 0.0)
    for seed in range(args.seeds):
        for strategy in strategies:
            if str(seed) in results.get(strategy, {}):
                continue  # resumed
            curve = run(strategy, seed, data, args)
            results.setdefault(strategy, {})[str(seed)] = {str(n): a for n, a in curve.items()}
            results["_seconds"] = time.monotonic() - started
            results["_measured"] = time.strftime("%Y-%m-%d")  # the day the last run finished
            results_path.parent.mkdir(exist_ok=True)
            results_path.write_text(json.dumps(results, indent=1))
    runs = {k: v for k, v in results.items() if not k.startswith("_")}
    plot_path = None if args.no_write else DOCS / f"sample_efficiency{'_quick' if args.quick else ''}.png"
    section = report(runs, strategies, args, data, results["_seconds"], results["_measured"], plot_path)
    print(section)
    if not args.no_write:
        write_section("sample-efficiency" + ("-quick" if args.quick else ""), section)


if __name__ == "__main__":
    main()
