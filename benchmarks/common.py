"""Shared helpers for benchmarks: a scratch PostgreSQL database and docs/benchmarks.md sections."""

from __future__ import annotations

import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
ADMIN_URL = "postgres://postgres@127.0.0.1:5432/postgres"


def scratch_database(name: str, admin_url: str = ADMIN_URL) -> str:
    """(Re)create an empty database; returns its URL."""
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return database_url(name, admin_url)


def database_url(name: str, admin_url: str = ADMIN_URL) -> str:
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


def database_exists(name: str, admin_url: str = ADMIN_URL) -> bool:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is not None


def drop_database(name: str, admin_url: str = ADMIN_URL) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def manage(args: list[str], env: dict[str, str]) -> None:
    subprocess.run([sys.executable, str(ROOT / "manage.py"), *args], env={**os.environ, **env}, check=True)


@contextmanager
def django_in_process(db_name: str, label: str, *, keep: bool = False) -> Iterator[tuple[Path, bool]]:
    """Django set up in this process against a migrated scratch database ``db_name`` (kept and
    reused with ``keep``), a fresh data folder and this run's own queue prefix; yields the data
    folder and whether the database was reused. On the way out the queues are deleted, the
    connections closed and the database dropped (unless ``keep``)."""
    reuse = keep and database_exists(db_name)
    work = Path(tempfile.mkdtemp(prefix=f"hitl-bench-{label}-"))
    env = {"DATABASE_URL": database_url(db_name) if reuse else scratch_database(db_name), "HITL_DATA_DIR": str(work),
           "HITL_QUEUE_PREFIX": f"hitl-bench-{label}-{os.getpid()}", "DJANGO_SETTINGS_MODULE": "hitl.settings",
           "HITL_LOG_LEVEL": "WARNING"}
    os.environ.update(env)
    try:
        manage(["migrate", "--verbosity", "0"], env)
        import django

        django.setup()
        yield work, reuse
        from workers.celery import delete_queues

        delete_queues(env["HITL_QUEUE_PREFIX"])
    finally:
        from django.db import connections

        connections.close_all()
        if not keep:
            drop_database(db_name)


def machine() -> str:
    cpus = os.cpu_count()
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor()
    return f"{cpus} CPUs ({model}), Python {platform.python_version()}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, server: subprocess.Popen | None = None, timeout: float = 60) -> None:
    """Wait until something listens on the port; stop early if ``server`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server is not None and server.poll() is not None:
            raise SystemExit(f"{server.args[0]} exited before listening on port {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"nothing listens on port {port}")


def write_section(name: str, body: str) -> None:
    """Replace (or append) the section between <!-- name:start --> and <!-- name:end --> markers."""
    DOC.parent.mkdir(exist_ok=True)
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n\nFigures measured by the scripts in `benchmarks/`; each run rewrites its own section.\n"
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    section = f"{start}\n{body.strip()}\n{end}"
    if start in text:
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: section, text, flags=re.DOTALL)
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    DOC.write_text(text)


def untrained_production_version(project, work_dir: Path):
    """A real (untrained) small-CNN checkpoint registered and promoted through hitl's services:
    enough for benchmarks that measure plumbing, not accuracy. Needs Django set up."""
    from hitl.services.projects import model_version_promote, model_version_register
    from workers.ml.architectures import build_model, input_spec_for
    from workers.ml.checkpoint import CheckpointMeta, save_checkpoint

    meta = CheckpointMeta("small_cnn", list(project.labels), input_spec_for("small_cnn"))
    save_checkpoint(build_model("small_cnn", len(project.labels)), meta, work_dir / "v1", onnx=False)
    version = model_version_register(project=project, name="v1", weights_path=work_dir / "v1" / "model.safetensors",
                                     actor="benchmark")
    return model_version_promote(model_version_id=version.id, actor="benchmark", reason="benchmark setup")
