"""`make demo-transfer` on a small scale: a cold start that fine-tunes the pretrained backbone."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command

from hitl.models import Item, Label, ModelVersion, Prediction, ReviewBatch

pytestmark = pytest.mark.django_db


def test_demo_transfer_runs_a_cold_start_to_a_fine_tuned_model() -> None:
    out = io.StringIO()
    call_command("demo_transfer", "--pool", "40", "--batch", "20", "--rounds", "1", "--epochs", "1", stdout=out)
    text = out.getvalue()
    assert "imported 40 RGB images, no model, no prediction" in text
    assert "coreset picked 20 items" in text and "done" in text
    batch = ReviewBatch.objects.get()
    assert batch.strategy == "coreset" and batch.model_version is None
    assert Label.objects.count() == 20 and Item.objects.count() == 40
    version = ModelVersion.objects.get()
    assert version.architecture == "efficientnet_lite0" and version.name == "v1"
    assert not Prediction.objects.exists()  # one round: nothing scored yet
