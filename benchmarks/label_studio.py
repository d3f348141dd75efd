"""Label Studio throughput and latency, against a real Label Studio 1.23.2.

* push: review tasks per second that `ls_push` creates in Label Studio (each with hitl's
  pre-annotation, signed image URL and ids), next to a bare SDK import of the same payloads
  into another project: the ratio is hitl's overhead.
* webhook-to-label latency: a reviewer's annotation is created through the SDK; the clock stops
  when the label is stored in hitl (Label Studio -> webhook receiver under gunicorn -> Redis ->
  Celery worker -> PostgreSQL). Median and p99 over sequential annotations.

    python benchmarks/label_studio.py [--tasks 2000] [--annotations 200]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

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

DB_NAME = "hitl_bench_label_studio"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--annotations", type=int, default=200)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="hitl-bench-ls-"))
    ls_port, web_port = free_port(), free_port()
    ls_env = {**os.environ, "HITL_LS_DATA_DIR": str(work / "ls"), "HITL_LS_PORT": str(ls_port)}
    script = str(ROOT / "scripts" / "label-studio.sh")
    url = scratch_database(DB_NAME)
    prefix = f"hitl-bench-ls-{os.getpid()}"
    env = {"DATABASE_URL": url, "HITL_DATA_DIR": str(work / "hitl"), "HITL_QUEUE_PREFIX": prefix,
           "LABEL_STUDIO_URL": f"http://127.0.0.1:{ls_port}", "HITL_PUBLIC_URL": f"http://127.0.0.1:{web_port}",
           "HITL_LOG_LEVEL": "WARNING", "DJANGO_SETTINGS_MODULE": "hitl.settings"}
    processes: list[subprocess.Popen] = []
    try:
        print("starting Label Studio (fresh data dir) ...", flush=True)
        subprocess.run([script, "start"], env=ls_env, check=True)
        env["LABEL_STUDIO_API_KEY"] = (work / "ls" / "api-token").read_text().strip()
        os.environ.update(env)
        manage(["migrate", "--verbosity", "0"], env)
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "hitl.wsgi", "--bind", f"127.0.0.1:{web_port}", "--workers", "2",
             "--log-level", "warning"], env=os.environ.copy(), cwd=ROOT))
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers", "worker", "--concurrency", "2", "--loglevel", "WARNING",
             "--without-mingle", "--without-gossip", "-Q", f"{prefix}.cpu,{prefix}.gpu"],
            env=os.environ.copy(), cwd=ROOT))
        wait_port(web_port)
        results = run(args)
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(timeout=30)
        subprocess.run([script, "stop"], env=ls_env, check=False)
        drop_database(DB_NAME)
        from workers.celery import delete_queues

        delete_queues(prefix)
    report(args, results)


def run(args: argparse.Namespace) -> dict:
    import django

    django.setup()
    from django.conf import settings
    from label_studio_sdk import LabelStudio
    from PIL import Image

    from benchmarks.common import untrained_production_version
    from hitl.models import Label, ReviewTask
    from hitl.services.ingestion import predictions_ingest
    from hitl.services.projects import deployment_create, project_create
    from hitl.services.selection import review_batch_request
    from labeling.client import LabelStudioClient
    from labeling.mapping import choice_result
    from labeling.models import LabelStudioTask
    from labeling.services.provisioning import ls_project_provision
    from labeling.services.push import ls_push, ls_task_payload
    from workers.ml.datasets import load_fashion_mnist
    from workers.pipelines.selection import review_batch_select

    data = load_fashion_mnist("test")
    project = project_create(slug="bench", name="bench", labels=data.labels)
    version = untrained_production_version(project, Path(tempfile.mkdtemp()))
    deployment, _ = deployment_create(project=project, name="cam", environment="edge", model_version=version,
                                      storage_prefix="cam")
    storage = Path(settings.STORAGE_ROOT) / "cam"
    storage.mkdir(parents=True)
    for i in range(args.tasks):
        Image.fromarray(data.images[i]).save(storage / f"{i}.png")
    probs = np.random.default_rng(0).dirichlet(np.ones(10), size=args.tasks)
    predictions_ingest(deployment=deployment, payload={"predictions": [
        {"image_path": f"cam/{i}.png", "probabilities": probs[i].tolist()} for i in range(args.tasks)]})
    batch = review_batch_request(project=project, requested_by="bench", size=args.tasks, audit_fraction=0.0)
    review_batch_select(batch_id=batch.id)
    link = ls_project_provision(project_id=project.id).link

    # Side by side: the same payloads through the bare SDK into a second project.
    client = LabelStudioClient()
    payloads = [ls_task_payload(t) for t in ReviewTask.objects.filter(batch=batch).select_related(
        "item", "prediction__model_version")]
    bare = client.create_project(title="bench: bare import", label_config=client.project(link.ls_project_id)["label_config"],
                                 description="")
    started = time.perf_counter()
    for start in range(0, len(payloads), 500):
        client.import_tasks(bare, payloads[start:start + 500])
    bare_seconds = time.perf_counter() - started

    started = time.perf_counter()
    pushed = ls_push(project_id=project.id).pushed
    push_seconds = time.perf_counter() - started
    assert pushed == args.tasks

    sdk = LabelStudio(base_url=settings.LABEL_STUDIO_URL, api_key=settings.LABEL_STUDIO_API_KEY)
    tasks = list(LabelStudioTask.objects.filter(ls_project=link).order_by("id").values_list("ls_task_id", flat=True))
    latencies = []
    for ls_task_id in tasks[:args.annotations]:
        started = time.perf_counter()
        annotation = sdk.annotations.create(id=ls_task_id, result=choice_result(data.labels[0]))
        external = f"ls-annotation:{annotation.id}"
        while not Label.objects.filter(external_id=external).exists():
            if time.perf_counter() - started > 30:
                raise SystemExit(f"annotation {annotation.id} never reached hitl")
            time.sleep(0.002)
        latencies.append(time.perf_counter() - started)
    return {"push_seconds": push_seconds, "bare_seconds": bare_seconds, "latencies": latencies}


def report(args: argparse.Namespace, r: dict) -> None:
    push_rate, bare_rate = args.tasks / r["push_seconds"], args.tasks / r["bare_seconds"]
    lat = np.array(r["latencies"]) * 1000
    p50, p99 = statistics.median(lat), float(np.percentile(lat, 99))
    print(f"push: {args.tasks} tasks in {r['push_seconds']:.2f}s = {push_rate:,.0f} tasks/s "
          f"(bare SDK import: {bare_rate:,.0f} tasks/s, ratio {push_rate / bare_rate:.2f})")
    print(f"annotation -> hitl label: median {p50:.0f} ms, p99 {p99:.0f} ms over {len(lat)} annotations")
    if args.no_write:
        return
    write_section("label-studio", f"""
## Label Studio: push throughput and webhook-to-label latency

`python benchmarks/label_studio.py --tasks {args.tasks} --annotations {args.annotations}` (or
`make benchmark-label-studio`), measured {time.strftime('%Y-%m-%d')} on {machine()}, against Label Studio
1.23.2 on its default SQLite, hitl on PostgreSQL, gunicorn (2 workers) receiving webhooks and a Celery
worker (2 processes) applying them, all on the same machine.

| what | figure |
| --- | ---: |
| `ls_push`: review tasks with pre-annotation and signed image URL, into Label Studio | **{push_rate:,.0f} tasks/s** ({args.tasks:,} in {r['push_seconds']:.2f} s) |
| the same payloads through the bare SDK import, same run | {bare_rate:,.0f} tasks/s (hitl's push reaches {push_rate / bare_rate:.0%} of it) |
| annotation created in Label Studio -> label stored in hitl, median | **{p50:.0f} ms** |
| the same, p99 | {p99:.0f} ms ({len(lat)} sequential annotations) |

The latency clock starts before the SDK call that creates the annotation, so it includes Label
Studio's own request, its synchronous webhook call, hitl's receiver (which only records the event),
the Celery hop and the label write. Push time is dominated by Label Studio's import: hitl adds the
reserve/confirm bookkeeping that makes an interrupted push safe to repeat.
""")


if __name__ == "__main__":
    main()
