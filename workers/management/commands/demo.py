"""The whole hitl loop on real Fashion-MNIST, on the embedded default (SQLite, no Label Studio).

A deployment streams predictions through the ingestion service, uncertainty picks review
batches, a simulated reviewer labels them through the label service with the dataset's ground
truth, and retraining cycles run as Celery tasks in a real worker process.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from PIL import Image
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from hitl import selectors
from hitl.media import media_path
from hitl.models import (
    CycleStatus,
    Deployment,
    Environment,
    Item,
    LabelSource,
    Project,
    ProjectRole,
    RetrainingCycle,
    ReviewBatch,
    ReviewBatchStatus,
    ReviewTask,
    ReviewTaskStatus,
    Split,
)
from hitl.selectors import production_version
from hitl.services.access import membership_set
from hitl.services.agreement import review_answer_submit, review_task_needs_two
from hitl.services.cycles import cycle_request
from hitl.services.golden import golden_set_freeze, golden_set_propose
from hitl.services.ingestion import items_register, predictions_ingest
from hitl.services.labels import label_submit
from hitl.services.projects import deployment_create, project_create, project_update
from hitl.services.selection import review_batch_request
from workers.celery import app as celery_app
from workers.celery import configure_queues, delete_queues, use_embedded_broker
from workers.ml.datasets import ArrayDataset, load_fashion_mnist
from workers.ml.inference import predict_proba
from workers.pipelines.versions import load_version

PROJECT_SLUG = "fashion-mnist-demo"
DEMO_MARGIN = 0.1  # the demo's golden set is small (150 items): its difference intervals are wide
REVIEWER = "simulated reviewer (Fashion-MNIST ground truth)"
DEMO_USER, DEMO_PASSWORD = "demo", "demo"
STREAM_CHUNK = 500
DECIDED = {CycleStatus.SUCCEEDED, CycleStatus.AWAITING_APPROVAL, CycleStatus.FAILED, CycleStatus.CANCELLED}


class Demo:
    def __init__(self, command: BaseCommand, options: dict[str, Any]) -> None:
        self.command = command
        self.options = options
        self.out = command.stdout
        self.rng = np.random.default_rng(options["seed"])
        self.worker: subprocess.Popen | None = None
        self.truth: dict[str, int] = {}  # image sha256 (the item's) -> dataset class index
        self.printed: dict[str, int] = {}  # progress label -> last quarter printed (logs)

    # --- plumbing -----------------------------------------------------------------------------

    def say(self, message: str = "") -> None:
        self.out.write(message)
        self.out.flush()

    def progress(self, label: str, done: int, total: int, extra: str = "") -> None:
        """A live bar on a terminal; in a log, a line at each quarter so long steps still show."""
        width = 28
        filled = int(width * done / max(total, 1))
        line = f"  {label:<34} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} {extra}"
        if self.out.isatty():
            self.out.write("\r" + line.ljust(100), ending="")
            if done >= total:
                self.out.write("")
        else:
            quarter = 4 * done // max(total, 1)
            if quarter > self.printed.get(label, -1):
                self.printed[label] = quarter
                self.out.write(line)
        self.out.flush()

    def choose_broker(self) -> dict[str, str]:
        """Redis if it answers, else kombu's filesystem transport: Celery either way."""
        prefix = f"hitl-demo-{os.getpid()}"
        configure_queues(prefix)
        env = {"HITL_QUEUE_PREFIX": prefix}
        url = settings.CELERY_BROKER_URL
        if url.startswith("redis://") and self.redis_answers(url):
            self.say(f"Celery broker: Redis at {url} (queues {prefix}.cpu / {prefix}.gpu)")
            env["CELERY_BROKER_URL"] = url
            return env
        folder = Path(settings.DATA_DIR) / "broker"
        shutil.rmtree(folder, ignore_errors=True)
        use_embedded_broker(folder)
        self.say(f"Celery broker: Redis at {url} did not answer, so tasks go through Celery's embedded "
                 f"filesystem broker in {folder} (still a real worker process)")
        env["CELERY_BROKER_URL"] = "filesystem://"
        os.environ["CELERY_BROKER_URL"] = "filesystem://"  # Celery reads this variable before its config
        return env

    @staticmethod
    def redis_answers(url: str) -> bool:
        parsed = urlparse(url)
        try:
            with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 6379), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def start_worker(self, env: dict[str, str]) -> None:
        log_path = Path(settings.DATA_DIR) / "demo-worker.log"
        prefix = env["HITL_QUEUE_PREFIX"]
        self.worker_log = log_path
        with open(log_path, "w") as log:  # the worker writes to its own copy of the descriptor
            self.worker = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "workers", "worker", "--pool", "solo", "--loglevel", "INFO",
                 "--without-mingle", "--without-gossip", "--without-heartbeat", "-Q", f"{prefix}.cpu,{prefix}.gpu",
                 "--hostname", f"demo-{os.getpid()}@%h"],
                env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, cwd=settings.BASE_DIR,
            )
        self.say(f"Started a Celery worker process (pid {self.worker.pid}, log {log_path})")

    def stop_worker(self) -> None:
        if self.worker and self.worker.poll() is None:
            self.worker.terminate()
            try:
                self.worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.worker.kill()

    def wait_for(self, what: str, done: Callable[[], bool], tick: Callable[[], None] | None = None,
                 timeout: float = 900) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if self.worker is not None and self.worker.poll() is not None:
                tail = self.worker_log.read_text()[-3000:]
                raise CommandError(f"the Celery worker exited while waiting for {what}:\n{tail}")
            if time.monotonic() > deadline:
                raise CommandError(f"timed out after {timeout:.0f}s waiting for {what}; see {self.worker_log}")
            if tick:
                tick()
            time.sleep(0.25)

    # --- data -----------------------------------------------------------------------------------

    def reset_project(self) -> Project:
        Deployment.objects.filter(project__slug=PROJECT_SLUG).delete()  # they protect their model versions
        Project.objects.filter(slug=PROJECT_SLUG).delete()
        for folder in (Path(settings.STORAGE_ROOT) / PROJECT_SLUG, media_path(f"models/{PROJECT_SLUG}")):
            shutil.rmtree(folder, ignore_errors=True)
        project = project_create(
            slug=PROJECT_SLUG, name="Fashion-MNIST demo", labels=load_fashion_mnist("test").labels,
            architecture="small_cnn", selection_strategy=self.options["strategy"],
            batch_size=self.options["batch"], audit_fraction=self.options["audit_fraction"],
            train_config={"epochs": self.options["epochs"]},
        )
        # no pool yet to draw a golden set from: the first model is let through without one
        project = project_update(project_id=project.id, changes={"gate_rules": {"first_model_needs_golden_set": False}})
        user_model = get_user_model()
        user, _ = user_model.objects.get_or_create(username=DEMO_USER, defaults={"is_staff": True, "is_superuser": True})
        user.set_password(DEMO_PASSWORD)
        user.save()
        membership_set(project=project, user=user, role=ProjectRole.ADMIN, actor="demo")
        return project

    def write_images(self, data: ArrayDataset, indices: np.ndarray, folder: str) -> list[str]:
        """Save dataset images as PNG files under the storage root; returns their storage paths."""
        root = Path(settings.STORAGE_ROOT) / PROJECT_SLUG / folder
        root.mkdir(parents=True, exist_ok=True)
        paths = []
        for n, index in enumerate(indices, 1):
            relative = f"{PROJECT_SLUG}/{folder}/{index}.png"
            target = Path(settings.STORAGE_ROOT) / relative
            Image.fromarray(data.images[index]).save(target)
            self.truth[hashlib.sha256(target.read_bytes()).hexdigest()] = int(data.targets[index])
            paths.append(relative)
            if n % 500 == 0 or n == len(indices):
                self.progress(f"writing {folder} images", n, len(indices))
        return paths

    # --- loop steps -----------------------------------------------------------------------------

    def run_cycle(self, project: Project) -> RetrainingCycle:
        cycle = cycle_request(project=project, requested_by="demo")

        def tick() -> None:
            progress = RetrainingCycle.objects.get(pk=cycle.pk).progress
            if progress.get("epoch"):
                self.progress(f"cycle {cycle.number}: training", progress["epoch"], progress["epochs"],
                              f"loss {progress['train_loss']:.3f}")

        self.wait_for(f"cycle {cycle.number}", lambda: RetrainingCycle.objects.get(pk=cycle.pk).status in DECIDED, tick)
        cycle.refresh_from_db()
        if cycle.status not in DECIDED - {CycleStatus.FAILED, CycleStatus.CANCELLED}:
            raise CommandError(f"cycle {cycle.number} ended {cycle.status}: {cycle.error or cycle.decision_reason}")
        return cycle

    def wait_for_pool_predictions(self, project: Project) -> None:
        version = production_version(project.id)
        pool = Item.objects.filter(project=project).exclude(labels__status="current")
        self.wait_for(f"predictions of {version.name} on the pool",
                      lambda: not pool.exclude(predictions__model_version=version).exists()
                      and not version.predictions.filter(scored_at__isnull=True).exists())

    def stream_predictions(self, project: Project, token_deployment: Any, data: ArrayDataset, paths: list[str]) -> None:
        """Play the deployment: run its model on new images and report through ingestion."""
        version = token_deployment.model_version
        model, meta = load_version(version)
        for start in range(0, len(paths), STREAM_CHUNK):
            chunk = paths[start:start + STREAM_CHUNK]
            indices = [int(Path(p).stem) for p in chunk]
            images = torch.from_numpy(data.images[indices][:, None].copy())
            probs = predict_proba(model, images, meta.input_spec)
            payload = {"model_version": version.name, "predictions": [
                {"image_path": path, "probabilities": row.tolist()} for path, row in zip(chunk, probs)
            ]}
            predictions_ingest(deployment=token_deployment, payload=payload)
            self.progress("deployment -> ingestion API service", min(start + STREAM_CHUNK, len(paths)), len(paths))

    def review(self, batch: ReviewBatch) -> int:
        tasks = list(ReviewTask.objects.filter(batch=batch, status=ReviewTaskStatus.OPEN).select_related("item"))
        for n, task in enumerate(tasks, 1):
            label_submit(item_id=task.item_id, value=batch.project.labels[self.truth[task.item.sha256]],
                         source=LabelSource.SIMULATED, reviewer_name=REVIEWER, review_task_id=task.id)
            if n % 50 == 0 or n == len(tasks):
                self.progress(f"simulated reviewer labels batch {batch.id}", n, len(tasks))
        return len(tasks)

    def select_batch(self, project: Project) -> ReviewBatch:
        batch = review_batch_request(project=project, requested_by="demo")
        self.wait_for(f"review batch {batch.id}",
                      lambda: ReviewBatch.objects.get(pk=batch.pk).status != ReviewBatchStatus.PENDING)
        batch.refresh_from_db()
        if batch.status != ReviewBatchStatus.SELECTED:
            raise CommandError(f"selection failed: {batch.error}")
        return batch

    def bootstrap_golden_set(self, project: Project) -> None:
        """A random batch (stratified by predicted class) labeled by the simulated reviewer, frozen
        as golden set v1: the gate decides on it from now on."""
        batch = golden_set_propose(project=project, size=self.options["golden"], requested_by="demo")
        self.wait_for(f"golden-set batch {batch.id}",
                      lambda: ReviewBatch.objects.get(pk=batch.pk).status != ReviewBatchStatus.PENDING)
        batch.refresh_from_db()
        if batch.status != ReviewBatchStatus.SELECTED:
            raise CommandError(f"golden-set selection failed: {batch.error}")
        self.review(batch)
        golden = golden_set_freeze(project=project, actor="demo", reason="bootstrap: one random batch")
        project_update(project_id=project.id, changes={"gate_rules": {
            "min_golden_size": len(golden.item_ids), "non_inferiority_margin": DEMO_MARGIN,
            "require_approval": True}})
        self.say(f"    golden set v{golden.version}: {len(golden.item_ids)} random pool items labeled by the simulated "
                 f"reviewer, never trained on; gate: min_golden_size {len(golden.item_ids)}, non-inferiority "
                 f"margin {DEMO_MARGIN}; a candidate that passes waits for a person's approval")

    def api(self) -> APIClient:
        """The REST API as user demo, in process (Django's test client: the same views, roles and
        services as over HTTP)."""
        # WhiteNoise warns that the demo never ran collectstatic: the API serves no static files
        warnings.filterwarnings("ignore", message="No directory at", category=UserWarning)
        client = APIClient(SERVER_NAME="localhost")
        user = get_user_model().objects.get(username=DEMO_USER)
        client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get_or_create(user=user)[0].key}")
        return client

    def approve(self, cycle: RetrainingCycle) -> RetrainingCycle:
        self.say(f"    cycle {cycle.number} passed every rule and waits for a person; approving through "
                 f"POST /api/v1/cycles/{cycle.id}/approve/ as user {DEMO_USER}")
        response = self.api().post(f"/api/v1/cycles/{cycle.id}/approve/",
                                   {"reason": "demo: rule table checked"}, format="json")
        if response.status_code != 200:
            raise CommandError(f"approval failed: {response.status_code} {response.content[:500]!r}")
        cycle.refresh_from_db()
        self.say(f"    -> {response.status_code}: {cycle.decision} ({cycle.decision_reason})")
        return cycle

    def rollback(self, project: Project, deployment: Deployment) -> None:
        current = production_version(project.id)
        earlier = selectors.rollback_choices(project).first()
        if earlier is None:
            self.say("    no earlier production model to roll back to")
            return
        response = self.api().post(f"/api/v1/projects/{project.slug}/rollback/", {
            "model_version": earlier.name, "reason": f"demo: rolling {current.name} back"}, format="json")
        if response.status_code != 200:
            raise CommandError(f"rollback failed: {response.status_code} {response.content[:500]!r}")
        deployment.refresh_from_db()
        self.say(f"    POST /api/v1/projects/{project.slug}/rollback/ -> {response.status_code}: production "
                 f"{current.name} -> {production_version(project.id).name}; deployment '{deployment.name}' (follows "
                 f"production) now runs {deployment.model_version.name}")
        event = project.trust_events.order_by("-sequence").first()
        self.say(f"    trust history #{event.sequence}: {event.kind} {event.payload}")

    def print_rules(self, cycle: RetrainingCycle) -> None:
        gate = cycle.gate
        self.say(f"\nThe gate's rules for cycle {cycle.number} (golden set v{gate.get('golden_set_version')}, "
                 f"{gate.get('n_golden')} items; outcome {gate.get('outcome')}):")
        for rule in gate.get("rules", []):
            self.say(f"    {rule['rule']:<28} {'pass' if rule['passed'] else 'FAIL':<5} {rule['detail']}")

    def reference_accuracy(self, project: Project, test: ArrayDataset) -> float:
        """Production accuracy on the 10,000 official test images (never used by hitl)."""
        model, meta = load_version(production_version(project.id))
        probs = predict_proba(model, torch.from_numpy(test.images[:, None].copy()), meta.input_spec)
        return float((probs.argmax(axis=1) == test.targets).mean())

    def label_counts(self, project: Project) -> tuple[int, int]:
        labeled = Item.objects.filter(project=project, labels__status="current")
        return labeled.filter(split=Split.TRAIN).count(), labeled.filter(split=Split.HOLDOUT).count()

    # --- the run ----------------------------------------------------------------------------------

    def run(self) -> None:
        started = time.monotonic()
        o = self.options
        try:
            train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
        except FileNotFoundError as exc:
            raise CommandError(str(exc)) from None
        self.say(f"Fashion-MNIST: {len(train.targets)} training and {len(test.targets)} test images (real data)")
        env = self.choose_broker()
        self.start_worker(env)
        project = self.reset_project()
        order = self.rng.permutation(len(train.targets))
        seed_paths = self.write_images(train, order[:o["seed_labels"]], "seed")
        stream_paths = self.write_images(train, order[o["seed_labels"]:o["seed_labels"] + o["stream"]], "stream")

        self.say(f"\n[1] Seed: {len(seed_paths)} images labeled from the dataset's ground truth (an import)")
        seed_items = Item.objects.in_bulk(items_register(project=project, image_paths=seed_paths))
        for item_id, item in seed_items.items():
            label_submit(item_id=item_id, value=project.labels[self.truth[item.sha256]],
                         source=LabelSource.IMPORT, reviewer_name="Fashion-MNIST ground truth (seed)")
        cycle = self.run_cycle(project)
        version = production_version(project.id)
        self.say(f"    trained {version.name} on {version.training_labels.count()} seed labels: {cycle.decision_reason}")
        deployment, _token = deployment_create(project=project, name="edge-camera-1", environment=Environment.EDGE,
                                               model_version=version, storage_prefix=f"{PROJECT_SLUG}/stream")
        self.say(f"    deployed {version.name} as '{deployment.name}' ({deployment.environment})")
        rows = [self.table_row(cycle, project, test)]

        self.say(f"\n[2] The deployment reports predictions for {len(stream_paths)} unseen images")
        self.stream_predictions(project, deployment, train, stream_paths)
        self.wait_for_pool_predictions(project)
        self.say("\n[3] Golden set: a random batch from the pool, labeled, frozen; never trained on")
        self.bootstrap_golden_set(project)

        for step in range(4, o["cycles"] + 4):
            self.say(f"\n[{step}] Select -> review -> retrain -> evaluate -> decide")
            batch = self.select_batch(project)
            audit = batch.tasks.filter(reason="audit").count()
            self.say(f"    {batch.strategy} picked {batch.tasks.count() - audit} uncertain items + {audit} random audit items")
            self.review(batch)
            cycle = self.run_cycle(project)
            self.say(f"    cycle {cycle.number} trained {cycle.candidate_version.name}: {cycle.decision} "
                     f"({cycle.decision_reason})")
            if cycle.status == CycleStatus.AWAITING_APPROVAL:
                cycle = self.approve(cycle)
            rows.append(self.table_row(cycle, project, test))
            if cycle.decision == "promoted":
                self.wait_for_pool_predictions(project)

        batch = self.select_batch(project)
        self.print_table(rows)
        self.print_rules(cycle)
        self.say("\nRollback to the previous production model, through the API:")
        self.rollback(project, deployment)
        self.say("\nLive accuracy estimated from the random audit slices alone (what hitl reports without "
                 "a test set):")
        for e in selectors.audit_accuracy(project):
            self.say(f"    {e.model_version}: {e.accuracy:.3f} on {e.n} audit labels (95% interval "
                     f"{e.low:.2f}-{e.high:.2f})")
        conflict = self.leave_conflict(project, batch)
        self.say(f"\nLeft {batch.tasks.count()} items in the review queue for you, and a conflict: "
                 f"{conflict}. Browse the results:")
        self.say("    make web          then open http://127.0.0.1:8000/  (user 'demo', password 'demo')")
        self.say(f"    review with the keyboard at /projects/{project.slug}/label/, decide the conflict at "
                 f"/projects/{project.slug}/conflicts/; `make demo-drift` then injects drift")
        self.say(f"Demo finished in {time.monotonic() - started:.0f}s.")

    def leave_conflict(self, project: Project, batch: ReviewBatch) -> str:
        """Two colleagues of the demo user answer one item of the waiting batch blind and disagree:
        the demo user, a third person, decides. The project labels a share of items twice only
        while they answer, so the demo user can label the rest of the batch alone."""
        fraction = 0.1
        open_tasks = batch.tasks.filter(status=ReviewTaskStatus.OPEN, prediction__isnull=False).select_related("prediction")
        task = next((t for t in open_tasks.order_by("-rank") if review_task_needs_two(t, fraction=fraction)), None)
        if task is None:
            return "none (no open item was drawn for double labeling)"
        project_update(project_id=project.id, changes={"double_label_fraction": fraction})
        model_label = task.prediction.predicted_label
        other = next(label for label in project.labels if label != model_label)
        for name, value in (("ana", model_label), ("ben", other)):
            user, _ = get_user_model().objects.get_or_create(username=name)
            membership_set(project=project, user=user, role=ProjectRole.REVIEWER, actor="demo")
            outcome = review_answer_submit(review_task_id=task.id, reviewer=user, value=value)
        project_update(project_id=project.id, changes={"double_label_fraction": 0.0})
        return f"item {task.item_id}, ana said {model_label!r}, ben said {other!r} ({outcome.outcome})"

    def table_row(self, cycle: RetrainingCycle, project: Project, test: ArrayDataset) -> dict[str, Any]:
        golden = {s.role: s for s in cycle.snapshots.filter(eval_set="golden")}
        train_labels, _ = self.label_counts(project)
        return {
            "cycle": cycle.number, "candidate": cycle.candidate_version.name, "train_labels": train_labels,
            "golden": golden["candidate"].n_items if "candidate" in golden else 0,
            "candidate_acc": golden["candidate"].intervals["accuracy"] if "candidate" in golden else None,
            "production_acc": golden["production"].intervals["accuracy"] if "production" in golden else None,
            "decision": cycle.decision, "production": production_version(project.id).name,
            "test_acc": self.reference_accuracy(project, test),
        }

    def print_table(self, rows: list[dict[str, Any]]) -> None:
        def fmt(value: float | None) -> str:
            return "-" if value is None else f"{value:.3f}"

        def interval(value: dict | None) -> str:
            return "-" if value is None else f"{value['estimate']:.3f} [{value['lower']:.3f},{value['upper']:.3f}]"

        self.say("\nPer-cycle results. 'golden': the golden set's size; 'cand./prod. golden acc': accuracy on it "
                 "with its 95% bootstrap interval,\nwhat the gate decides on (cycle 1 came before the golden set). "
                 "'10k test acc': the production model on Fashion-MNIST's\nofficial test images, a reference hitl "
                 "never uses for its decisions.")
        header = (f"{'cycle':>5} {'candidate':>9} {'train labels':>12} {'golden':>6} {'cand. golden acc':>21} "
                  f"{'prod. golden acc':>21} {'decision':>9} {'production':>10} {'10k test acc':>12}")
        self.say(header)
        self.say("-" * len(header))
        for r in rows:
            self.say(f"{r['cycle']:>5} {r['candidate']:>9} {r['train_labels']:>12} {r['golden']:>6} "
                     f"{interval(r['candidate_acc']):>21} {interval(r['production_acc']):>21} {r['decision']:>9} "
                     f"{r['production']:>10} {fmt(r['test_acc']):>12}")


class Command(BaseCommand):
    help = "Run hitl's whole loop on real Fashion-MNIST with a simulated reviewer."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--seed-labels", type=int, default=200, help="labeled seed images (default 200)")
        parser.add_argument("--stream", type=int, default=4000, help="unseen images the deployment reports")
        parser.add_argument("--cycles", type=int, default=3, help="review + retrain cycles after v1")
        parser.add_argument("--batch", type=int, default=200, help="items per review batch")
        parser.add_argument("--audit-fraction", type=float, default=0.1, help="random share of each batch")
        parser.add_argument("--strategy", default="margin", help="query strategy (margin, entropy, ...)")
        parser.add_argument("--epochs", type=int, default=20, help="training epochs per cycle")
        parser.add_argument("--seed", type=int, default=0, help="random seed for the image sample")
        parser.add_argument("--golden", type=int, default=150, help="random pool items labeled for the golden set")

    def handle(self, *args: Any, **options: Any) -> None:
        for name in ("seed_labels", "stream", "cycles", "batch", "epochs", "golden"):
            if options[name] < 1:
                raise CommandError(f"--{name.replace('_', '-')} must be at least 1")
        if options["seed_labels"] + options["stream"] > 60_000:
            raise CommandError("--seed-labels plus --stream must not exceed Fashion-MNIST's 60,000 training images")
        if options["batch"] + options["golden"] > options["stream"]:
            raise CommandError("--batch plus --golden must not exceed --stream")
        demo = Demo(self, options)
        try:
            demo.run()
        finally:
            demo.stop_worker()
            delete_queues(celery_app.conf.hitl_queue_prefix)
            celery_app.close()
