"""Label efficiency of hitl's default pipeline against plain practice, on real data.

*Baseline*: label a random sample, train the same architecture on it with plain supervised
training (the recipe of `sample_efficiency.py`). *hitl*: the pipeline a new project gets: its
default query strategy picks each next batch from the unlabeled pool, and each round trains with
the default training options, semi-supervised ones included (the unlabeled rest of the pool is
passed to training). Both start from the same random seed labels and pool per seed; accuracy is
measured on held-out test images. The report: the labels hitl needs to reach the baseline's
accuracy at the largest budget (mean and spread over seeds), accuracy per budget for both, and
the training time of a hitl round against a baseline round of the same size.

    python benchmarks/label_efficiency.py                  # full: 3 seeds, 100 -> 2,000 labels
    python benchmarks/label_efficiency.py --quick          # 1 seed, hitl up to 500 labels, smaller pool
    python benchmarks/label_efficiency.py --device cuda    # the full run on a GPU
    python benchmarks/label_efficiency.py --data /path/to/imagefolder --channels 3 --size 32

Writes ``docs/label_efficiency[_quick][_<semi>].json`` (every accuracy and time; a rerun resumes
from it), the ``.png`` of the same name and a section of ``docs/benchmarks.md``. Needs torch,
numpy, Pillow and matplotlib, and Django installed but no database (hitl.mlspec names a new
project's strategy).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import machine, write_section  # noqa: E402
from benchmarks.sample_efficiency import Data, labels_to_reach, load_data, recipe  # noqa: E402
from hitl.mlspec import DEFAULT_STRATEGY  # noqa: E402
from workers.ml.architectures import SmallCNN  # noqa: E402
from workers.ml.inference import predict_proba  # noqa: E402
from workers.ml.strategies import STRATEGY_INPUTS, PoolView, select_batch  # noqa: E402
from workers.ml.training import TrainConfig, fit  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SEMI_OPTIONS = ("semi_supervised", "confidence_threshold", "unlabeled_ratio", "unlabeled_weight")
PLAIN = {"semi_supervised": "off"}


def hitl_options(args: argparse.Namespace) -> dict:
    """The default training options of a project (TrainConfig's), with --semi to try another method."""
    defaults = TrainConfig()
    options = {name: getattr(defaults, name) for name in SEMI_OPTIONS}
    if args.semi is not None:
        options["semi_supervised"] = args.semi
    return options


def train(data: Data, rows: np.ndarray, unlabeled: np.ndarray | None, seed: int, options: dict,
          device: str) -> tuple[SmallCNN, dict[str, float], int]:
    """A model trained from scratch on pool rows ``rows`` (and the unlabeled rows, if the
    options are semi-supervised); its training time (wall and this process's CPU seconds: on a
    shared machine only the CPU time compares runs made at different loads) and the
    pseudo-labeled images' count."""
    torch.manual_seed(seed)
    model = SmallCNN(len(data.labels), in_channels=data.spec.channels)
    config = replace(recipe(len(rows), seed), device=device, **options)
    pool = data.pool_images[unlabeled] if unlabeled is not None and options["semi_supervised"] != "off" else None
    started, cpu_started = time.perf_counter(), time.process_time()
    history = fit(model, data.pool_images[rows], torch.from_numpy(data.pool_targets[rows]), data.spec, config,
                  unlabeled=pool)
    seconds = {"train_seconds": time.perf_counter() - started, "train_cpu_seconds": time.process_time() - cpu_started}
    return model, seconds, history[-1].pseudo_labeled


def accuracy(model: SmallCNN, data: Data, device: str) -> float:
    probs = predict_proba(model, data.test_images, data.spec, device=torch.device(device) if device != "auto" else None)
    return float((probs.argmax(axis=1) == data.test_targets).mean())


def start(data: Data, seed: int, args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """The seed's pool (indices into the training images) and its random order: the first
    ``seed_labels`` are both arms' seed labels, the first n the baseline's n labels."""
    rng = np.random.default_rng(seed)
    pool_index = rng.choice(len(data.pool_targets), size=min(args.pool, len(data.pool_targets)), replace=False)
    return pool_index, rng.permutation(len(pool_index))


def run_baseline(data: Data, seed: int, budgets: list[int], args: argparse.Namespace) -> dict[str, dict]:
    pool_index, order = start(data, seed, args)
    points = {}
    for n in budgets:
        model, seconds, _ = train(data, pool_index[order[:n]], None, seed, PLAIN, args.device)
        points[str(n)] = {"accuracy": accuracy(model, data, args.device), **seconds}
        print(f"  baseline  seed {seed}  {n:>5} labels  accuracy {points[str(n)]['accuracy']:.4f}  "
              f"train {seconds['train_seconds']:.0f} s", flush=True)
    return points


def run_hitl(data: Data, seed: int, budget: int, args: argparse.Namespace, options: dict) -> dict[str, dict]:
    pool_index, order = start(data, seed, args)
    labeled = np.zeros(len(pool_index), dtype=bool)
    labeled[order[:args.seed_labels]] = True
    select_rng = np.random.default_rng(seed + 1000)
    points = {}
    while True:
        model, seconds, pseudo = train(data, pool_index[labeled], pool_index[~labeled], seed, options, args.device)
        n = int(labeled.sum())
        points[str(n)] = {"accuracy": accuracy(model, data, args.device), **seconds, "pseudo_labeled": pseudo}
        print(f"  hitl      seed {seed}  {n:>5} labels  accuracy {points[str(n)]['accuracy']:.4f}  "
              f"train {seconds['train_seconds']:.0f} s  pseudo-labeled {pseudo}", flush=True)
        if n >= budget:
            return points
        probs = predict_proba(model, data.pool_images[pool_index], data.spec)
        chosen = select_batch(args.strategy, PoolView(probs=probs, exclude=labeled), min(args.step, budget - n),
                              rng=select_rng).indices
        labeled[chosen] = True


def curves(results: dict, arm: str) -> dict[str, dict[int, float]]:
    return {seed: {int(n): p["accuracy"] for n, p in points.items()} for seed, points in results[arm].items()}


def mean_curve(per_seed: dict[str, dict[int, float]]) -> tuple[dict[int, float], dict[int, float]]:
    budgets = sorted({n for c in per_seed.values() for n in c})
    values = {n: [c[n] for c in per_seed.values() if n in c] for n in budgets}
    return {n: float(np.mean(v)) for n, v in values.items()}, {n: float(np.std(v)) for n, v in values.items()}


def compute_ratio(results: dict) -> tuple[float, dict[int, float], str]:
    """hitl's training time over the baseline's, at the budgets both trained, summed over seeds:
    CPU seconds where every point has them, else wall seconds; and which it was."""
    both = {(s, n) for s, pts in results["hitl"].items() for n in pts if n in results["baseline"].get(s, {})}
    points = [results[arm][s][n] for s, n in both for arm in ("hitl", "baseline")]
    key = "train_cpu_seconds" if all("train_cpu_seconds" in p for p in points) else "train_seconds"
    per_budget: dict[int, list[float]] = {}
    for s, n in both:
        per_budget.setdefault(int(n), []).append(results["hitl"][s][n][key] / results["baseline"][s][n][key])
    total = (sum(results["hitl"][s][n][key] for s, n in both)
             / max(1e-9, sum(results["baseline"][s][n][key] for s, n in both)))
    return total, {n: float(np.mean(v)) for n, v in sorted(per_budget.items())}, \
        "process CPU time" if key == "train_cpu_seconds" else "wall-clock time"


def plot(base: tuple[dict, dict], hitl: tuple[dict, dict], target: float, title: str, label: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6))
    for (means, stds), name, style in ((base, "baseline: random + supervised", {"color": "black", "linestyle": "--"}),
                                       (hitl, label, {"color": "tab:blue"})):
        x = np.array(sorted(means))
        y, s = np.array([means[n] for n in x]), np.array([stds[n] for n in x])
        ax.plot(x, y, marker="o", linewidth=2, label=name, **style)
        ax.fill_between(x, y - s, y + s, alpha=0.12, color=style["color"])
    ax.axhline(target, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("human labels")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def report(results: dict, args: argparse.Namespace, data: Data, options: dict, plot_path: Path | None,
           suffix: str) -> str:
    base_seeds, hitl_seeds = curves(results, "baseline"), curves(results, "hitl")
    base, hitl = mean_curve(base_seeds), mean_curve(hitl_seeds)
    top = max(base[0])
    target = base[0][top]
    per_seed = {s: labels_to_reach(c, target) for s, c in hitl_seeds.items()}
    reached = [n for n in per_seed.values() if n is not None]
    spread = len(hitl_seeds) > 1
    if len(reached) == len(per_seed):
        reach = f"**{np.mean(reached):.0f} labels ({np.mean(reached) / top:.2f}x)**" + (
            f", std {np.std(reached):.0f}, per seed {', '.join(str(per_seed[s]) for s in sorted(per_seed))}"
            if spread else "")
    else:
        reach = (f"not reached within {max(hitl[0])} labels by {len(per_seed) - len(reached)} of {len(per_seed)} "
                 f"seed(s) (reached: {reached or 'none'})")
    budgets = sorted(set(base[0]) | set(hitl[0]))
    cell = lambda c, n: (f"{c[0][n]:.4f}" + (f" ± {c[1][n]:.4f}" if spread else "")) if n in c[0] else "-"  # noqa: E731
    rows = [f"| {n} | {cell(base, n)} | {cell(hitl, n)} | "
            + (f"{hitl[0][n] - base[0][n]:+.4f}" if n in hitl[0] and n in base[0] else "-") + " |" for n in budgets]
    common = [n for n in hitl[0] if n in base[0] and n > args.seed_labels]
    below = [n for n in common if hitl[0][n] < base[0][n]]
    ratio, per_budget, clock = compute_ratio(results)
    label = f"hitl: {args.strategy} + {options['semi_supervised']}"
    if plot_path is not None:
        plot(base, hitl, target, f"{data.name}: accuracy vs human labels ({len(hitl_seeds)} seed{'s' if spread else ''})",
             label, plot_path)
    mode = "quick" if args.quick else "full"
    pipeline = "hitl's default pipeline" if args.semi is None else f"hitl with semi_supervised={args.semi}"
    hitl_budget = f" --hitl-budget {args.hitl_budget}" if args.quick and args.hitl_budget != 500 else ""
    seeds = sorted(int(s) for s in hitl_seeds)
    semi = ("off" if options["semi_supervised"] == "off" else
            f"{options['semi_supervised']}, confidence threshold {options['confidence_threshold']}, "
            f"{options['unlabeled_ratio']} unlabeled images per labeled one, unlabeled weight {options['unlabeled_weight']}")
    pseudo = [p.get("pseudo_labeled", 0) for pts in results["hitl"].values() for p in pts.values()]
    return f"""
## Label efficiency: {pipeline} against random labels + supervised training ({data.name}, {mode} run)

`python benchmarks/label_efficiency.py{' --quick' if args.quick else ''}{f' --semi {args.semi}' if args.semi else ''}{hitl_budget}`, measured {results['_measured']} on
{machine() if args.device in ('cpu', 'auto') else args.device}, torch {torch.__version__}, device `{args.device}`; the run took {results['_seconds'] / 60:.0f} minutes
(summed when resumed). Pool: {min(args.pool, len(data.pool_targets)):,} training images; test: {len(data.test_targets):,} held-out
images; random seed{'s' if spread else ''} {', '.join(map(str, seeds))}; both arms start from the same {args.seed_labels} random labels.
*Baseline*: a random sample of n labels, the small CNN trained from scratch with `recipe()` of
`sample_efficiency.py` (AdamW, at least 15 epochs and 6,000 samples seen), plain supervised.
*hitl*: strategy `{args.strategy}` picks batches of {args.step} up to {max(hitl[0])} labels, each round trains the same CNN
with the same recipe and semi-supervised training on the rest of the pool ({semi}).
{'**Quick mode**: one seed, a smaller pool, hitl only up to ' + str(args.hitl_budget) + ' labels and the baseline at fewer budgets; the full run is 3 seeds, 100 -> 2,000 labels.' if args.quick else ''}

Labels hitl needs to reach the baseline's {top}-label accuracy ({target:.4f}): {reach}.

| labels | baseline | hitl | hitl - baseline |
| ---: | ---: | ---: | ---: |
{chr(10).join(rows)}

hitl below the baseline at: {', '.join(map(str, below)) or 'no budget'} (of {len(common)} budgets after the seed labels, {'mean over seeds' if spread else 'one seed'}).
Extra compute: a hitl round's training takes **{ratio:.1f}x** the baseline's at the same labels ({clock} of training summed
over the budgets both arms trained; per budget {', '.join(f'{n}: {r:.1f}x' for n, r in per_budget.items())}); selection and test
passes are not counted. Pseudo-labeled pool images per round: {min(pseudo)} to {max(pseudo)} (never stored as labels).

![accuracy vs labels](label_efficiency{suffix}.png)
"""


def budgets_for(args: argparse.Namespace, top: int) -> tuple[list[int], int]:
    """The baseline's budgets and hitl's last budget."""
    steps = list(range(args.seed_labels, top + 1, args.step))
    if not args.quick:
        return steps, top
    shown = [n for n in steps if n <= args.hitl_budget] + [n for n in (1000, top) if args.hitl_budget < n <= top]
    return sorted(set(shown)), args.hitl_budget


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="1 seed, a 5,000-image pool, hitl up to --hitl-budget, the baseline at fewer budgets")
    parser.add_argument("--data", default="fashion-mnist", help="'fashion-mnist' or an ImageFolder directory")
    parser.add_argument("--channels", type=int, default=1, choices=[1, 3], help="for --data folders")
    parser.add_argument("--size", type=int, default=28, help="image side for --data folders")
    parser.add_argument("--strategy", default=DEFAULT_STRATEGY, choices=list(STRATEGY_INPUTS),
                        help="hitl's query strategy (default: a new project's)")
    parser.add_argument("--semi", default=None, choices=["off", "pseudo_label", "fixmatch"],
                        help="hitl's semi-supervised method (default: a new project's)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--seed-labels", type=int, default=100)
    parser.add_argument("--step", type=int, default=100)
    parser.add_argument("--budget", type=int, default=2000, help="the baseline's largest budget: the target")
    parser.add_argument("--hitl-budget", type=int, default=500, help="hitl's last budget in --quick mode")
    parser.add_argument("--pool", type=int, default=10_000)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--results", type=Path, default=None, help="JSON to resume from and write to")
    parser.add_argument("--no-write", action="store_true", help="leave docs/ alone")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.seeds, args.pool = 1, min(args.pool, 5000)
    if STRATEGY_INPUTS[args.strategy] - {"probs"}:
        raise SystemExit(f"--strategy {args.strategy} needs more than the model's probabilities; "
                         "this benchmark runs probability-based strategies")
    options = hitl_options(args)
    data = load_data(args)
    baseline_budgets, hitl_budget = budgets_for(args, args.budget)
    suffix = ("_quick" if args.quick else "") + (f"_{args.semi}" if args.semi else "")
    results_path = args.results or (DOCS / f"label_efficiency{suffix}.json")
    results: dict = json.loads(results_path.read_text()) if results_path.exists() else {}
    config = {"data": data.name, "pool": args.pool, "seed_labels": args.seed_labels, "step": args.step,
              "baseline_budgets": baseline_budgets, "hitl_budget": hitl_budget, "strategy": args.strategy,
              "options": options, "device": args.device}
    if results.get("_config", config) != config:  # resuming another run's results would mix them
        raise SystemExit(f"{results_path} holds a run with other settings ({results['_config']}); pass --results elsewhere")
    results["_config"] = config
    started = time.monotonic() - results.get("_seconds", 0.0)
    for seed in range(args.seeds):
        for arm in ("baseline", "hitl"):
            if str(seed) in results.get(arm, {}):
                continue  # resumed
            points = (run_baseline(data, seed, baseline_budgets, args) if arm == "baseline"
                      else run_hitl(data, seed, hitl_budget, args, options))
            results.setdefault(arm, {})[str(seed)] = points
            results["_seconds"] = time.monotonic() - started
            results["_measured"] = time.strftime("%Y-%m-%d")
            results_path.parent.mkdir(exist_ok=True)
            results_path.write_text(json.dumps(results, indent=1))
    plot_path = None if args.no_write else DOCS / f"label_efficiency{suffix}.png"
    section = report(results, args, data, options, plot_path, suffix)
    print(section)
    if not args.no_write:
        write_section("label-efficiency" + suffix.replace("_", "-"), section)


if __name__ == "__main__":
    main()
