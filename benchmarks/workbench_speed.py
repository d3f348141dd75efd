"""The workbench's server time at scale: 1,000,000 predictions and 100,000 labels in PostgreSQL.

1. **Label and next item**: a reviewer answers the item in front of them (the review page's
   ``answer`` call) and takes the next one (its ``lease`` call), as the keyboard-first page does
   after each key; the figure is the server time of that pair. Target: p95 under 50 ms.
2. **Pages**: every page of the web UI for a project of that size (projects, dashboard, review,
   item, conflicts, reviewers, models, cycles, cycle, trust, alerts). Target: each under 300 ms
   server time (p95).

Server time is measured in-process with Django's test client: the whole Django stack (middleware,
sessions, access checks, queries, templates) against the real database, without the network or an
HTTP server in front. The data is written with SQL (``benchmarks.selection.fill``) and vacuumed
(as autovacuum does after a bulk load, so counts can use index-only scans), then the open review
batch is selected through hitl's own selection service.

    python -m benchmarks.workbench_speed [--predictions 1000000] [--labels 100000] [--answers 300]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from benchmarks.common import (
    django_in_process,
    machine,
    untrained_production_version,
    write_section,
)
from benchmarks.selection import fill

DB_NAME = "hitl_bench_workbench"
REVIEWERS = ("reviewer-a", "reviewer-b")


def label_many(project_id: int, count: int) -> None:
    """``count`` current human labels on train items, written with SQL as the review page records
    them: by eight reviewers over the last 30 days, each against the item's prediction (the
    model's label kept on the label), with a time spent on it; and one item in ten answered blind
    by two reviewers first (a done review task with two answers, one in three of them disagreeing),
    as a project with double labeling switched on has them."""
    from django.db import connection

    from hitl.models import ReviewBatch, ReviewBatchStatus

    batch = ReviewBatch.objects.create(project_id=project_id, strategy="entropy", size=count // 10, audit_fraction=0,
                                       seed=0, status=ReviewBatchStatus.SELECTED)
    with connection.cursor() as cursor:
        cursor.execute(
            """INSERT INTO hitl_label (item_id, project_id, value, status, reviewer_name, source, external_id, created_at,
                                       prediction_id, model_value, lead_time_seconds)
               SELECT i.id, i.project_id, 'c' || (i.id %% 10), 'current', 'reviewer-' || (i.id %% 8), 'web', '',
                      now() - (i.id %% 720) * interval '1 hour', p.id, p.predicted_label, 1 + (i.id * 7919 %% 600) / 10.0
               FROM hitl_item i JOIN hitl_prediction p ON p.item_id = i.id
               WHERE i.project_id = %s AND i.split = 'train' ORDER BY i.id LIMIT %s""",
            [project_id, count])
        cursor.execute(
            """INSERT INTO hitl_reviewtask (batch_id, item_id, prediction_id, reason, strategy, rank, status, created_at,
                                          completed_at)
               SELECT %s, item_id, prediction_id, 'strategy', 'entropy', row_number() OVER (ORDER BY id), 'done',
                      created_at, created_at
               FROM hitl_label WHERE project_id = %s AND id %% 10 = 0""", [batch.id, project_id])
        cursor.execute(
            """INSERT INTO hitl_reviewanswer (task_id, reviewer_name, value, lead_time_seconds, created_at)
               SELECT t.id, 'reviewer-' || ((t.item_id + k) %% 8),
                      CASE WHEN k = 1 AND t.id %% 3 = 0 THEN 'c' || ((t.item_id + 1) %% 10) ELSE 'c' || (t.item_id %% 10) END,
                      5.0, t.created_at
               FROM hitl_reviewtask t CROSS JOIN (VALUES (0), (1)) AS answer(k) WHERE t.batch_id = %s""", [batch.id])
    with connection.cursor() as cursor:  # outside a transaction: VACUUM, as autovacuum would after a bulk load
        cursor.execute("VACUUM ANALYZE")


def add_history(project, version, days: int) -> None:
    """``days`` of use before today: hourly monitoring windows of two deployments and of the
    model version, an alert a day (the last ten open), and a retraining cycle's five trust
    events a day (trained, evaluated twice, gate, promoted), written through the trust service."""
    from datetime import timedelta

    from django.utils import timezone

    from hitl.models import Alert, AlertStatus, Environment, MonitorWindow
    from hitl.services.monitoring import window_bounds
    from hitl.services.projects import deployment_create
    from hitl.services.trust import trust_record

    deployments = [deployment_create(project=project, name=f"edge-{i}", environment=Environment.EDGE,
                                     model_version=version)[0] for i in (1, 2)]
    end = window_bounds(now=timezone.now(), minutes=60)[1]
    drift = {"judged": True, "class_psi": 0.02, "confidence_psi": 0.03, "confidence_ks": 0.05, "ks_p_value": 0.4,
             "mean_confidence": 0.81, "reference_mean_confidence": 0.82, "class_counts": [50] * 10,
             "confidence_counts": [25] * 20, "predictions": 500, "reference_predictions": 500}
    quality = {"live_accuracy": {"n": 300, "correct": 255, "accuracy": 0.85, "low": 0.81, "high": 0.88},
               "reviewer_agreement": {"n": 40, "agreed": 33, "rate": 0.825}}
    windows = []
    for hour in range(days * 24):
        start = end - timedelta(hours=hour + 1)
        windows += [MonitorWindow(project=project, deployment=d, model_version=version, window_start=start,
                                  window_end=start + timedelta(hours=1), n_predictions=500, metrics=drift)
                    for d in deployments]
        windows.append(MonitorWindow(project=project, model_version=version, window_start=start,
                                     window_end=start + timedelta(hours=1), n_predictions=1000, metrics=quality))
    windows = MonitorWindow.objects.bulk_create(windows, batch_size=5000)
    daily = [w for w in windows if w.deployment_id == deployments[0].id and w.window_start.hour == 0]
    Alert.objects.bulk_create([Alert(
        project=project, deployment=deployments[0], model_version=version, window=w, window_start=w.window_start,
        window_end=w.window_end, metric="class_psi", value=0.31, threshold=0.25,
        message="edge-1: PSI of the predicted-class mix against the reference 0.310, above 0.25",
        **({} if day < 10 else {"status": AlertStatus.ACKNOWLEDGED, "acknowledged_by_name": "reviewer-a",
                                 "acknowledged_at": w.window_end + timedelta(hours=1)}))
        for day, w in enumerate(daily)])
    for day in range(days):
        name = f"v{day + 2}"
        for kind, payload in (
                ("model_trained", {"model_version": name, "training_labels": 1000 + day, "train_config": {"epochs": 3}}),
                ("model_evaluated", {"model_version": name, "role": "candidate", "eval_set": "golden", "accuracy": 0.86,
                                     "n_items": 500, "accuracy_interval": {"lower": 0.83, "upper": 0.89}}),
                ("model_evaluated", {"model_version": "v1", "role": "production", "eval_set": "golden", "accuracy": 0.85,
                                     "n_items": 500, "accuracy_interval": {"lower": 0.82, "upper": 0.88}}),
                ("gate_evaluated", {"cycle": day + 1, "outcome": "promoted", "rules": [{"rule": "non_inferior", "passed": True}]}),
                ("model_promoted", {"model_version": name, "replaced": "v1", "reason": "gate passed"})):
            trust_record(project_id=project.id, kind=kind, actor=f"cycle {day + 1}", payload=payload)


def time_full_trust_check(project, repeats: int = 5) -> tuple[int, list[float]]:
    """The whole chain verified at once (beat's periodic check, or the trust page's button):
    the events verified, and the time each run took."""
    from hitl.services.trust import trust_verify

    timings, events = [], 0
    for _ in range(repeats):
        started = time.perf_counter()
        events = trust_verify(project_id=project.id).events
        timings.append(time.perf_counter() - started)
    return events, timings


def setup_project(args: argparse.Namespace, work: Path):
    from django.contrib.auth import get_user_model

    from hitl.models import ProjectRole
    from hitl.services.access import membership_set
    from hitl.services.cycles import cycle_request
    from hitl.services.projects import project_create
    from hitl.services.selection import review_batch_request
    from workers.pipelines.selection import review_batch_select

    project = project_create(slug="bench", name="bench", labels=[f"c{i}" for i in range(10)])
    version = untrained_production_version(project, work)
    started = time.perf_counter()
    fill(project.id, version.id, args.predictions)
    label_many(project.id, args.labels)
    add_history(project, version, args.days)
    print(f"filled {args.predictions:,} predictions, {args.labels:,} labels and {args.days} days of history in "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    users = []
    for name in REVIEWERS:
        user = get_user_model().objects.create_user(username=name, password="bench-password-1")
        membership_set(project=project, user=user, role=ProjectRole.ADMIN, actor="bench")
        users.append(user)
    batch = review_batch_request(project=project, requested_by="bench", size=args.answers * 3, strategy="entropy",
                                 audit_fraction=0.1, seed=0)
    review_batch_select(batch_id=batch.id)
    cycle_request(project=project, requested_by="bench")
    return project, users


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def time_label_and_next(client, project, answers: int) -> list[float]:
    """Server time of answer + next lease, ``answers`` times, as the review page calls them."""
    from django.urls import reverse

    lease_url = reverse("web:review-lease", args=[project.slug])
    tasks = client.post(lease_url).json()["tasks"]
    timings = []
    for i in range(answers):
        if not tasks:
            raise SystemExit(f"the queue ran dry after {i} answers")
        task = tasks[0]
        started = time.perf_counter()
        answered = client.post(reverse("web:review-task-answer", args=[task["id"]]),
                               data={"value": project.labels[i % len(project.labels)]},
                               content_type="application/json")
        leased = client.post(lease_url)
        timings.append(time.perf_counter() - started)
        if answered.status_code != 200 or leased.status_code != 200:
            raise SystemExit(f"answer {answered.status_code}, lease {leased.status_code}: {answered.content[:300]!r}")
        tasks = leased.json()["tasks"]
    return timings


def pages(project) -> dict[str, str]:
    """Every page of the web UI for the project, by name."""
    from django.urls import NoReverseMatch, reverse

    from hitl.models import Item, Label, RetrainingCycle

    item = Label.objects.filter(item__project=project).values_list("item_id", flat=True).first() or \
        Item.objects.filter(project=project).values_list("id", flat=True).first()
    cycle = RetrainingCycle.objects.filter(project=project).values_list("id", flat=True).first()
    wanted = {
        "projects": ("web:projects", []), "dashboard": ("web:dashboard", [project.slug]),
        "review page": ("web:review", [project.slug]), "review grid (old)": ("web:review-queue", [project.slug]),
        "item": ("web:item", [item]), "conflicts": ("web:conflicts", [project.slug]),
        "reviewers": ("web:reviewers", [project.slug]), "models": ("web:models", [project.slug]),
        "cycles": ("web:cycles", [project.slug]), "cycle": ("web:cycle", [cycle]),
        "trust": ("web:trust", [project.slug]), "alerts": ("web:alerts", [project.slug]),
    }
    found = {}
    for label, (name, args) in wanted.items():
        try:
            found[label] = reverse(name, args=args)
        except NoReverseMatch:
            print(f"no page {name} in this version of hitl: not measured")
    return found


def time_pages(client, urls: dict[str, str], repeats: int) -> dict[str, list[float]]:
    timings: dict[str, list[float]] = {}
    for label, url in urls.items():
        client.get(url)  # warm: template compilation, first queries
        runs = []
        for _ in range(repeats):
            started = time.perf_counter()
            response = client.get(url)
            runs.append(time.perf_counter() - started)
            if response.status_code != 200:
                raise SystemExit(f"{url}: {response.status_code}")
        timings[label] = runs
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--predictions", type=int, default=1_000_000)
    parser.add_argument("--labels", type=int, default=100_000)
    parser.add_argument("--answers", type=int, default=300, help="label + next-item pairs timed")
    parser.add_argument("--repeats", type=int, default=20, help="timed loads of each page")
    parser.add_argument("--days", type=int, default=365, help="days of monitoring windows, alerts and cycles before")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    with django_in_process(DB_NAME, "workbench") as (work, _):
        from django.test import Client
        from django.test.utils import setup_test_environment

        setup_test_environment()  # the test client's hooks; the database stays the scratch one
        project, users = setup_project(args, work)
        from hitl.wsgi import freeze_startup_objects

        freeze_startup_objects()  # as the web process does once loaded (the filling's garbage is gone first)
        client = Client()
        client.force_login(users[0])
        label_next = time_label_and_next(client, project, args.answers)
        page_times = time_pages(client, pages(project), args.repeats)
        full_check = time_full_trust_check(project)
    report(args, label_next, page_times, full_check)


def report(args: argparse.Namespace, label_next: list[float], page_times: dict[str, list[float]],
           full_check: tuple[int, list[float]]) -> None:
    def ms(value: float) -> str:
        return f"{value * 1000:.1f} ms"

    rows = [f"| {label} | {ms(statistics.median(t))} | {ms(percentile(t, 0.95))} | "
            f"{'yes' if percentile(t, 0.95) < 0.300 else '**no**'} |" for label, t in page_times.items()]
    p95 = percentile(label_next, 0.95)
    body = f"""## Workbench server time at scale

`python -m benchmarks.workbench_speed --predictions {args.predictions} --labels {args.labels} --answers {args.answers} --days {args.days}`,
measured {time.strftime('%Y-%m-%d')} on {machine()}, PostgreSQL on the same machine (shared with other jobs).
{args.predictions:,} predictions and {args.labels:,} current labels in one project (eight reviewers over 30 days,
each with a time spent; one item in ten answered blind by two reviewers first); an open batch of
{args.answers * 3:,} review tasks selected by entropy with a 10% audit slice; and {args.days} days of history
before it: hourly monitoring windows of two deployments and the model version, an alert a day, and one
retraining cycle's five trust events a day ({args.days * 5:,} events). Server time in-process (Django's
test client: middleware, session, access checks, queries, templates; no network, no HTTP server).
The trust page checks the events written since the last full verification of the chain (beat runs
one every hour; the page's button runs one at once): **a full verification of the {full_check[0]:,}
events takes {ms(statistics.median(full_check[1]))}** (median of {len(full_check[1])}), and used to run on every view.

| what | median | p95 | target |
| --- | ---: | ---: | --- |
| label an item and get the next (answer + lease, {len(label_next)} times) | {ms(statistics.median(label_next))} | **{ms(p95)}** | under 50 ms: {'yes' if p95 < 0.050 else '**no**'} |

| page ({args.repeats} loads each) | median | p95 | under 300 ms |
| --- | ---: | ---: | --- |
{chr(10).join(rows)}
"""
    print(body)
    if not args.no_write:
        write_section("workbench-speed", body)


if __name__ == "__main__":
    main()
