"""How often the promotion gate gets it wrong: the old rule against the statistical gate.

On Fashion-MNIST, each "world" trains a production model on 1,000 random labels, then
fine-tunes candidates from it as a retraining cycle does:
- *better*: on 3,000 more clean labels;
- *equal*: on the same 1,000 labels again, with another seed;
- *worse*: on the 1,000 labels and 3,000 more, a share of all of them flipped to a wrong class.
Whether a candidate is truly better or worse is read off Fashion-MNIST's official 10,000 test
images (paired, so a difference of half a point is real): better means at least 2 points better,
worse means at least half a point worse. Each candidate then meets several simulated cycles, each
drawing its evaluation sets from 10,000 training images no model saw:
- the **old rule**: candidate accuracy >= production's on a held-out set of human labels picked
  *for being uncertain* (production's smallest margins), as hitl decided before;
- the **new gate** (`workers.ml.gate`, default rules): non-inferiority of the paired bootstrap
  interval of the accuracy difference on a *random* golden set of the same size.

    python benchmarks/promotion_gate.py             # 4 worlds, golden sets of 200, 500, 1,000
    python benchmarks/promotion_gate.py --quick     # 2 worlds, 1 candidate of each kind, 8 draws

Writes docs/promotion_gate.json and a section of docs/benchmarks.md. Needs torch and numpy only.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import machine, write_section  # noqa: E402
from workers.ml.architectures import InputSpec, SmallCNN  # noqa: E402
from workers.ml.datasets import load_fashion_mnist  # noqa: E402
from workers.ml.gate import PROMOTED, GateRules, evaluate_gate, gate_evidence  # noqa: E402
from workers.ml.inference import predict_proba  # noqa: E402
from workers.ml.training import TrainConfig, fit  # noqa: E402

DOCS = Path(__file__).resolve().parent.parent / "docs"
SPEC = InputSpec(1, 28, (0.5,), (0.5,))
EVAL_POOL = 10_000
BETTER, EQUAL, WORSE = "better", "equal", "worse"


def train(model: SmallCNN, images: torch.Tensor, targets: np.ndarray, *, epochs: int, seed: int) -> SmallCNN:
    config = TrainConfig(epochs=epochs, batch_size=64, learning_rate=1e-3, weight_decay=1e-4, seed=seed, device="cpu")
    fit(model, images, torch.from_numpy(targets), SPEC, config)
    return model


def flipped(targets: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    out = targets.copy()
    flip = rng.random(len(out)) < share
    out[flip] = (out[flip] + rng.integers(1, 10, flip.sum())) % 10
    return out


def world(index: int, args: argparse.Namespace, train_set, test_set) -> list[dict]:
    """A production model and its candidates, with probabilities on the eval pool and test set."""
    rng = np.random.default_rng(1000 + index)
    order = rng.permutation(len(train_set.targets))
    eval_rows, pool = order[:EVAL_POOL], order[EVAL_POOL:]
    images = torch.from_numpy(train_set.images[:, None].copy())
    base_rows, more_rows = pool[:1000], pool[1000:4000]
    torch.manual_seed(index)
    production = train(SmallCNN(10), images[base_rows], train_set.targets[base_rows], epochs=15, seed=index)
    test_images = torch.from_numpy(test_set.images[:, None].copy())

    def outputs(model: SmallCNN) -> dict:
        return {"eval": predict_proba(model, images[eval_rows], SPEC),
                "test": predict_proba(model, test_images, SPEC)}

    models = [{"kind": "production", **outputs(production)}]
    both = np.concatenate([base_rows, more_rows])
    for variant in range(args.variants):
        seed = 100 * index + variant
        plans = {
            BETTER: (both, train_set.targets[both]),
            EQUAL: (base_rows, train_set.targets[base_rows]),
            WORSE: (both, flipped(train_set.targets[both], args.flip_share, rng)),
        }
        for intent, (rows, targets) in plans.items():
            candidate = train(copy.deepcopy(production), images[rows], targets, epochs=args.finetune_epochs, seed=seed)
            models.append({"kind": intent, **outputs(candidate)})
            print(f"  world {index} {intent:<6} variant {variant}: test accuracy "
                  f"{(models[-1]['test'].argmax(1) == test_set.targets).mean():.4f} "
                  f"(production {(models[0]['test'].argmax(1) == test_set.targets).mean():.4f})", flush=True)
    for model in models:
        model["eval_targets"] = train_set.targets[eval_rows]
    return models


def truth(candidate: dict, production: dict, test_targets: np.ndarray) -> tuple[str, float]:
    difference = float((candidate["test"].argmax(1) == test_targets).mean()
                       - (production["test"].argmax(1) == test_targets).mean())
    if difference >= 0.02:
        return BETTER, difference
    if difference <= -0.005:
        return WORSE, difference
    return EQUAL, difference


def cycles(models: list[dict], test_targets: np.ndarray, size: int, draws: int, seed: int, rules: GateRules) -> list[dict]:
    production = models[0]
    targets = production["eval_targets"]
    prod_probs = production["eval"]
    top2 = np.sort(prod_probs, axis=1)[:, -2:]
    uncertainty_rank = np.argsort(np.argsort(top2[:, 1] - top2[:, 0]))  # 0: production's smallest margin
    rng = np.random.default_rng(seed)
    rows = []
    for candidate in models[1:]:
        actual, difference = truth(candidate, production, test_targets)
        for _ in range(draws):
            # the old rule: held-out labels picked for being uncertain, from a random half of the pool
            half = np.sort(rng.permutation(len(targets))[: len(targets) // 2])
            heldout = half[np.argsort(uncertainty_rank[half])[:size]]
            old_promotes = bool((candidate["eval"][heldout].argmax(1) == targets[heldout]).mean()
                                >= (prod_probs[heldout].argmax(1) == targets[heldout]).mean())
            golden = rng.choice(len(targets), size=size, replace=False)
            evidence = gate_evidence(targets[golden], candidate["eval"][golden], prod_probs[golden],
                                     [str(i) for i in range(10)], rules=rules)
            verdict = evaluate_gate(rules, evidence)
            rows.append({"intent": candidate["kind"], "truth": actual, "test_difference": difference,
                         "old_promotes": old_promotes, "new_promotes": verdict.outcome == PROMOTED,
                         "golden_difference": evidence.accuracy_difference})
    return rows


def rates(rows: list[dict]) -> dict:
    def share(subset: list[dict], key: str) -> tuple[int, int]:
        return sum(r[key] for r in subset), len(subset)

    worse = [r for r in rows if r["truth"] == WORSE]
    better = [r for r in rows if r["truth"] == BETTER]
    equal = [r for r in rows if r["truth"] == EQUAL]
    old_w, new_w = share(worse, "old_promotes"), share(worse, "new_promotes")
    old_b, new_b = share(better, "old_promotes"), share(better, "new_promotes")
    old_e, new_e = share(equal, "old_promotes"), share(equal, "new_promotes")
    return {
        "cycles": len(rows), "truly_worse": len(worse), "truly_better": len(better), "truly_equal": len(equal),
        "old_promotes_worse": old_w[0], "new_promotes_worse": new_w[0],
        "old_rejects_better": old_b[1] - old_b[0], "new_rejects_better": new_b[1] - new_b[0],
        "old_promotes_equal": old_e[0], "new_promotes_equal": new_e[0],
    }


def pct(count: int, total: int) -> str:
    return f"{count}/{total} ({count / total:.0%})" if total else "none"


def report(results: dict, args: argparse.Namespace, seconds: float) -> str:
    rules = results["rules"]
    lines = ["| golden / held-out size | cycles | truly worse: old rule promotes | new gate promotes | "
             "truly better: old rule rejects | new gate rejects | truly equal: old promotes | new promotes |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for size, r in results["by_size"].items():
        lines.append(
            f"| {size} | {r['cycles']} | {pct(r['old_promotes_worse'], r['truly_worse'])} | "
            f"{pct(r['new_promotes_worse'], r['truly_worse'])} | {pct(r['old_rejects_better'], r['truly_better'])} | "
            f"{pct(r['new_rejects_better'], r['truly_better'])} | {pct(r['old_promotes_equal'], r['truly_equal'])} | "
            f"{pct(r['new_promotes_equal'], r['truly_equal'])} |")
    spread = results["test_differences"]
    return f"""
## The promotion gate's own quality ({'quick' if args.quick else 'full'} run)

`python benchmarks/promotion_gate.py{' --quick' if args.quick else ''}`, measured {time.strftime('%Y-%m-%d')} on
{machine()}, torch {torch.__version__}; {seconds / 60:.0f} minutes. {args.worlds} worlds (a production small CNN on 1,000
random Fashion-MNIST labels each), {args.variants} candidate(s) of each kind per world fine-tuned from it
({args.finetune_epochs} epochs): better (3,000 more clean labels), equal (the same labels, another seed), worse (3,000
more, {args.flip_share:.0%} of all 4,000 flipped). Truth from the official 10,000 test images: truly better is
at least 2 points better, truly worse at least 0.5 points worse (test-accuracy differences ranged
{spread['min']:+.3f} to {spread['max']:+.3f}). Each candidate meets {args.draws} simulated cycles per size, each with
freshly drawn evaluation sets from 10,000 images no model trained on. Old rule: candidate accuracy >=
production's on held-out labels picked by production's smallest margin. New gate: `GateRules()` defaults
(non-inferiority margin {rules['non_inferiority_margin']}, {rules['n_resamples']} paired bootstrap resamples,
{rules['confidence']:.0%} interval) on a random golden set of the same size.
Targets: the new gate promotes a truly worse model in at most 5% of cycles and rejects a truly better one in at most 20%.

{chr(10).join(lines)}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worlds", type=int, default=4)
    parser.add_argument("--variants", type=int, default=2, help="candidates of each kind per world")
    parser.add_argument("--draws", type=int, default=5, help="cycles per candidate and size")
    parser.add_argument("--sizes", default="200,500,1000")
    parser.add_argument("--finetune-epochs", type=int, default=5)
    parser.add_argument("--flip-share", type=float, default=0.6)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.worlds, args.variants, args.draws = 2, 1, 8
    torch.set_num_threads(max(1, torch.get_num_threads()))
    started = time.monotonic()
    train_set, test_set = load_fashion_mnist("train"), load_fashion_mnist("test")
    rules = GateRules(min_golden_size=100)
    worlds = [world(i, args, train_set, test_set) for i in range(args.worlds)]
    sizes = [int(s) for s in args.sizes.split(",")]
    by_size, differences = {}, []
    for size in sizes:
        rows = [row for i, models in enumerate(worlds)
                for row in cycles(models, test_set.targets, size, args.draws, seed=10 * i + size, rules=rules)]
        by_size[str(size)] = rates(rows)
        differences = [r["test_difference"] for r in rows]
        print(f"size {size}: {by_size[str(size)]}", flush=True)
    results = {"rules": {"non_inferiority_margin": rules.non_inferiority_margin, "n_resamples": rules.n_resamples,
                         "confidence": rules.confidence},
               "by_size": by_size, "test_differences": {"min": min(differences), "max": max(differences)}}
    section = report(results, args, time.monotonic() - started)
    print(section)
    if not args.no_write:
        (DOCS / f"promotion_gate{'_quick' if args.quick else ''}.json").write_text(json.dumps(results, indent=1))
        write_section("promotion-gate" + ("-quick" if args.quick else ""), section)


if __name__ == "__main__":
    main()
