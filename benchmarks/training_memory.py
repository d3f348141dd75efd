"""Peak memory of one retraining epoch over N synthetic RGB JPEG items, for several N.

Each run is a fresh process that trains one epoch through ``workers.ml.training.fit`` on a
``workers.ml.data.LazyImages`` dataset whose reader returns a JPEG file's bytes (the pipeline's
reader is ``hitl.media.item_image_bytes``; here a folder stands in for the content store, so no
database is needed). The images are 224x224 RGB JPEGs (smooth random colour fields with noise,
quality 90), decoded in DataLoader workers with RandomResizedCrop + flip, as a cycle trains RGB.
Memory is the peak RSS of the training process and, separately, of its largest loader worker.

    python -m benchmarks.training_memory --n 2000 20000 --arch probe   # the data path at scale
    python -m benchmarks.training_memory --n 500 2000 --arch mobilenet_v3_small
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import machine, write_section

SIDE = 224
CACHE = Path("/tmp/hitl-training-memory")


def make_images(folder: Path, n: int) -> list[str]:
    """n synthetic 224 px RGB JPEG files in ``folder`` (made once, reused by later runs)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 1, SIDE, dtype=np.float32)
    names = [f"{i:06d}.jpg" for i in range(n)]
    for name in names:
        path = folder / name
        if path.exists():
            continue
        corners = rng.uniform(0, 255, size=(2, 2, 3)).astype(np.float32)
        top = corners[0, 0] * (1 - ramp[:, None]) + corners[0, 1] * ramp[:, None]
        bottom = corners[1, 0] * (1 - ramp[:, None]) + corners[1, 1] * ramp[:, None]
        field = top[None] * (1 - ramp[:, None, None]) + bottom[None] * ramp[:, None, None]
        field += rng.normal(0, 12, size=field.shape).astype(np.float32)
        Image.fromarray(field.clip(0, 255).astype(np.uint8)).save(path, format="JPEG", quality=90)
    return names


class FolderReader:
    """Bytes of a file in one folder (picklable, so loader workers can use it)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __call__(self, key: str) -> bytes:
        return (self.folder / key).read_bytes()


def probe_model(num_classes: int):
    """A deliberately cheap network (pool to 28 px, one conv): the epoch's cost and memory are
    then the data path's (read, decode, crop, batch), which is what grows with N if anything does."""
    from torch import nn

    return nn.Sequential(nn.AvgPool2d(8), nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))


def run_one(n: int, arch: str, workers: int, batch_size: int) -> dict:
    import torch

    from workers.ml.architectures import InputSpec, build_model, input_spec_for
    from workers.ml.data import LazyImages
    from workers.ml.training import TrainConfig, fit

    torch.set_num_threads(2)
    folder = CACHE / "images"
    names = make_images(folder, n)
    targets = [i % 10 for i in range(n)]
    data = LazyImages(names, FolderReader(folder), 3, targets=targets, size_hint=SIDE)
    if arch == "probe":
        model, spec = probe_model(10), InputSpec(3, SIDE, (0.5,) * 3, (0.5,) * 3)
    else:
        model, spec = build_model(arch, 10), input_spec_for(arch)
    config = TrainConfig(epochs=1, batch_size=batch_size, augment=True, device="cpu")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    fit(model, data, None, spec, config, num_workers=workers)
    seconds = time.perf_counter() - start
    return {"n": n, "arch": arch, "workers": workers, "batch_size": batch_size, "seconds": round(seconds, 1),
            "images_per_second": round(n / seconds, 1),
            "rss_before_mb": round(before / 1024), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "peak_worker_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
            "decoded_all_at_once_mb": round(n * 3 * spec.size * spec.size / 2**20)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--arch", default="probe", help="probe, or an architecture in workers.ml.architectures")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child run
    parser.add_argument("--no-write", action="store_true", help="print, do not update docs/benchmarks.md")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.n[0], args.arch, args.workers, args.batch_size)))
        return
    make_images(CACHE / "images", max(args.n))
    rows = []
    for n in args.n:
        out = subprocess.run([sys.executable, "-m", "benchmarks.training_memory", "--one", "--n", str(n),
                              "--arch", args.arch, "--workers", str(args.workers),
                              "--batch-size", str(args.batch_size)], check=True, capture_output=True, text=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    if not args.no_write:
        write(rows)


def write(rows: list[dict]) -> None:
    arch = rows[0]["arch"]
    lines = [f"## Training memory: one epoch over N lazily decoded RGB JPEG items ({arch})", "",
             f"Measured on {machine()}, shared with other jobs. `python -m benchmarks.training_memory "
             f"--n {' '.join(str(r['n']) for r in rows)} --arch {arch} --workers {rows[0]['workers']} "
             f"--batch-size {rows[0]['batch_size']}`: one training epoch (`fit`, augment on: RandomResizedCrop + "
             "flip) on N synthetic 224x224 RGB JPEG files read through a reader callable, a fresh process per N. "
             + ("`probe` is a deliberately cheap network (8x average pool, one conv) so that one epoch over many "
                "items fits the time on this CPU: the memory measured is the data path's (index, loader, decode, "
                "batches), which is what would grow with N. " if arch == "probe" else ""), "",
             ("| N items | seconds | images/s | peak RSS, training process | peak RSS, largest loader worker | "
              "all N decoded at once would be |"),
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['n']:,} | {r['seconds']} | {r['images_per_second']} | {r['peak_rss_mb']} MB | "
              f"{r['peak_worker_rss_mb']} MB | {r['decoded_all_at_once_mb']:,} MB |" for r in rows]
    growth = rows[-1]["peak_rss_mb"] - rows[0]["peak_rss_mb"]
    extra = rows[-1]["decoded_all_at_once_mb"] - rows[0]["decoded_all_at_once_mb"]
    lines += ["", (f"From {rows[0]['n']:,} to {rows[-1]['n']:,} items the training process's peak RSS changed by "
                   f"{growth} MB; decoding every item up front (the old path) would have added {extra:,} MB.")]
    write_section(f"training-memory-{arch}", "\n".join(lines))


if __name__ == "__main__":
    main()
