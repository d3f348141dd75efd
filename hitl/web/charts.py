"""What the pages' charts draw, as plain JSON-ready data (handed to templates through
``json_script``; static/hitl/charts.js turns each into a Chart.js chart). Pure functions over
what snapshots, models and cycles stored: no query, no decision."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from hitl.models import CycleStatus, EvaluationSnapshot, MonitorWindow, RetrainingCycle
from hitl.selectors import AccuracyPoint

ACTIVE_STATUSES = (CycleStatus.PENDING, CycleStatus.TRAINING, CycleStatus.EVALUATING)


def confusion_heatmap(metrics: dict[str, Any]) -> dict[str, Any]:
    """Cells of the confusion matrix (rows: human label, columns: model), each with its count
    and its share of the row (the colour: a row's share is the class's recall on the diagonal)."""
    labels, matrix = metrics["labels"], metrics["confusion_matrix"]
    cells = []
    for truth, row in zip(labels, matrix, strict=True):
        total = sum(row)
        for predicted, count in zip(labels, row, strict=True):
            cells.append({"x": predicted, "y": truth, "v": count, "share": count / total if total else 0.0})
    return {"labels": labels, "cells": cells}


def recall_intervals(snapshot: EvaluationSnapshot) -> dict[str, Any]:
    """Per-class recall with its bootstrap interval (None where the class had no item)."""
    labels = snapshot.metrics["labels"]
    per_class = snapshot.metrics["per_class"]
    found = snapshot.intervals.get("per_class_recall") or {}
    intervals = [[found[label]["lower"], found[label]["upper"]] if found.get(label) else None for label in labels]
    return {"labels": labels, "recall": [per_class[label]["recall"] for label in labels],
            "support": [per_class[label]["support"] for label in labels], "intervals": intervals,
            "confidence": snapshot.intervals.get("confidence")}


def _bins(bins: Sequence[dict[str, float]]) -> list[dict[str, float]]:
    return [{"x": b["confidence"], "y": b["accuracy"], "count": b["count"]} for b in bins]


def reliability(calibration: dict[str, Any], golden: EvaluationSnapshot | None) -> dict[str, Any] | None:
    """Reliability bins (mean confidence against accuracy) on the labels the temperature was
    fitted on, before and after it, and on the golden set with it applied; None with none."""
    series = {}
    if calibration.get("fitted"):
        series["before"] = _bins(calibration.get("reliability_before", []))
        series["after"] = _bins(calibration.get("reliability_after", []))
    if golden is not None and golden.metrics.get("reliability"):
        series["golden"] = _bins(golden.metrics["reliability"])
    if not series:
        return None
    return {**series, "temperature": calibration.get("temperature"),
            "ece_before": calibration.get("ece_before"), "ece_after": calibration.get("ece_after")}


def candidate_deltas(candidate: EvaluationSnapshot, production: EvaluationSnapshot) -> dict[str, Any]:
    """Candidate minus production on the same golden items: accuracy, macro-F1 and each class's
    recall, with the paired bootstrap interval of the accuracy difference and McNemar's p."""
    labels = candidate.metrics["labels"]
    names = ["accuracy", "macro F1", *labels]
    values = [candidate.accuracy - production.accuracy,
              candidate.metrics["macro_f1"] - production.metrics["macro_f1"],
              *(candidate.metrics["per_class"][label]["recall"] - production.metrics["per_class"][label]["recall"]
                for label in labels)]
    paired = candidate.intervals.get("versus_production") or {}
    return {"labels": names, "delta": values, "accuracy_difference": paired.get("accuracy_difference"),
            "mcnemar_p_value": paired.get("mcnemar_p_value"),
            "candidate": candidate.model_version.name, "production": production.model_version.name}


def _seconds_between(later: str, earlier: str) -> float:
    return (datetime.fromisoformat(later) - datetime.fromisoformat(earlier)).total_seconds()


def seconds_per_epoch(cycle: RetrainingCycle) -> float | None:
    """How long an epoch of the running attempt takes: the mean gap between its recorded epochs,
    or, after its first epoch, the time since the attempt started (loading included)."""
    progress = cycle.progress
    attempt = progress.get("attempt")
    mine = [row for row in progress.get("history", []) if row.get("attempt") == attempt]
    if len(mine) >= 2:
        return _seconds_between(mine[-1]["at"], mine[0]["at"]) / (len(mine) - 1)
    if len(mine) == 1 and cycle.started_at is not None:
        return max(0.0, _seconds_between(mine[0]["at"], cycle.started_at.isoformat()))
    return None


def cycle_progress(cycle: RetrainingCycle) -> dict[str, Any]:
    """The cycle's state for the page's live view: stage, epoch, loss, the loss curve, and the
    estimated seconds left in training (None when unknown or not training)."""
    progress = cycle.progress
    history = progress.get("history", [])
    last = history[-1] if history else {}  # after training: where it ended
    epoch = progress.get("epoch", last.get("epoch"))
    epochs = progress.get("epochs", cycle.train_config.get("epochs") if history else None)
    eta = None
    per_epoch = seconds_per_epoch(cycle)
    if cycle.status == CycleStatus.TRAINING and per_epoch is not None and epoch and epochs:
        eta = round(per_epoch * (epochs - epoch), 1)
    return {
        "status": cycle.status, "active": cycle.status in ACTIVE_STATUSES, "stage": progress.get("stage", ""),
        "epoch": epoch, "epochs": epochs, "train_loss": progress.get("train_loss", last.get("train_loss")),
        "train_accuracy": progress.get("train_accuracy", last.get("train_accuracy")), "attempt": progress.get("attempt"),
        "eta_seconds": eta, "decision": cycle.decision,
        "history": [{"epoch": r["epoch"], "train_loss": r["train_loss"], "train_accuracy": r["train_accuracy"]}
                    for r in history],
    }


def accuracy_over_time(golden: Sequence[AccuracyPoint], audit: Sequence[AccuracyPoint]) -> dict[str, Any]:
    """Two series for one chart over time (x in epoch milliseconds), each point with its interval."""
    def series(points: Sequence[AccuracyPoint]) -> list[dict[str, Any]]:
        return [{"x": int(p.at.timestamp() * 1000), "y": p.accuracy, "low": p.low, "high": p.high, "n": p.n,
                 "version": p.model_version, "source": p.source} for p in points]
    return {"golden": series(golden), "audit": series(audit)}


def drift_sparkline(windows: Sequence[MonitorWindow]) -> dict[str, Any]:
    """Per deployment, the class-mix and confidence PSI of each judged window (x: the window's
    end in epoch milliseconds)."""
    series: dict[str, list[dict[str, Any]]] = {}
    for w in windows:
        series.setdefault(w.deployment.name, []).append({
            "x": int(w.window_end.timestamp() * 1000), "class_psi": w.metrics["class_psi"],
            "confidence_psi": w.metrics["confidence_psi"], "n": w.n_predictions})
    return {"deployments": [{"name": name, "points": points} for name, points in series.items()]}
