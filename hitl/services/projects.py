"""Projects, model versions (registration, promotion) and deployments."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import shutil
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO, NamedTuple, Protocol

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone
from safetensors import SafetensorError, safe_open

from hitl import mlspec
from hitl.errors import FieldError, InvalidInput
from hitl.files import atomic_write, file_sha256
from hitl.media import model_directory, validate_storage_prefix
from hitl.models import (
    ArtifactKind,
    Deployment,
    Environment,
    ModelArtifact,
    ModelStage,
    ModelVersion,
    Project,
    TaskType,
)
from hitl.monitorspec import monitoring_keep_webhook, monitoring_rules_clean
from hitl.services.trust import trust_record

SELECTION_STRATEGIES = mlspec.STRATEGIES
SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
TOKEN_PREFIX = "hitl_dep_"
MAX_SAFETENSORS_HEADER = 100_000_000  # the safetensors format's own limit


def _check_labels(labels: object) -> str | None:
    if not isinstance(labels, list) or len(labels) < 2:
        return "give at least two class names"
    if not all(isinstance(label, str) and label.strip() == label and label for label in labels):
        return "class names must be non-empty strings without surrounding spaces"
    if len(set(labels)) != len(labels):
        return "class names must be unique"
    return None


def initial_weights_file(value: str) -> Path:
    """The weights file ``value`` names (absolute, or relative to HITL_MODELS_ROOT), resolved.

    It must be a regular file inside the models folder once every symbolic link is followed, so
    a project cannot make a worker read an arbitrary file. Checked when the setting is made and
    again when a worker reads it. Raises ValueError saying what to fix.
    """
    root = Path(settings.MODELS_ROOT).resolve()
    hint = f"give a weights file inside the models folder {root} (HITL_MODELS_ROOT)"
    if not isinstance(value, str) or not 0 < len(value) <= 500 or "\x00" in value:
        raise ValueError(f"{hint}, as a path of at most 500 characters")
    try:
        path = (root / value).resolve(strict=True)
        mode = path.stat().st_mode
    except (OSError, RuntimeError):
        raise ValueError(f"no file at {value}; {hint}") from None
    if not path.is_relative_to(root):
        raise ValueError(f"{value} lies outside the models folder; {hint}")
    if not stat.S_ISREG(mode):
        raise ValueError(f"{value} is not a regular file; {hint}")
    return path


def _check_initial_weights(value: object) -> str | None:
    if value == "":
        return None
    try:
        initial_weights_file(value)  # type: ignore[arg-type]
    except ValueError as exc:
        return str(exc)
    return None


def _between(low: float, high: float, kind: type = float) -> Callable[[object], str | None]:
    def check(value: object) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
            return f"must be {'a number' if kind is float else 'an integer'}"
        return None if low <= value <= high else f"must be between {low} and {high}"
    return check


SETTING_CHECKS: dict[str, Callable[[object], str | None]] = {
    "name": lambda v: None if isinstance(v, str) and 0 < len(v) <= 200 else "must be 1 to 200 characters",
    "labels": _check_labels,
    "architecture": lambda v: None if v in mlspec.ARCHITECTURES else f"unknown; use one of {', '.join(mlspec.ARCHITECTURES)}",
    "initial_weights": _check_initial_weights,
    "holdout_fraction": _between(0.01, 0.99),
    "selection_strategy": lambda v: None if v in SELECTION_STRATEGIES else f"unknown; use one of {', '.join(SELECTION_STRATEGIES)}",
    "batch_size": _between(1, 10_000, int),
    "audit_fraction": _between(0, 1),
    "double_label_fraction": _between(0, 1),
    "mc_samples": _between(2, 200, int),
    "committee_size": _between(2, 10, int),
    "class_balance": lambda v: None if isinstance(v, bool) else "must be true or false",
    # model strategies hold the pool's images and outputs in memory: a million is the most
    "selection_pool_limit": _between(100, 1_000_000, int),
}
# Every setting validate_project_settings knows; training options are checked by mlspec.
PROJECT_SETTINGS = frozenset(SETTING_CHECKS) | {"train_config", "gate_rules", "monitoring"}
# Fixed once a project exists: models and splits depend on them.
FIXED_SETTINGS = frozenset({"labels", "holdout_fraction"})


def validate_project_settings(values: dict[str, object]) -> None:
    """The one check of project settings: API, CLI and admin. Raises InvalidInput naming each
    bad field (a training option as ``train_config.<option>``)."""
    errors = [FieldError(name, problem) for name, value in values.items()
              if name not in ("train_config", "gate_rules", "monitoring")
              and (problem := SETTING_CHECKS[name](value) if name in PROJECT_SETTINGS else "unknown setting")]
    if "train_config" in values:
        try:
            mlspec.train_config_clean(values["train_config"])
        except InvalidInput as exc:
            errors += exc.errors
    if "gate_rules" in values:
        try:
            mlspec.gate_rules_clean(values["gate_rules"], labels=values.get("labels"))
        except InvalidInput as exc:
            errors += exc.errors
    if "monitoring" in values:
        try:
            monitoring_rules_clean(values["monitoring"])
        except InvalidInput as exc:
            errors += exc.errors
    if errors:
        raise InvalidInput(errors)


@transaction.atomic
def project_create(
    *, slug: str, name: str, labels: list[str], architecture: str = "small_cnn",
    holdout_fraction: float = 0.2, selection_strategy: str = "margin", batch_size: int = 100,
    audit_fraction: float = 0.1, initial_weights: str = "", train_config: dict | None = None,
) -> Project:
    if not SLUG.match(slug or ""):
        raise InvalidInput.single("slug", "use lowercase letters, digits and dashes (at most 64)")
    if Project.objects.filter(slug=slug).exists():
        raise InvalidInput.single("slug", f"a project {slug!r} already exists")
    values = {"name": name or slug, "labels": labels, "architecture": architecture,
              "holdout_fraction": holdout_fraction, "selection_strategy": selection_strategy,
              "batch_size": batch_size, "audit_fraction": audit_fraction, "initial_weights": initial_weights,
              "train_config": train_config or {}}
    validate_project_settings(values)
    return Project.objects.create(slug=slug, task_type=TaskType.CLASSIFICATION, **values)


@transaction.atomic
def project_update(*, project_id: int, changes: dict[str, object]) -> Project:
    """Change a project's settings (strategy, batch size, audit share, MC samples, ...)."""
    fixed = sorted(FIXED_SETTINGS & set(changes))
    if fixed:
        raise InvalidInput([FieldError(name, "cannot change once the project exists") for name in fixed])
    project = Project.objects.select_for_update().get(pk=project_id)
    if "monitoring" in changes:
        changes = {**changes, "monitoring": monitoring_keep_webhook(changes["monitoring"], project.monitoring)}
    validate_project_settings(changes)
    for name, value in changes.items():
        setattr(project, name, value)
    if changes:
        project.save(update_fields=list(changes))
    return project


class ArtifactFile(Protocol):
    """A model file written under MEDIA_ROOT (workers.ml.checkpoint.ArtifactFile is one)."""

    @property
    def name(self) -> str: ...
    @property
    def sha256(self) -> str: ...
    @property
    def size(self) -> int: ...


class CopiedFile(NamedTuple):
    name: str
    sha256: str
    size: int


def _store_artifacts(version: ModelVersion, directory: str, files: Sequence[ArtifactFile]) -> None:
    kinds = {mlspec.WEIGHTS_FILE: ArtifactKind.WEIGHTS, mlspec.ONNX_FILE: ArtifactKind.ONNX}
    ModelArtifact.objects.bulk_create([
        ModelArtifact(model_version=version, kind=kinds[f.name], path=f"{directory}/{f.name}",
                      sha256=f.sha256, size_bytes=f.size)
        for f in files
    ])


@transaction.atomic
def model_version_create(
    *, project: Project, name: str, architecture: str, labels: list[str], parent: ModelVersion | None,
    directory: str, files: Sequence[ArtifactFile],
) -> ModelVersion:
    """Record a trained model whose artifact files already lie under MEDIA_ROOT/directory."""
    try:
        with transaction.atomic():
            version = ModelVersion.objects.create(
                project=project, name=name, architecture=architecture, labels=labels, parent=parent,
            )
    except IntegrityError:
        raise InvalidInput.single("name", f"model version {name!r} already exists in {project.slug}") from None
    _store_artifacts(version, directory, files)
    return version


def checkpoint_meta_read(weights_path: Path) -> dict:
    """A hitl checkpoint's header metadata (architecture, labels, ...), read without torch: the
    safetensors header is JSON. workers.ml.checkpoint.read_meta reads the same with torch."""
    with safe_open(str(weights_path), framework="numpy") as handle:
        metadata = handle.metadata() or {}
    return _checkpoint_meta(metadata, str(weights_path))


def checkpoint_meta_from_file(handle: BinaryIO, name: str) -> dict:
    """``checkpoint_meta_read`` for a file already open (one ``hitl.media.model_artifact_file``
    opened safely): a safetensors file starts with its header's length (8 bytes, little-endian),
    then the header as JSON, whose ``__metadata__`` holds hitl's."""
    length = int.from_bytes(handle.read(8), "little")
    header = None
    if 2 <= length <= MAX_SAFETENSORS_HEADER:
        try:
            header = json.loads(handle.read(length))
        except ValueError:
            pass
    if not isinstance(header, dict):
        raise ValueError(f"{name} is not a safetensors file")
    metadata = header.get("__metadata__")
    return _checkpoint_meta(metadata if isinstance(metadata, dict) else {}, name)


def _checkpoint_meta(metadata: dict, name: str) -> dict:
    if mlspec.CHECKPOINT_METADATA_KEY not in metadata:
        raise ValueError(f"{name} has no hitl metadata")
    meta = json.loads(metadata[mlspec.CHECKPOINT_METADATA_KEY])
    if meta.get("format_version") != mlspec.CHECKPOINT_FORMAT_VERSION:
        raise ValueError(f"unsupported checkpoint format {meta.get('format_version')!r}")
    if meta.get("architecture") not in mlspec.ARCHITECTURES:
        raise ValueError(f"unknown architecture {meta.get('architecture')!r}")
    if not isinstance(meta.get("labels"), list) or not all(isinstance(x, str) for x in meta["labels"]):
        raise ValueError("its labels are not a list of class names")
    return meta


def model_version_register(*, project: Project, name: str, weights_path: Path, actor: str,
                           onnx_path: Path | None = None) -> ModelVersion:
    """Import a model trained elsewhere from a hitl safetensors checkpoint (e.g. exported earlier,
    or written by ``workers.ml.byo`` from a torchvision state_dict), with its ONNX export if given."""
    if not SLUG.match(name or ""):
        raise InvalidInput.single("name", "use lowercase letters, digits and dashes (at most 64)")
    if ModelVersion.objects.filter(project=project, name=name).exists():
        raise InvalidInput.single("name", f"model version {name!r} already exists in {project.slug}")
    weights_path = Path(weights_path)
    try:
        meta = checkpoint_meta_read(weights_path)
    except (OSError, ValueError, SafetensorError) as exc:  # JSONDecodeError is a ValueError
        raise InvalidInput.single("weights", f"not a hitl checkpoint: {str(exc)[:200]}; for a torchvision "
                                  "state_dict (.pt/.pth) or a plain .safetensors give --architecture and --labels "
                                  "(and --image-size, --mean, --std)") from None
    if meta["labels"] != project.labels:
        raise InvalidInput.single("weights", f"model labels {meta['labels']} differ from the project's {project.labels}")
    directory = model_directory(project.slug, name)
    target = Path(settings.MEDIA_ROOT) / directory / mlspec.WEIGHTS_FILE
    atomic_write(target, lambda tmp: shutil.copyfile(weights_path, tmp))
    files = [CopiedFile(mlspec.WEIGHTS_FILE, file_sha256(target), target.stat().st_size)]
    if onnx_path is not None:
        onnx_target = target.with_name(mlspec.ONNX_FILE)
        atomic_write(onnx_target, lambda tmp: shutil.copyfile(onnx_path, tmp))
        files.append(CopiedFile(mlspec.ONNX_FILE, file_sha256(onnx_target), onnx_target.stat().st_size))
    with transaction.atomic():
        version = model_version_create(project=project, name=name, architecture=meta["architecture"],
                                       labels=meta["labels"], parent=None, directory=directory, files=files)
        trust_record(project_id=project.id, kind="model_registered", actor=actor,
                     payload={"model_version": name, "weights_sha256": files[0].sha256})
    return version


@transaction.atomic
def model_version_promote(*, model_version_id: int, actor: str, reason: str) -> ModelVersion:
    """Make a version production: the old one is archived, following deployments switch."""
    version = ModelVersion.objects.select_for_update().select_related("project").get(pk=model_version_id)
    if version.stage == ModelStage.PRODUCTION:
        return version
    previous = ModelVersion.objects.select_for_update().filter(
        project_id=version.project_id, stage=ModelStage.PRODUCTION
    ).first()
    if previous is not None:
        previous.stage = ModelStage.ARCHIVED
        previous.save(update_fields=["stage"])
    version.stage = ModelStage.PRODUCTION
    version.promoted_at = timezone.now()
    version.promoted_by = actor
    version.save(update_fields=["stage", "promoted_at", "promoted_by"])
    Deployment.objects.filter(project_id=version.project_id, follows_production=True).update(model_version=version)
    trust_record(project_id=version.project_id, kind="model_promoted", actor=actor, payload={
        "model_version": version.name, "replaced": previous.name if previous else None, "reason": reason,
    })
    return version


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@transaction.atomic
def deployment_create(
    *, project: Project, name: str, environment: str, model_version: ModelVersion,
    follows_production: bool = True, storage_prefix: str | None = None,
) -> tuple[Deployment, str]:
    """Create a deployment and its API token. The token is returned once and stored only hashed.

    The deployment may reference images only under ``storage_prefix`` in the storage root
    (default ``<project-slug>/<deployment-name>``)."""
    if environment not in Environment.values:
        raise InvalidInput.single("environment", f"use one of {', '.join(Environment.values)}")
    storage_prefix = (f"{project.slug}/{name}" if storage_prefix is None else storage_prefix).strip("/")
    try:
        validate_storage_prefix(storage_prefix)
    except ValidationError as exc:
        raise InvalidInput.single("storage_prefix", exc.messages[0]) from None
    if model_version.project_id != project.id:
        raise InvalidInput.single("model_version", "belongs to another project")
    if Deployment.objects.filter(project=project, name=name).exists():
        raise InvalidInput.single("name", f"deployment {name!r} already exists in {project.slug}")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    deployment = Deployment.objects.create(
        project=project, name=name, environment=environment, model_version=model_version,
        follows_production=follows_production, token_digest=token_digest(token),
        token_prefix=token[: len(TOKEN_PREFIX) + 3], storage_prefix=storage_prefix,
    )
    return deployment, token


@transaction.atomic
def deployment_rotate_token(*, deployment_id: int) -> str:
    deployment = Deployment.objects.select_for_update().get(pk=deployment_id)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    deployment.token_digest = token_digest(token)
    deployment.token_prefix = token[: len(TOKEN_PREFIX) + 3]
    deployment.save(update_fields=["token_digest", "token_prefix"])
    return token


def ensure_unique_version_name(*, project: Project, wanted: str) -> str:
    if not ModelVersion.objects.filter(project=project, name=wanted).exists():
        return wanted
    suffix = 2
    while ModelVersion.objects.filter(project=project, name=f"{wanted}-{suffix}").exists():
        suffix += 1
    return f"{wanted}-{suffix}"
