"""The label-efficiency benchmark's arithmetic: budgets, labels to reach, the compute ratio."""

from __future__ import annotations

import argparse

import numpy as np
import torch

from benchmarks.label_efficiency import budgets_for, compute_ratio, hitl_options, report
from benchmarks.sample_efficiency import Data
from workers.ml.architectures import InputSpec
from workers.ml.training import TrainConfig


def _args(**changes) -> argparse.Namespace:
    base = {"quick": False, "seed_labels": 100, "step": 100, "hitl_budget": 300, "semi": None, "strategy": "margin",
            "pool": 1000, "device": "cpu"}
    return argparse.Namespace(**{**base, **changes})


def test_quick_budgets_keep_the_target_and_hitl_stops_early() -> None:
    assert budgets_for(_args(), 500) == ([100, 200, 300, 400, 500], 500)
    assert budgets_for(_args(quick=True), 2000) == ([100, 200, 300, 1000, 2000], 300)
    assert budgets_for(_args(quick=True), 400) == ([100, 200, 300, 400], 300)


def test_the_default_options_are_train_configs_and_semi_overrides_the_method() -> None:
    assert hitl_options(_args())["semi_supervised"] == TrainConfig().semi_supervised
    assert hitl_options(_args(semi="fixmatch"))["semi_supervised"] == "fixmatch"


def _point(accuracy: float, seconds: float) -> dict:
    return {"accuracy": accuracy, "train_seconds": seconds, "pseudo_labeled": 7}


RESULTS = {
    "_measured": "2026-11-30", "_seconds": 60.0,
    "baseline": {"0": {"100": _point(0.70, 1), "200": _point(0.75, 2), "300": _point(0.80, 3)},
                 "1": {"100": _point(0.72, 1), "200": _point(0.77, 2), "300": _point(0.82, 3)}},
    "hitl": {"0": {"100": _point(0.70, 2), "200": _point(0.81, 4)},
             "1": {"100": _point(0.72, 2), "200": _point(0.79, 6), "300": _point(0.85, 9)}},
}


def test_the_compute_ratio_sums_training_time_over_budgets_both_arms_trained() -> None:
    total, per_budget, clock = compute_ratio(RESULTS)
    assert total == (2 + 4 + 2 + 6 + 9) / (1 + 2 + 1 + 2 + 3) and clock == "wall-clock time"
    assert per_budget == {100: 2.0, 200: 2.5, 300: 3.0}
    with_cpu = {arm: {s: {n: {**p, "train_cpu_seconds": 1.0 if arm == "baseline" else 4.0} for n, p in pts.items()}
                      for s, pts in RESULTS[arm].items()} for arm in ("baseline", "hitl")}
    assert compute_ratio(with_cpu)[0] == 4.0 and compute_ratio(with_cpu)[2] == "process CPU time"


def test_the_report_gives_labels_to_reach_per_seed_and_flags_budgets_below_the_baseline() -> None:
    data = Data("toy", torch.zeros(1, 1, 2, 2, dtype=torch.uint8), np.zeros(1), torch.zeros(1, 1, 2, 2, dtype=torch.uint8),
                np.zeros(1), ["a"], InputSpec(1, 2, (0.5,), (0.5,)))
    text = report(RESULTS, _args(), data, hitl_options(_args()), None, "")
    # the baseline's 300-label mean is 0.81; seed 0 reaches it at 200 (0.81), seed 1 at 300 (0.79 < 0.81)
    assert "**250 labels (0.83x)**, std 50, per seed 200, 300" in text
    assert "| 200 | 0.7600 ± 0.0100 | 0.8000 ± 0.0100 | +0.0400 |" in text
    assert "hitl below the baseline at: no budget" in text
    assert "**2.6x**" in text  # (2 + 4 + 2 + 6 + 9) / (1 + 2 + 1 + 2 + 3)
