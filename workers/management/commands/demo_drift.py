"""Inject drift into a deployment and watch the monitor catch it (after ``make demo``).

The deployment (by default the demo's ``edge-camera-1``) runs its model on Fashion-MNIST test
images it has never seen, either darkened (``--kind darker``: pixel values scaled down, so the
model is less sure) or of only a few classes (``--kind class-mix``), and reports the predictions
through the ingestion service as a real deployment would. The monitor then judges the window
those predictions fall in at once (instead of waiting for it to end: a window is judged once, so
predictions that arrive later in it are not), prints its measurements and alerts, and selects the
review batch the alert scheduled, which waits in the review queue (``make web``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from PIL import Image

from hitl.models import Alert, Deployment, MonitorWindow, ReviewBatchStatus
from hitl.monitorspec import monitoring_rules
from hitl.services.ingestion import predictions_ingest
from hitl.services.monitoring import project_monitor, reference_record, window_bounds
from workers.celery import use_embedded_broker
from workers.management.commands.demo import PROJECT_SLUG, Demo
from workers.ml.datasets import load_fashion_mnist
from workers.ml.inference import predict_proba
from workers.pipelines.selection import review_batch_select
from workers.pipelines.versions import load_version

CLASS_MIX = ("bag", "sandal")  # the classes a class-mix drift shows the deployment


def drifted_indices(targets: np.ndarray, labels: list[str], kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Which test images the deployment sees: any (darker), or only those of CLASS_MIX."""
    if kind == "class-mix":
        wanted = [labels.index(name) for name in CLASS_MIX]
        pool = np.flatnonzero(np.isin(targets, wanted))
    else:
        pool = np.arange(len(targets))
    return rng.choice(pool, size=min(n, len(pool)), replace=False)


def darken(images: np.ndarray, factor: float) -> np.ndarray:
    return np.clip(images.astype(np.float32) * factor, 0, 255).astype(np.uint8)


class Command(BaseCommand):
    help = "Send drifted predictions from a deployment and run the monitor on them."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--project", default=PROJECT_SLUG)
        parser.add_argument("--deployment", help="its name (default: the project's first deployment)")
        parser.add_argument("--kind", choices=["darker", "class-mix"], default="darker")
        parser.add_argument("--images", type=int, default=600, help="drifted images the deployment reports")
        parser.add_argument("--darkness", type=float, default=0.3, help="pixel scale for --kind darker (0-1)")
        parser.add_argument("--seed", type=int, default=0)

    def handle(self, *args: Any, **o: Any) -> None:
        if not 1 <= o["images"] <= 10_000:
            raise CommandError("--images must be between 1 and 10000")
        if not 0 < o["darkness"] <= 1:
            raise CommandError("--darkness must be in (0, 1]")
        deployment = self._deployment(o["project"], o["deployment"])
        version, project = deployment.model_version, deployment.project
        rules = monitoring_rules(project.monitoring)
        reference = reference_record(version=version, size=rules["reference_size"])
        if reference is None:
            raise CommandError(f"{version.name} has fewer than {rules['reference_size']} predictions: no reference "
                               "to compare with yet (run `make demo` first)")
        self.stdout.write(f"{deployment.name} runs {version.name}; its reference: {reference.n_predictions} "
                          f"predictions recorded {reference.recorded_at:%Y-%m-%d %H:%M} UTC")
        if not Demo.redis_answers(settings.CELERY_BROKER_URL):
            use_embedded_broker(Path(settings.DATA_DIR) / "broker")  # queued messages wait in files
        sent = self._stream(deployment, o)
        start, end = window_bounds(now=timezone.now(), minutes=rules["window_minutes"])
        run = project_monitor(project_id=project.id, now=end + (end - start))  # judge the current window now
        self._report(deployment, run, sent)

    def _deployment(self, slug: str, name: str | None) -> Deployment:
        deployments = Deployment.objects.filter(project__slug=slug).select_related("project", "model_version")
        deployment = deployments.filter(name=name).first() if name else deployments.order_by("id").first()
        if deployment is None:
            raise CommandError(f"no deployment {name or ''} in project {slug!r}; run `make demo` first")
        return deployment

    def _stream(self, deployment: Deployment, o: dict[str, Any]) -> int:
        """Run the deployment's model on unseen, drifted test images and report them."""
        test = load_fashion_mnist("test")
        indices = drifted_indices(test.targets, list(test.labels), o["kind"], o["images"],
                                  np.random.default_rng(o["seed"]))
        images = test.images[indices]
        if o["kind"] == "darker":
            images = darken(images, o["darkness"])
        folder = Path(settings.STORAGE_ROOT) / deployment.storage_prefix / f"drift-{o['kind']}-{o['seed']}"
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for index, image in zip(indices, images):
            Image.fromarray(image).save(folder / f"{index}.png")
            paths.append(f"{deployment.storage_prefix}/{folder.name}/{index}.png")
        model, meta = load_version(deployment.model_version)
        probs = predict_proba(model, torch.from_numpy(images[:, None].copy()), meta.input_spec,
                              temperature=deployment.model_version.temperature)
        result = predictions_ingest(deployment=deployment, payload={
            "model_version": deployment.model_version.name,
            "predictions": [{"image_path": p, "probabilities": row.tolist()} for p, row in zip(paths, probs)]})
        self.stdout.write(f"{deployment.name} reported {result.created} new predictions of {o['kind']} images "
                          f"(mean confidence {float(probs.max(axis=1).mean()):.3f})")
        return result.created

    def _report(self, deployment: Deployment, run: Any, sent: int) -> None:
        if run.windows_measured == 0:
            self.stdout.write(f"the window {run.window_start:%H:%M}-{run.window_end:%H:%M} UTC was judged before "
                              "(a window is judged once): run this again in the next window")
            return
        window = MonitorWindow.objects.get(deployment=deployment, window_start=run.window_start)
        metrics = window.metrics
        if metrics["judged"]:
            self.stdout.write(f"window {run.window_start:%H:%M}-{run.window_end:%H:%M} UTC, {window.n_predictions} "
                              f"predictions: class PSI {metrics['class_psi']:.3f}, confidence PSI "
                              f"{metrics['confidence_psi']:.3f}, KS {metrics['confidence_ks']:.3f} "
                              f"(p = {metrics['ks_p_value']:.2g})")
        else:
            self.stdout.write(f"window not judged: {metrics['not_judged']}")
        alerts = list(Alert.objects.filter(pk__in=run.alert_ids))
        for alert in alerts:
            self.stdout.write(f"ALERT {alert.pk}: {alert.message}")
        if not alerts:
            self.stdout.write("no alert: nothing crossed the project's thresholds")
            return
        self.stdout.write(f"action: {run.action_detail}")
        batch = alerts[0].review_batch
        if batch is not None and batch.status == ReviewBatchStatus.PENDING:
            batch = review_batch_select(batch_id=batch.id)
            self.stdout.write(f"review batch {batch.id} is {batch.status} with {batch.tasks.count()} items: "
                              "see the review queue and the Alerts page (make web)")
