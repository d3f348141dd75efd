"""Resuming training from a saved state gives the weights of a run that never stopped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.ml.conftest import as_tensors
from workers.ml.architectures import build_model, input_spec_for
from workers.ml.checkpoint import load_training_state, save_training_state
from workers.ml.training import TrainConfig, fit

SPEC = input_spec_for("small_cnn")
# augment and dropout on: the batch order, the augmentation and dropout all draw random numbers
CONFIG = TrainConfig(epochs=4, batch_size=32, seed=3, device="cpu", augment=True)


def _straight(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model("small_cnn", 10)
    fit(model, x, y, SPEC, CONFIG)
    return model.state_dict()


def _killed_after(epoch: int, x: torch.Tensor, y: torch.Tensor, path: Path) -> None:
    """Train, saving the state each epoch, and stop dead after ``epoch`` (as a SIGKILL would)."""
    torch.manual_seed(0)
    model = build_model("small_cnn", 10)
    fit(
        model,
        x,
        y,
        SPEC,
        CONFIG,
        on_state=lambda s: save_training_state(s, path),
        on_epoch=lambda s: s.epoch < epoch,
    )


@pytest.mark.parametrize("kill_after", [1, 3])
def test_resumed_training_gives_the_same_weights(
    fashion_train, tmp_path: Path, kill_after: int
) -> None:
    x, y = as_tensors(fashion_train, np.arange(200))
    expected = _straight(x, y)
    path = tmp_path / "state.pt"
    _killed_after(kill_after, x, y, path)
    state = load_training_state(path)
    assert state is not None and state["epoch"] == kill_after
    torch.manual_seed(99)  # other initial weights: the resumed run must take the saved ones
    model = build_model("small_cnn", 10)
    torch.manual_seed(12345)  # and a disturbed global stream: the saved one must be restored
    ran: list[int] = []
    history = fit(model, x, y, SPEC, CONFIG, resume=state, on_epoch=lambda s: ran.append(s.epoch))
    assert ran == list(range(kill_after + 1, CONFIG.epochs + 1))  # earlier epochs are not re-run
    assert [h.epoch for h in history] == [1, 2, 3, 4]
    resumed = model.state_dict()
    for key in expected:
        assert torch.equal(expected[key], resumed[key]), key


def test_resuming_without_the_optimizer_state_differs(fashion_train, tmp_path: Path) -> None:
    """The comparison above can fail: dropping the optimizer's moments changes the weights."""
    x, y = as_tensors(fashion_train, np.arange(200))
    expected = _straight(x, y)
    path = tmp_path / "state.pt"
    _killed_after(2, x, y, path)
    state = load_training_state(path)
    fresh = torch.optim.AdamW(build_model("small_cnn", 10).parameters(), lr=CONFIG.learning_rate)
    state["optimizer"] = {**fresh.state_dict(), "param_groups": state["optimizer"]["param_groups"]}
    model = build_model("small_cnn", 10)
    fit(model, x, y, SPEC, CONFIG, resume=state)
    assert any(not torch.equal(expected[k], model.state_dict()[k]) for k in expected)


def test_a_state_saved_under_another_config_is_refused(fashion_train, tmp_path: Path) -> None:
    x, y = as_tensors(fashion_train, np.arange(64))
    path = tmp_path / "state.pt"
    _killed_after(1, x, y, path)
    other = TrainConfig(epochs=4, batch_size=32, seed=4, device="cpu", augment=True)
    with pytest.raises(ValueError, match="another training config"):
        fit(build_model("small_cnn", 10), x, y, SPEC, other, resume=load_training_state(path))


def test_a_missing_or_damaged_state_reads_as_none(tmp_path: Path) -> None:
    assert load_training_state(tmp_path / "absent.pt") is None
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    assert load_training_state(tmp_path / "bad.pt") is None
