from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from tests.ml.conftest import as_tensors
from workers.ml.architectures import build_model, input_spec_for
from workers.ml.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from workers.ml.files import file_sha256
from workers.ml.images import normalize
from workers.ml.inference import predict_proba

LABELS = ["a", "b", "c"]


@pytest.fixture()
def saved(tmp_path: Path) -> tuple[torch.nn.Module, list, Path]:
    torch.manual_seed(3)
    model = build_model("small_cnn", 3).eval()
    meta = CheckpointMeta("small_cnn", LABELS, input_spec_for("small_cnn"), {"epochs": 1}, {"train_loss": 0.5})
    files = save_checkpoint(model, meta, tmp_path / "v1")
    return model, files, tmp_path / "v1"


def test_round_trip_keeps_predictions_and_metadata(saved, fashion_test) -> None:
    model, files, directory = saved
    assert [f.name for f in files] == ["model.safetensors", "model.onnx"]
    assert files[0].sha256 == file_sha256(directory / "model.safetensors")
    loaded, meta = load_checkpoint(directory / "model.safetensors", expected_sha256=files[0].sha256)
    assert meta.labels == LABELS and meta.architecture == "small_cnn" and meta.metrics == {"train_loss": 0.5}
    x, _ = as_tensors(fashion_test, np.arange(20))
    spec = input_spec_for("small_cnn")
    np.testing.assert_allclose(predict_proba(loaded, x, spec), predict_proba(model, x, spec), atol=1e-6)


def test_onnx_export_matches_torch(saved, fashion_test) -> None:
    model, _, directory = saved
    spec = input_spec_for("small_cnn")
    x, _ = as_tensors(fashion_test, np.arange(8))
    batch = normalize(x, spec)
    with torch.inference_mode():
        expected = model(batch).numpy()
    session = onnxruntime.InferenceSession(str(directory / "model.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(["logits"], {"image": batch.numpy()})
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_tampered_weights_are_detected(saved) -> None:
    _, files, directory = saved
    path = directory / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="does not match its recorded sha256"):
        load_checkpoint(path, expected_sha256=files[0].sha256)


def test_no_temporary_files_are_left(saved) -> None:
    _, _, directory = saved
    assert sorted(p.name for p in directory.iterdir()) == ["model.onnx", "model.safetensors"]


def test_artifacts_get_the_usual_file_mode(saved) -> None:
    _, _, directory = saved
    for path in directory.iterdir():
        assert path.stat().st_mode & 0o044 == 0o044, path  # readable by the web and worker users too
