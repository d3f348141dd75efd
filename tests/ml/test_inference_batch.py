"""Inference batches are sized for the device: small on the CPU (same speed, a third of the
memory), large on a GPU; an explicit size wins, and the results do not depend on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workers.ml.architectures import build_model, input_spec_for
from workers.ml.inference import INFERENCE_BATCH, inference_batch_size, model_outputs, predict_proba


def test_the_default_follows_the_device() -> None:
    assert inference_batch_size(torch.device("cpu")) == INFERENCE_BATCH["cpu"] == 32
    assert inference_batch_size(torch.device("cuda")) == INFERENCE_BATCH["cuda"] == 256
    assert inference_batch_size(torch.device("cpu"), 7) == 7
    with pytest.raises(ValueError, match="at least 1"):
        inference_batch_size(torch.device("cpu"), 0)


def test_batching_does_not_change_the_outputs() -> None:
    torch.manual_seed(0)
    model = build_model("small_cnn", 10).eval()
    spec = input_spec_for("small_cnn")
    images = torch.randint(0, 256, (70, 1, 28, 28), dtype=torch.uint8)
    default = predict_proba(model, images, spec)  # 32 per batch on the CPU: 3 batches
    whole = predict_proba(model, images, spec, batch_size=70)
    np.testing.assert_allclose(default, whole, atol=1e-6)
    outputs = model_outputs(model, images, spec, embeddings=True)
    assert outputs.probs.shape == (70, 10) and outputs.embeddings.shape[0] == 70
