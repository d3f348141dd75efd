"""torch on a busy CPU: OpenMP threads that spin-wait (libgomp's default, for a while after each
parallel region, or always with OMP_WAIT_POLICY=ACTIVE) against passive waiting, side by side.

A Celery worker shares its cores with the web, the database and other workers; when there are
more runnable threads than cores, spinning threads steal the time slices the working threads
need. Each measurement runs in a fresh interpreter (the policy is read when torch loads its
OpenMP runtime) while ``--hogs`` busy processes keep the cores occupied, as a loaded machine
does. The figure is the median time of a resnet18 forward+backward pass on a 32x3x64x64 batch.

    python -m benchmarks.omp_wait --hogs 2 --threads 2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time

from benchmarks.common import machine, write_section

STEP = """
import json, statistics, time, torch
from workers.ml.architectures import build_model
torch.set_num_threads({threads})
model = build_model("resnet18", 10).train()
x = torch.randn(32, 3, 64, 64)
times = []
for _ in range({steps}):
    started = time.perf_counter()
    model(x).sum().backward()
    times.append(time.perf_counter() - started)
print(json.dumps(statistics.median(times[1:])))
"""


UNSET = "unset"


def hog(stop: multiprocessing.Event) -> None:  # type: ignore[valid-type]
    while not stop.is_set():
        pass


def measure(policy: str, threads: int, steps: int) -> float:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy != UNSET:
        env["OMP_WAIT_POLICY"] = policy
    out = subprocess.run([sys.executable, "-c", STEP.format(threads=threads, steps=steps)], env=env,
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hogs", type=int, default=2, help="busy processes competing for the cores")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2, help="alternating measurements per policy")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    stop = multiprocessing.Event()
    hogs = [multiprocessing.Process(target=hog, args=(stop,), daemon=True) for _ in range(args.hogs)]
    for process in hogs:
        process.start()
    results: dict[str, list[float]] = {UNSET: [], "ACTIVE": [], "PASSIVE": []}
    try:
        for _ in range(args.rounds):  # alternate, so drift in the machine's load hits both
            for policy in results:
                results[policy].append(measure(policy, args.threads, args.steps))
                print(policy, f"{results[policy][-1]:.3f} s", flush=True)
    finally:
        stop.set()
        for process in hogs:
            process.join()
    unset, active, passive = (min(results[p]) for p in (UNSET, "ACTIVE", "PASSIVE"))
    body = (f"## torch on a busy CPU: spinning vs passive OpenMP threads\n\n"
            f"`python -m benchmarks.omp_wait --hogs {args.hogs} --threads {args.threads}`, measured "
            f"{time.strftime('%Y-%m-%d')} on {machine()}, with {args.hogs} busy processes on the cores (and whatever "
            f"else the machine ran). resnet18 forward+backward, batch 32x3x64x64, {args.threads} torch threads, "
            f"median step, best of {args.rounds} alternating runs:\n\n"
            f"| OMP_WAIT_POLICY | seconds per step |\n| --- | ---: |\n"
            f"| not set (libgomp's default: spin a while, then sleep) | {unset:.3f} |\n"
            f"| ACTIVE (spin) | {active:.3f} |\n| PASSIVE (hitl's default) | {passive:.3f} |\n\n"
            f"Without the setting, torch is **{unset / passive:.1f}x** slower here (spinning: {active / passive:.1f}x). hitl sets `OMP_WAIT_POLICY=PASSIVE` (unless "
            f"set) in `workers/__init__.py`, `manage.py` and the benchmarks, before torch loads.")
    print(body)
    if not args.no_write:
        write_section("omp-wait", body)


if __name__ == "__main__":
    main()
