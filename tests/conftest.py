"""Shared fixtures. Tests run against the real PostgreSQL and Redis on this machine."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import override_settings
from PIL import Image
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from hitl.media import model_directory
from hitl.models import Deployment, Environment, LabelSource, ModelVersion, Project, ProjectRole
from hitl.services.access import membership_set
from hitl.services.ingestion import IngestResult, items_register, predictions_ingest
from hitl.services.labels import label_submit
from hitl.services.projects import (
    deployment_create,
    model_version_create,
    model_version_promote,
    project_create,
)
from workers.celery import app as celery_app
from workers.celery import configure_queues, delete_queues
from workers.ml.architectures import build_model, input_spec_for
from workers.ml.checkpoint import CheckpointMeta, save_checkpoint
from workers.ml.datasets import FASHION_MNIST_LABELS, ArrayDataset, load_fashion_mnist

LABELS = FASHION_MNIST_LABELS


class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so the pipeline records no failure."""


def train_until_killed(monkeypatch: pytest.MonkeyPatch, cycle_id: int, after_epoch: int) -> None:
    """A training attempt that dies after saving its state for ``after_epoch`` (as a killed
    worker would)."""
    from workers.pipelines import cycles as cycle_pipeline

    record = cycle_pipeline.cycle_progress_record

    def progress(**kwargs) -> bool:
        record(**kwargs)
        if kwargs["epoch"] >= after_epoch:
            raise Killed
        return True

    with monkeypatch.context() as patch:
        patch.setattr(cycle_pipeline, "cycle_progress_record", progress)
        with pytest.raises(Killed):
            cycle_pipeline.cycle_train(cycle_id=cycle_id)


def artifacts_folder() -> Path:
    """Where tests leave what people look at afterwards (screenshots, fault reports):
    ``test-artifacts/`` in the checkout, or the folder ``HITL_TEST_ARTIFACTS`` names."""
    folder = Path(os.environ.get("HITL_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def pytest_configure(config: pytest.Config) -> None:
    engine = settings.DATABASES["default"]["ENGINE"]
    if "postgresql" not in engine:
        raise pytest.UsageError(
            "hitl's tests run against PostgreSQL: set DATABASE_URL=postgres://postgres@127.0.0.1:5432/hitl "
            "(or run `make test`)"
        )


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The fault-injection tests run last (after pytest-django's own ordering): their disposable
    broker and fault worker then never meet another test's messages."""
    items.sort(key=lambda item: item.nodeid.startswith("tests/reliability/"))


@pytest.fixture(scope="session")
def queue_prefix() -> str:
    return f"hitl-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session", autouse=True)
def isolated_queues(queue_prefix: str) -> Iterator[None]:
    """Messages of this test session go to queues of their own, never to a running worker's."""
    configure_queues(queue_prefix)
    yield
    delete_queues(queue_prefix)


@pytest.fixture(scope="session")
def media_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("media")
    (root / "storage").mkdir()
    with override_settings(MEDIA_ROOT=root, STORAGE_ROOT=root / "storage"):
        yield root


@pytest.fixture(autouse=True)
def _media(media_root: Path) -> Path:
    return media_root


@pytest.fixture(scope="session")
def trust_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """This session's trust signing key, keyring and head file, shared with its workers."""
    folder = tmp_path_factory.mktemp("trust")
    files = {"HITL_TRUST_KEY_FILE": str(folder / "signing_key.pem"),
             "HITL_TRUST_PUBLIC_KEYS": str(folder / "public_keys.pem"),
             "HITL_TRUST_HEAD_FILE": str(folder / "heads.jsonl")}
    with override_settings(**{name: Path(value) for name, value in files.items()}):
        yield files


@pytest.fixture(autouse=True)
def _trust(trust_files: dict[str, str]) -> dict[str, str]:
    return trust_files


@pytest.fixture(scope="session")
def fashion() -> ArrayDataset:
    return load_fashion_mnist("test")


@pytest.fixture()
def write_images(media_root: Path, fashion: ArrayDataset):
    """Write Fashion-MNIST test images as PNGs under the storage root; returns storage paths."""

    def write(indices: range | list[int], folder: str = "imgs") -> list[str]:
        directory = media_root / "storage" / folder
        directory.mkdir(parents=True, exist_ok=True)
        paths = []
        for index in indices:
            Image.fromarray(fashion.images[index]).save(directory / f"{index}.png")
            paths.append(f"{folder}/{index}.png")
        return paths

    return write


@pytest.fixture()
def labeled_items(project, write_images, fashion: ArrayDataset):
    """Register Fashion-MNIST test images as items, labeled with their ground truth."""

    def label(indices: range | list[int], folder: str = "imgs") -> list[int]:
        ids = items_register(project=project, image_paths=write_images(indices, folder=folder))
        for item_id, index in zip(ids, indices):
            label_submit(item_id=item_id, value=project.labels[fashion.targets[index]], source=LabelSource.IMPORT,
                         reviewer_name="ground truth")
        return ids

    return label


@pytest.fixture()
def ingest(deployment_and_token, write_images):
    """Report Dirichlet-random predictions for Fashion-MNIST test images through ingestion."""

    def report(indices: range | list[int], *, concentration: float = 1.0, seed: int = 0) -> IngestResult:
        paths = write_images(indices)
        probs = np.random.default_rng(seed).dirichlet(np.ones(10) * concentration, size=len(paths))
        return predictions_ingest(deployment=deployment_and_token[0], payload={"predictions": [
            {"image_path": p, "probabilities": q.tolist()} for p, q in zip(paths, probs)]})

    return report


@pytest.fixture()
def project(db) -> Project:
    return project_create(slug=f"p-{uuid.uuid4().hex[:6]}", name="Test project", labels=list(LABELS),
                          train_config={"epochs": 2}, batch_size=20)


def make_version(project: Project, name: str, *, seed: int = 0, promote: bool = False) -> ModelVersion:
    """A real (untrained) small CNN checkpoint recorded as a model version."""
    torch.manual_seed(seed)
    model = build_model("small_cnn", len(project.labels))
    directory = model_directory(project.slug, name)
    files = save_checkpoint(model, CheckpointMeta("small_cnn", list(project.labels), input_spec_for("small_cnn")),
                            Path(settings.MEDIA_ROOT) / directory, onnx=False)
    version = model_version_create(project=project, name=name, architecture="small_cnn", labels=list(project.labels),
                                   parent=None, directory=directory, files=files)
    if promote:
        model_version_promote(model_version_id=version.id, actor="test", reason="fixture")
        version.refresh_from_db()
    return version


@pytest.fixture()
def version(project: Project) -> ModelVersion:
    return make_version(project, "v1", promote=True)


@pytest.fixture()
def deployment_and_token(project: Project, version: ModelVersion) -> tuple[Deployment, str]:
    return deployment_create(project=project, name="edge-1", environment=Environment.EDGE, model_version=version,
                             storage_prefix="imgs")  # where write_images puts files by default


@pytest.fixture()
def deployment_client(deployment_and_token: tuple[Deployment, str]) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Deployment {deployment_and_token[1]}")
    return client


def member(project: Project, username: str, role: ProjectRole, **extra):
    """A user with this role in the project (and none elsewhere)."""
    user = get_user_model().objects.create_user(username, password=f"{username}-pass-123", **extra)
    membership_set(project=project, user=user, role=role, actor="test")
    return user


@pytest.fixture()
def reviewer(project):
    return member(project, "rita", ProjectRole.REVIEWER)


@pytest.fixture()
def operator(project):
    """An ML engineer of the fixture project: selects batches, starts and cancels cycles."""
    return member(project, "otto", ProjectRole.ML_ENGINEER)


@pytest.fixture()
def project_admin(project):
    return member(project, "ada", ProjectRole.ADMIN)


def token_client(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get_or_create(user=user)[0].key}")
    return client


@pytest.fixture()
def reviewer_client(reviewer) -> APIClient:
    return token_client(reviewer)


@pytest.fixture()
def operator_client(operator) -> APIClient:
    return token_client(operator)


@pytest.fixture()
def project_admin_client(project_admin) -> APIClient:
    return token_client(project_admin)


def probabilities(rng: np.random.Generator, n: int, k: int = 10) -> list[list[float]]:
    raw = rng.dirichlet(np.ones(k) * 0.5, size=n)
    return raw.tolist()


# --- a real Celery worker process against the test database, Redis and this session's queues ---


class WorkerProcess:
    def __init__(self, popen: subprocess.Popen, log: Path, hostname: str) -> None:
        self.popen = popen
        self.log = log
        self.hostname = hostname

    def children(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.popen.pid)], capture_output=True, text=True).stdout
        return [int(pid) for pid in out.split()]

    def kill_pool(self) -> None:
        """SIGKILL every pool process, as the OOM killer or a lost machine would."""
        for pid in self.children():
            os.kill(pid, signal.SIGKILL)

    def log_tail(self) -> str:
        return self.log.read_text()[-4000:]

    def wait_idle(self, queues: list[str], timeout: float = 180) -> None:
        """Until no task is queued for this worker, reserved by it or running in it; a retry
        waiting for its time (e.g. an alert's email with no mail server) is revoked instead."""
        import redis

        broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
        inspect = celery_app.control.inspect(destination=[self.hostname], timeout=1.0)
        deadline = time.monotonic() + timeout
        while True:
            queued = sum(broker.llen(queue) for queue in queues)
            scheduled = inspect.scheduled()
            waiting = [entry["request"]["id"] for entries in (scheduled or {}).values() for entry in entries]
            if waiting:
                celery_app.control.revoke(waiting, destination=[self.hostname])
            replies = [inspect.active(), inspect.reserved(), scheduled]
            busy = [task for reply in replies[:2] for tasks in (reply or {}).values() for task in tasks]
            if not queued and not busy and all(reply is not None for reply in replies):  # None: no answer yet
                return
            if self.popen.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the worker did not go idle ({queued} queued, busy with "
                                     f"{[t.get('name') for t in busy]}):\n{self.log_tail()}")
            time.sleep(0.2)


@pytest.fixture(scope="session")
def celery_worker(django_db_setup, django_db_blocker, media_root: Path, queue_prefix: str,
                  trust_files: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    db = connection.settings_dict
    url = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    hostname = f"{queue_prefix}@test"
    env = {**os.environ, "DATABASE_URL": url, "HITL_MEDIA_ROOT": str(media_root),
           "HITL_STORAGE_ROOT": str(media_root / "storage"), "HITL_QUEUE_PREFIX": queue_prefix,
           "HITL_DATA_DIR": str(log.parent), "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
           "HITL_SECRET_KEY": settings.SECRET_KEY, **trust_files}
    popen = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers", "worker", "--pool", "prefork", "--concurrency", "2",
         "--loglevel", "INFO", "--without-mingle", "--without-gossip", "--hostname", hostname,
         "-Q", f"{queue_prefix}.cpu,{queue_prefix}.gpu"],
        env=env, cwd=settings.BASE_DIR, stdout=open(log, "w"), stderr=subprocess.STDOUT,
    )
    worker = WorkerProcess(popen, log, hostname)
    deadline = time.monotonic() + 90
    while not celery_app.control.ping(destination=[hostname], timeout=1.0):
        if popen.poll() is not None or time.monotonic() > deadline:
            popen.kill()
            raise RuntimeError(f"the Celery worker did not start:\n{worker.log_tail()}")
    yield worker
    popen.send_signal(signal.SIGTERM)
    try:
        popen.wait(timeout=30)
    except subprocess.TimeoutExpired:
        popen.kill()
    _wait_for_other_sessions_to_end(django_db_blocker)


def _wait_for_other_sessions_to_end(django_db_blocker, timeout: float = 15) -> None:
    """PostgreSQL ends a closed client's backend asynchronously; dropping the test database
    right after the worker exits could still find its sessions."""
    deadline = time.monotonic() + timeout
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                           "AND pid <> pg_backend_pid()")
            if cursor.fetchone()[0] == 0:
                return
            time.sleep(0.1)


@pytest.fixture()
def quiet_worker(celery_worker: WorkerProcess, queue_prefix: str) -> Iterator[WorkerProcess]:
    """The session's worker, waited on after the test until it is idle: a task still running when
    the test's tables are truncated deadlocks with the truncation, or writes into the next test."""
    yield celery_worker
    celery_worker.wait_idle([f"{queue_prefix}.cpu", f"{queue_prefix}.gpu"])


@pytest.fixture()
def wait_until(quiet_worker: WorkerProcess) -> Callable[..., None]:
    def wait(condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if quiet_worker.popen.poll() is not None:
                raise AssertionError(f"the worker died while waiting for {what}:\n{quiet_worker.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}:\n{quiet_worker.log_tail()}")
            time.sleep(0.2)

    return wait


# --- a real Label Studio server ------------------------------------------------------------------

LABEL_STUDIO_SCRIPT = Path(settings.BASE_DIR) / "scripts" / "label-studio.sh"
LABEL_STUDIO_REVIEWER = "reviewer@hitl.test"  # the Label Studio account the tests annotate as


@dataclass(frozen=True)
class LabelStudioServer:
    url: str
    token: str
    password: str


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudioServer]:
    """A Label Studio 1.23.2 for the `labelstudio` tests and the worker-kill tests, started from
    the project's own script (installing it into its own virtualenv outside the project's if
    needed) on a free loopback port with a fresh data dir, once for the whole session."""
    data = tmp_path_factory.mktemp("label-studio")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "HITL_LS_DATA_DIR": str(data), "HITL_LS_PORT": str(port),
           "HITL_LS_USERNAME": LABEL_STUDIO_REVIEWER}
    subprocess.run([str(LABEL_STUDIO_SCRIPT), "start"], env=env, check=True, timeout=900)
    try:
        yield LabelStudioServer(f"http://127.0.0.1:{port}", (data / "api-token").read_text().strip(),
                                (data / "password").read_text().strip())
    finally:
        subprocess.run([str(LABEL_STUDIO_SCRIPT), "stop"], env=env, check=False, timeout=60)
