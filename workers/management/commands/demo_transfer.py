"""A cold start on RGB images with the pretrained backbone, inline on the embedded default.

Fashion-MNIST test images (real) are made RGB JPEGs (upsampled to 96 px, each tinted with a
random colour, so the three channels differ) and imported with no model and no prediction. The
first review batch is picked by k-center on EfficientNet-Lite0 ImageNet embeddings, a simulated
reviewer labels it with the ground truth, and the first cycle fine-tunes the pretrained backbone;
then the new model scores the pool, margin sampling picks the next batch, and a second cycle
fine-tunes v1. Each step runs in this process (the demo's Celery worker is not needed).
"""

from __future__ import annotations

import io
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from django.core.management.base import BaseCommand, CommandParser
from PIL import Image

from hitl.models import EvaluationSnapshot, LabelSource, Project, ReviewTask
from hitl.selectors import production_version
from hitl.services.cycles import cycle_request
from hitl.services.ingestion import ImportedImage, items_import
from hitl.services.labels import label_submit
from hitl.services.projects import project_create
from hitl.services.selection import review_batch_request
from workers.ml.datasets import load_fashion_mnist
from workers.pipelines.cycles import cycle_evaluate, cycle_train
from workers.pipelines.inference import model_predict_items
from workers.pipelines.selection import review_batch_select

REVIEWER = "simulated reviewer (dataset ground truth)"


def rgb_jpeg(image: np.ndarray, tint: np.ndarray, size: int) -> bytes:
    x = F.interpolate(torch.from_numpy(image.copy()).float()[None, None], size=(size, size), mode="bilinear")[0, 0]
    rgb = (x[..., None] / 255 * torch.from_numpy(tint) + (1 - x[..., None] / 255) * 20).clamp(0, 255)
    out = io.BytesIO()
    Image.fromarray(rgb.to(torch.uint8).numpy()).save(out, format="JPEG", quality=90)
    return out.getvalue()


class Command(BaseCommand):
    help = "Cold start on RGB images: import, diversity-pick, label, fine-tune a pretrained backbone."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--pool", type=int, default=600, help="images imported with no prediction")
        parser.add_argument("--batch", type=int, default=100, help="items per review batch")
        parser.add_argument("--rounds", type=int, default=2, help="review + fine-tune rounds")
        parser.add_argument("--epochs", type=int, default=3, help="training epochs per cycle")
        parser.add_argument("--seed", type=int, default=0)

    def say(self, started: float, text: str) -> None:
        self.stdout.write(f"[{time.monotonic() - started:6.0f} s] {text}")

    def handle(self, *args: Any, **o: Any) -> None:
        started = time.monotonic()
        torch.set_num_threads(max(1, torch.get_num_threads()))
        data = load_fashion_mnist("test")
        rng = np.random.default_rng(o["seed"])
        rows = rng.permutation(len(data.targets))[: o["pool"]]
        labels = [label.replace("/", "-") for label in data.labels]
        slug = f"transfer-{int(time.time())}"
        project = project_create(slug=slug, name="Cold start on RGB (demo-transfer)", labels=labels,
                                 architecture="efficientnet_lite0", selection_strategy="coreset",
                                 batch_size=o["batch"], audit_fraction=0.0,
                                 train_config={"epochs": o["epochs"], "batch_size": 32, "augment": True})
        # a cold start has no golden set yet: the project lets its first model through without one
        Project.objects.filter(pk=project.pk).update(gate_rules={"first_model_needs_golden_set": False})
        project.refresh_from_db()
        tints = rng.uniform(80, 255, size=(len(rows), 3)).astype(np.float32)
        images = [ImportedImage(f"fmnist-{i}.jpg", rgb_jpeg(data.images[i], tint, 96)) for i, tint in zip(rows, tints)]
        result = items_import(project=project, images=images, source="demo-transfer: Fashion-MNIST test set as RGB")
        truth = {item: labels[data.targets[i]] for item, i in zip(result.item_ids, rows)}
        self.say(started, f"project {slug}: imported {result.items_created} RGB images, no model, no prediction")
        for round_number in range(1, o["rounds"] + 1):
            strategy = "margin" if production_version(project.id) is not None else "coreset"
            batch = review_batch_request(project=project, requested_by="demo-transfer", strategy=strategy,
                                         seed=o["seed"] + round_number)
            batch = review_batch_select(batch_id=batch.id)
            if batch.error:
                raise SystemExit(f"selection failed: {batch.error}")
            tasks = list(ReviewTask.objects.filter(batch=batch))
            for task in tasks:
                label_submit(item_id=task.item_id, value=truth[task.item_id], source=LabelSource.SIMULATED,
                             reviewer_name=REVIEWER, review_task_id=task.id)
            picked = len({truth[t.item_id] for t in tasks})
            self.say(started, f"round {round_number}: {strategy} picked {len(tasks)} items covering {picked} of "
                              f"{len(labels)} classes; the simulated reviewer labeled them")
            cycle = cycle_request(project=project, requested_by="demo-transfer")
            cycle_train(cycle_id=cycle.id)
            cycle_evaluate(cycle_id=cycle.id)
            cycle.refresh_from_db()
            snapshot = EvaluationSnapshot.objects.filter(cycle=cycle, role="candidate").first()
            accuracy = f"{snapshot.accuracy:.3f} on {snapshot.n_items} held-out labels" if snapshot else "not evaluated"
            start = "the ImageNet-pretrained EfficientNet-Lite0" if round_number == 1 else "the production model"
            self.say(started, f"cycle {cycle.number}: fine-tuned {start} -> {cycle.candidate_version.name if cycle.candidate_version else '-'}, "
                              f"{cycle.status} {cycle.decision or ''}, accuracy {accuracy}")
            if round_number < o["rounds"] and cycle.candidate_version is not None and cycle.decision == "promoted":
                scored = model_predict_items(model_version_id=cycle.candidate_version_id)
                self.say(started, f"{cycle.candidate_version.name} scored {scored} unlabeled items")
        self.say(started, "done")
