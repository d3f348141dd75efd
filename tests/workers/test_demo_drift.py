"""``manage.py demo_drift``: a deployment reports drifted images through ingestion, the monitor
raises the alert and the review batch it scheduled is selected."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import numpy as np
import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from hitl.models import Alert, MonitoringReference, Prediction, ReviewBatch, ReviewBatchStatus
from hitl.services.projects import project_update
from workers.management.commands.demo_drift import CLASS_MIX, darken, drifted_indices
from workers.ml.datasets import FASHION_MNIST_LABELS

pytestmark = pytest.mark.django_db


def test_drifted_images_are_of_the_chosen_kind() -> None:
    labels = list(FASHION_MNIST_LABELS)
    targets = np.arange(1000) % 10
    picked = drifted_indices(targets, labels, "class-mix", 50, np.random.default_rng(0))
    assert len(set(picked)) == 50 and set(targets[picked]) == {labels.index(c) for c in CLASS_MIX}
    assert len(drifted_indices(targets, labels, "darker", 50, np.random.default_rng(0))) == 50
    images = np.full((2, 28, 28), 200, dtype=np.uint8)
    assert darken(images, 0.3).max() == 60 and darken(images, 0.3).dtype == np.uint8


def test_demo_drift_raises_the_alert_and_selects_its_batch(project, version, deployment_and_token, ingest) -> None:
    project_update(project_id=project.id, changes={"monitoring": {"reference_size": 100,
                                                                  "min_window_predictions": 50}})
    out = StringIO()
    with pytest.raises(CommandError, match="no reference"):
        call_command("demo_drift", "--project", project.slug, stdout=out)
    ingest(range(100), seed=1)  # the reference: predictions spread over all ten classes, yesterday
    Prediction.objects.update(received_at=timezone.now() - timedelta(days=1))
    call_command("demo_drift", "--project", project.slug, "--kind", "class-mix", "--images", "80", stdout=out)
    text = out.getvalue()
    assert MonitoringReference.objects.get(model_version=version).n_predictions == 100
    sent = Prediction.objects.filter(model_version=version).count() - 100
    assert sent >= 70 and f"reported {sent} new predictions of class-mix images" in text
    alert = Alert.objects.get(metric="class_psi")
    assert f"ALERT {alert.pk}" in text and alert.value > 0.25
    batch = ReviewBatch.objects.get(requested_by="monitor")
    assert alert.review_batch == batch and batch.status == ReviewBatchStatus.SELECTED
    assert f"review batch {batch.id} is selected" in text
    assert f", {sent} predictions: class PSI" in text  # the window held the drifted predictions alone
    alerts, again = Alert.objects.count(), StringIO()
    call_command("demo_drift", "--project", project.slug, "--images", "10", stdout=again)
    assert "was judged before" in again.getvalue() and Alert.objects.count() == alerts
