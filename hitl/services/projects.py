"""Projects, model versions (registration, promotion) and deployments."""

from __future__ import annotations

import hashlib
import re
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from hitl.errors import FieldError, InvalidInput
from hitl.media import model_directory
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
from hitl.services.trust import trust_record
from workers.ml.architectures import ARCHITECTURES
from workers.ml.checkpoint import ONNX_FILE, WEIGHTS_FILE, ArtifactFile, read_meta
from workers.ml.files import atomic_write, file_sha256
from workers.ml.strategies import STRATEGY_INPUTS
from workers.ml.training import TrainConfig

SELECTION_STRATEGIES = tuple(STRATEGY_INPUTS)
SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
TOKEN_PREFIX = "hitl_dep_"


def _check_labels(labels: object) -> str | None:
    if not isinstance(labels, list) or len(labels) < 2:
        return "give at least two class names"
    if not all(isinstance(label, str) and label.strip() == label and label for label in labels):
        return "class names must be non-empty strings without surrounding spaces"
    if len(set(labels)) != len(labels):
        return "class names must be unique"
    return None


def _check_train_config(options: object) -> str | None:
    if not isinstance(options, dict):
        return "must be an object of training options"
    try:
        TrainConfig.from_dict(options)
    except (TypeError, ValueError) as exc:
        return str(exc)
    return None


def _check_initial_weights(value: object) -> str | None:
    if value == "":
        return None
    try:
        return None if isinstance(value, str) and Path(value).is_file() else f"no file at {value}"
    except (OSError, ValueError):  # a name too long for the file system: no file either
        return "no file at this path (the name is too long)"


def _between(low: float, high: float, kind: type = float) -> Callable[[object], str | None]:
    def check(value: object) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
            return f"must be {'a number' if kind is float else 'an integer'}"
        return None if low <= value <= high else f"must be between {low} and {high}"
    return check


SETTING_CHECKS: dict[str, Callable[[object], str | None]] = {
    "name": lambda v: None if isinstance(v, str) and 0 < len(v) <= 200 else "must be 1 to 200 characters",
    "labels": _check_labels,
    "architecture": lambda v: None if v in ARCHITECTURES else f"unknown; use one of {', '.join(sorted(ARCHITECTURES))}",
    "initial_weights": lambda v: _check_initial_weights(v),
    "holdout_fraction": _between(0.01, 0.99),
    "selection_strategy": lambda v: None if v in SELECTION_STRATEGIES else f"unknown; use one of {', '.join(SELECTION_STRATEGIES)}",
    "batch_size": _between(1, 10_000, int),
    "audit_fraction": _between(0, 1),
    "mc_samples": _between(2, 200, int),
    "committee_size": _between(2, 10, int),
    "class_balance": lambda v: None if isinstance(v, bool) else "must be true or false",
    "selection_pool_limit": _between(100, 10_000_000, int),
    "train_config": _check_train_config,
    "promotion_min_delta": _between(-1, 1),
    "min_eval_labels": _between(1, 1_000_000, int),
}
# Fixed once a project exists: models and splits depend on them.
FIXED_SETTINGS = frozenset({"labels", "holdout_fraction"})


def validate_project_settings(values: dict[str, object]) -> None:
    errors = [FieldError(name, problem) for name, value in values.items()
              if (problem := SETTING_CHECKS[name](value) if name in SETTING_CHECKS else "unknown setting")]
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
    validate_project_settings(changes)
    project = Project.objects.select_for_update().get(pk=project_id)
    for name, value in changes.items():
        setattr(project, name, value)
    if changes:
        project.save(update_fields=list(changes))
    return project


def _store_artifacts(version: ModelVersion, directory: str, files: list[ArtifactFile]) -> None:
    kinds = {WEIGHTS_FILE: ArtifactKind.WEIGHTS, ONNX_FILE: ArtifactKind.ONNX}
    ModelArtifact.objects.bulk_create([
        ModelArtifact(model_version=version, kind=kinds[f.name], path=f"{directory}/{f.name}",
                      sha256=f.sha256, size_bytes=f.size)
        for f in files
    ])


@transaction.atomic
def model_version_create(
    *, project: Project, name: str, architecture: str, labels: list[str], parent: ModelVersion | None,
    directory: str, files: list[ArtifactFile],
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


def model_version_register(*, project: Project, name: str, weights_path: Path, actor: str) -> ModelVersion:
    """Import a model trained elsewhere from a hitl safetensors checkpoint (e.g. exported earlier)."""
    if not SLUG.match(name or ""):
        raise InvalidInput.single("name", "use lowercase letters, digits and dashes (at most 64)")
    if ModelVersion.objects.filter(project=project, name=name).exists():
        raise InvalidInput.single("name", f"model version {name!r} already exists in {project.slug}")
    weights_path = Path(weights_path)
    try:
        meta = read_meta(weights_path)
    except Exception as exc:
        raise InvalidInput.single("weights", f"not a hitl checkpoint: {exc}") from None
    if meta.labels != project.labels:
        raise InvalidInput.single("weights", f"model labels {meta.labels} differ from the project's {project.labels}")
    directory = model_directory(project.slug, name)
    target = Path(settings.MEDIA_ROOT) / directory / WEIGHTS_FILE
    atomic_write(target, lambda tmp: shutil.copyfile(weights_path, tmp))
    files = [ArtifactFile(WEIGHTS_FILE, file_sha256(target), target.stat().st_size)]
    with transaction.atomic():
        version = model_version_create(project=project, name=name, architecture=meta.architecture,
                                       labels=meta.labels, parent=None, directory=directory, files=files)
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
    follows_production: bool = True,
) -> tuple[Deployment, str]:
    """Create a deployment and its API token. The token is returned once and stored only hashed."""
    if environment not in Environment.values:
        raise InvalidInput.single("environment", f"use one of {', '.join(Environment.values)}")
    if model_version.project_id != project.id:
        raise InvalidInput.single("model_version", "belongs to another project")
    if Deployment.objects.filter(project=project, name=name).exists():
        raise InvalidInput.single("name", f"deployment {name!r} already exists in {project.slug}")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    deployment = Deployment.objects.create(
        project=project, name=name, environment=environment, model_version=model_version,
        follows_production=follows_production, token_digest=token_digest(token),
        token_prefix=token[: len(TOKEN_PREFIX) + 3],
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
