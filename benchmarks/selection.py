"""Selection speed.

1. Pick 1,000 of 1,000,000 stored predictions by entropy, end to end from PostgreSQL: the
   selection service (`review_batch_request` + `review_batch_select`: lock, rank by the stored
   score skipping labeled and under-review items, audit slice, write the 1,000 review tasks).
2. Core-set (k-center greedy) over 100,000 embeddings of 512 dimensions picking 1,000, on the CPU,
   and on a GPU when one is present.

    python benchmarks/selection.py [--predictions 1000000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import (  # noqa: E402
    django_in_process,
    machine,
    untrained_production_version,
    write_section,
)

DB_NAME = "hitl_bench_selection"


def fill(project_id: int, version_id: int, n: int) -> None:
    """n items with a prediction and three stored scores each, plus labeled and in-review items."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            """INSERT INTO hitl_item (project_id, sha256, image, width, height, size_bytes, format, split, created_at)
               SELECT %s, md5(i::text) || md5((-i)::text), 'storage/cam/' || i || '.png', 28, 28, 400, 'PNG',
                      CASE WHEN i %% 5 = 0 THEN 'holdout' ELSE 'train' END, now()
               FROM generate_series(1, %s) AS i""", [project_id, n])
        cursor.execute(
            """INSERT INTO hitl_prediction (item_id, model_version_id, probabilities, predicted_label, confidence,
                                            received_at, scored_at)
               SELECT id, %s, decode(repeat('3dcccccd', 10), 'hex'), 'c0', 0.1, now(), now()
               FROM hitl_item WHERE project_id = %s""", [version_id, project_id])
        cursor.execute(
            """INSERT INTO hitl_uncertaintyscore (prediction_id, model_version_id, method, value)
               SELECT p.id, %s, m.method, random() * 2.3
               FROM hitl_prediction p CROSS JOIN (VALUES ('entropy'), ('margin'), ('least_confidence')) AS m(method)
               WHERE p.model_version_id = %s""", [version_id, version_id])
        cursor.execute("ANALYZE")


def label_some(project, count: int) -> None:
    """Some items labeled by people, so the ranking must skip them."""
    from hitl.models import Item, Label, LabelSource

    items = Item.objects.filter(project=project).order_by("?").values_list("id", flat=True)[:count]
    Label.objects.bulk_create([Label(item_id=i, project=project, value="c0", reviewer_name="bench",
                                     source=LabelSource.IMPORT)
                               for i in items], batch_size=5000)


def time_selection(project, repeats: int, size: int, audit: float) -> list[float]:
    from hitl.services.selection import review_batch_request
    from workers.pipelines.selection import review_batch_select

    timings = []
    for seed in range(repeats):
        started = time.perf_counter()
        batch = review_batch_request(project=project, requested_by="bench", size=size, strategy="entropy",
                                     audit_fraction=audit, seed=seed)
        review_batch_select(batch_id=batch.id)
        timings.append(time.perf_counter() - started)
        batch.refresh_from_db()
        assert batch.status == "selected" and batch.tasks.count() == size, batch.error
    return timings


def coreset_seconds(device: str, n: int = 100_000, d: int = 512, b: int = 1000) -> float:
    from workers.ml.strategies import PoolView, SelectOptions, select_batch

    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(n, d)).astype(np.float32)
    labeled = rng.normal(size=(1000, d)).astype(np.float32)
    started = time.perf_counter()
    chosen = select_batch("coreset", PoolView(embeddings=embeddings, labeled_embeddings=labeled), b, rng=rng,
                          options=SelectOptions(device=device))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    assert len(chosen.indices) == b
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--predictions", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the filled database and reuse it next time")
    args = parser.parse_args()

    with django_in_process(DB_NAME, "selection", keep=args.keep) as (work, reuse):
        from hitl.models import Project, ReviewTask
        from hitl.services.projects import project_create

        if reuse:
            project = Project.objects.get(slug="bench")
            ReviewTask.objects.filter(batch__project=project).delete()
        else:
            project = project_create(slug="bench", name="bench", labels=[f"c{i}" for i in range(10)])
            version = untrained_production_version(project, work)
            print(f"filling {args.predictions:,} predictions ...", flush=True)
            started = time.perf_counter()
            fill(project.id, version.id, args.predictions)
            label_some(project, args.predictions // 100)
            print(f"  filled in {time.perf_counter() - started:.0f}s", flush=True)
        pure = time_selection(project, args.repeats, 1000, 0.0)
        audited = time_selection(project, args.repeats, 1000, 0.1)
    cpu = coreset_seconds("cpu")
    gpu = coreset_seconds("cuda") if torch.cuda.is_available() else None
    report(args, pure, audited, cpu, gpu)


def report(args: argparse.Namespace, pure: list[float], audited: list[float], cpu: float, gpu: float | None) -> None:
    def fmt(values: list[float]) -> str:
        return f"median {statistics.median(values) * 1000:.0f} ms, max {max(values) * 1000:.0f} ms"

    gpu_text = f"{gpu:.2f} s on {torch.cuda.get_device_name()}" if gpu is not None else \
        "not measured: no GPU was available to this run"
    print(f"entropy top 1,000 of {args.predictions:,}: {fmt(pure)}; with a 10% audit slice: {fmt(audited)}")
    print(f"core-set 100,000 x 512 -> 1,000: {cpu:.2f} s on the CPU; GPU: {gpu_text}")
    if args.no_write:
        return
    write_section("selection", f"""
## Selection speed

`python benchmarks/selection.py --predictions {args.predictions} --repeats {args.repeats}` (or `make benchmark-selection`),
measured {time.strftime('%Y-%m-%d')} on {machine()}, PostgreSQL on the same machine.

| what | time |
| --- | ---: |
| pick 1,000 of {args.predictions:,} stored predictions by entropy, end to end from the database (request, lock, ranked query skipping {args.predictions // 100:,} labeled items, write 1,000 review tasks) | **{fmt(pure)}** over {len(pure)} batches |
| the same with a 10% random audit slice | {fmt(audited)} |
| core-set (k-center greedy) over 100,000 embeddings x 512 dims, picking 1,000, CPU (torch, {torch.get_num_threads()} threads) | **{cpu:.2f} s** |
| the same on a GPU | {gpu_text} |

Target: under 1 s for the entropy pick. The ranked query walks the `(model_version, method, value)`
index and checks each candidate against the partial unique indexes on current labels and open
review tasks, so its cost grows with the batch size, not with the pool. Each batch's items
are under review for the next one, so later batches skip more.
""")


if __name__ == "__main__":
    main()
