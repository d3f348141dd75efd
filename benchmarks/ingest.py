"""Ingestion throughput: predictions per second through the bulk REST API into PostgreSQL.

A real gunicorn server runs hitl against a scratch PostgreSQL database; client threads post
prebuilt bulks (10-class probabilities, images given as paths under the storage root, every
image new). The figure is end to end: HTTP, JSON, validation, reading and checking every
image, and the inserts, until the last response. Written to docs/benchmarks.md.

    python benchmarks/ingest.py [--predictions 60000] [--bulk 1000] [--clients 4] [--workers 2]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import (  # noqa: E402
    ROOT,
    drop_database,
    free_port,
    machine,
    manage,
    scratch_database,
    wait_port,
    write_section,
)
from workers.celery import delete_queues  # noqa: E402

DB_NAME = "hitl_bench_ingest"


def write_images(storage: Path, count: int) -> list[str]:
    """Distinct real Fashion-MNIST images (shifted copies past 70k), as PNG files."""
    from PIL import Image

    from workers.ml.datasets import load_fashion_mnist

    images = np.concatenate([load_fashion_mnist("train").images, load_fashion_mnist("test").images])
    folder = storage / "cam"
    folder.mkdir(parents=True)
    paths = []
    for i in range(count):
        image = images[i % len(images)]
        if i >= len(images):
            image = np.roll(image, i // len(images), axis=1)
        Image.fromarray(image).save(folder / f"{i}.png", optimize=False)
        paths.append(f"cam/{i}.png")
    return paths


def setup(env: dict[str, str]) -> str:
    """Project, model version and deployment; returns the deployment token."""
    code = (
        "import django, pathlib, tempfile; django.setup();"
        "from hitl.services.projects import project_create, deployment_create;"
        "from benchmarks.common import untrained_production_version;"
        "p = project_create(slug='bench', name='bench', labels=[f'c{i}' for i in range(10)]);"
        "v = untrained_production_version(p, pathlib.Path(tempfile.mkdtemp()));"
        "d, token = deployment_create(project=p, name='cam', environment='edge', model_version=v, storage_prefix='cam');"
        "print(token)"
    )
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env, "DJANGO_SETTINGS_MODULE": "hitl.settings"},
                         cwd=ROOT, check=True, capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1]


def bodies(paths: list[str], bulk: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    result = []
    for start in range(0, len(paths), bulk):
        chunk = paths[start:start + bulk]
        probs = rng.dirichlet(np.ones(10), size=len(chunk)).round(6)
        probs[:, 0] += 1 - probs.sum(axis=1)
        result.append(json.dumps({"predictions": [
            {"image_path": p, "probabilities": q.tolist()} for p, q in zip(chunk, probs)]}).encode())
    return result


def post_all(port: int, token: str, payloads: list[bytes], clients: int) -> tuple[float, list[float]]:
    lock = threading.Lock()
    queue = list(reversed(payloads))
    latencies: list[float] = []
    errors: list[str] = []

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            with lock:
                if not queue:
                    break
                body = queue.pop()
            started = time.perf_counter()
            conn.request("POST", "/api/v1/predictions/", body=body, headers={
                "Content-Type": "application/json", "Authorization": f"Deployment {token}"})
            response = conn.getresponse()
            data = response.read()
            latencies.append(time.perf_counter() - started)
            if response.status != 201:
                errors.append(data.decode()[:500])
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise SystemExit(f"{len(errors)} requests failed, e.g. {errors[0]}")
    return elapsed, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--predictions", type=int, default=60_000)
    parser.add_argument("--bulk", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()

    url = scratch_database(DB_NAME)
    data_dir = Path(tempfile.mkdtemp(prefix="hitl-bench-"))
    broker_queue = f"hitl-bench-{os.getpid()}"
    env = {"DATABASE_URL": url, "HITL_DATA_DIR": str(data_dir), "HITL_QUEUE_PREFIX": broker_queue,
           "HITL_LOG_LEVEL": "WARNING"}
    try:
        manage(["migrate", "--verbosity", "0"], env)
        token = setup(env)
        print(f"writing {args.predictions} PNG images under the storage root ...", flush=True)
        paths = write_images(data_dir / "media" / "storage", args.predictions + args.bulk * args.clients)
        warmup, measured = paths[args.predictions:], paths[:args.predictions]
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "hitl.wsgi", "--bind", f"127.0.0.1:{port}", "--workers",
             str(args.workers), "--worker-class", "sync", "--timeout", "120", "--log-level", "warning"],
            env={**os.environ, **env}, cwd=ROOT,
        )
        try:
            wait_port(port, server)
            post_all(port, token, bodies(warmup, args.bulk), args.clients)  # warm every worker up
            payloads = bodies(measured, args.bulk)
            elapsed, latencies = post_all(port, token, payloads, args.clients)
        finally:
            server.terminate()
            server.wait(timeout=30)
        with psycopg.connect(url) as conn:
            stored = conn.execute("SELECT count(*) FROM hitl_prediction").fetchone()[0]
        expected = args.predictions + len(warmup)
        if stored != expected:
            raise SystemExit(f"stored {stored} predictions, expected {expected}")
    finally:
        drop_database(DB_NAME)
        delete_queues(broker_queue)  # the scoring messages the server sent had no worker here

    rate = args.predictions / elapsed
    p50, p99 = statistics.median(latencies), float(np.percentile(latencies, 99))
    summary = (f"{args.predictions} predictions in {len(payloads)} bulks of {args.bulk}: {elapsed:.2f} s, "
               f"{rate:,.0f} predictions/s (request latency p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms)")
    print(summary)
    if not args.no_write:
        write_section("ingest", f"""
## Ingestion: predictions per second through the bulk API into PostgreSQL

`python benchmarks/ingest.py --predictions {args.predictions} --bulk {args.bulk} --clients {args.clients} --workers {args.workers}`
(or `make benchmark-ingest`), measured {time.strftime('%Y-%m-%d')} on {machine()}.

gunicorn ({args.workers} sync workers) serves hitl against PostgreSQL on the same machine; {args.clients} client
threads post prebuilt bulks of {args.bulk} predictions (10-class probabilities, each image a new PNG given
as a path under the storage root, so every image is read, hashed and checked). Server, database and
client share the machine's cores.

| predictions | bulk size | wall time | predictions/s | request p50 | request p99 |
| ---: | ---: | ---: | ---: | ---: | ---: |
| {args.predictions:,} | {args.bulk} | {elapsed:.2f} s | **{rate:,.0f}** | {p50 * 1000:.0f} ms | {p99 * 1000:.0f} ms |

Target: at least 10,000 predictions/s, over 10x what Label Studio 1.23.2's import reaches for tasks
with predictions on this kind of machine: about 900 tasks/s in our notes; the Label Studio section
below measures it again (a separate run of `benchmarks/label_studio.py` on the same machine).
""")


if __name__ == "__main__":
    main()
