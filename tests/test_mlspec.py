"""hitl.mlspec (what the web knows, torch-free) agrees with workers.ml (what the workers run)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from hitl import mlspec
from hitl.services.projects import checkpoint_meta_read
from workers.ml import architectures, checkpoint, strategies, training, uncertainty
from workers.ml.device import is_device_name, select_device

MODEL_INPUTS = {"mc_probs", "committee_probs", "embeddings"}


def test_architecture_and_strategy_names_agree() -> None:
    assert mlspec.ARCHITECTURES == tuple(architectures.ARCHITECTURES)
    assert mlspec.STRATEGIES == tuple(strategies.STRATEGY_INPUTS)
    assert mlspec.STORED_SCORE_STRATEGIES == tuple(uncertainty.SCORERS)
    assert mlspec.MODEL_STRATEGIES == {s for s, needs in strategies.STRATEGY_INPUTS.items() if needs & MODEL_INPUTS}


def test_checkpoint_names_agree() -> None:
    assert (mlspec.WEIGHTS_FILE, mlspec.ONNX_FILE) == (checkpoint.WEIGHTS_FILE, checkpoint.ONNX_FILE)
    assert mlspec.CHECKPOINT_FORMAT_VERSION == checkpoint.FORMAT_VERSION


def test_training_options_are_the_train_config_fields_with_its_defaults() -> None:
    fields = dataclasses.fields(training.TrainConfig)
    assert list(mlspec.TRAIN_OPTIONS) == [f.name for f in fields]
    assert {n: o.default for n, o in mlspec.TRAIN_OPTIONS.items()} == {f.name: f.default for f in fields}
    assert mlspec.train_config_clean({}) == training.TrainConfig().to_dict()


@pytest.mark.parametrize("end", ["low", "high"])
def test_train_config_accepts_everything_the_web_accepts(end: str) -> None:
    options = {name: getattr(option, end) for name, option in mlspec.TRAIN_OPTIONS.items() if option.low is not None}
    cleaned = mlspec.train_config_clean(options)
    assert training.TrainConfig.from_dict(cleaned).to_dict() == cleaned


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:7", "cuda:63"])
def test_device_names_the_web_accepts_are_valid_for_the_workers(device: str) -> None:
    assert mlspec.device_problem(device) is None and is_device_name(device)
    assert training.TrainConfig(device=device).device == device


@pytest.mark.parametrize("device", ["gpu", "CPU", " cpu", "cpu ", "cuda:", "cuda:01", "cuda:-1", "cuda0", "cuda:1:2",
                                    "cudax", "cuda:1\n", "mps", "", "cuda:١"])
def test_other_device_names_are_refused_by_both(device: str) -> None:
    assert mlspec.device_problem(device) is not None
    assert not is_device_name(device)
    with pytest.raises(ValueError, match="device"):
        training.TrainConfig(device=device)
    with pytest.raises(ValueError, match="unknown device"):
        select_device(device)


def test_the_torch_free_header_reader_agrees_with_the_checkpoint_reader(tmp_path: Path) -> None:
    meta = checkpoint.CheckpointMeta("small_cnn", ["a", "b", "c"], architectures.input_spec_for("small_cnn"),
                                     {"epochs": 2}, {"accuracy": 0.5})
    torch.manual_seed(0)
    checkpoint.save_checkpoint(architectures.build_model("small_cnn", 3), meta, tmp_path, onnx=False)
    weights = tmp_path / checkpoint.WEIGHTS_FILE
    header = checkpoint_meta_read(weights)
    read = checkpoint.read_meta(weights)
    assert (header["architecture"], header["labels"]) == (read.architecture, read.labels) == ("small_cnn", ["a", "b", "c"])
    assert header["input_spec"] == read.input_spec.to_dict()


def test_the_header_reader_refuses_what_is_not_a_hitl_checkpoint(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="no hitl metadata"):
        checkpoint_meta_read(tmp_path / "plain.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "odd.safetensors"),
              metadata={"hitl": '{"format_version": 1, "architecture": "vgg", "labels": ["a", "b"]}'})
    with pytest.raises(ValueError, match="unknown architecture 'vgg'"):
        checkpoint_meta_read(tmp_path / "odd.safetensors")


def test_semi_supervised_methods_agree_and_the_web_refuses_others() -> None:
    from workers.ml import semi

    assert mlspec.SEMI_SUPERVISED_METHODS == semi.SEMI_SUPERVISED_METHODS
    assert mlspec.train_config_clean({"semi_supervised": "fixmatch"})["semi_supervised"] == "fixmatch"
    for bad in ("mixmatch", "", 1, None):
        with pytest.raises(mlspec.InvalidInput) as refused:
            mlspec.train_config_clean({"semi_supervised": bad})
        assert [e.field for e in refused.value.errors] == ["train_config.semi_supervised"]
    with pytest.raises(mlspec.InvalidInput):
        mlspec.train_config_clean({"confidence_threshold": 0.3})
