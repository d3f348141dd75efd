"""Training and scoring throughput of hitl's worker code on a GPU, against plain torch loops.

Runs with torch, torchvision, numpy and Pillow alone (no Django, no database): ``workers.ml`` is
what a GPU Celery worker runs, and the images are JPEG bytes in memory standing in for the
content store (the pipeline's reader is ``hitl.media.item_image_bytes``). Every figure is taken in
the same process, one after the other, so ratios compare like with like:

- **training**: images/s of ``workers.ml.training.fit`` (the cycle's training: lazy JPEG dataset,
  DataLoader workers, RandomResizedCrop + flip, bf16 autocast, channels-last, AdamW + OneCycle),
  against (a) a plain loop over the same dataset, loader, model and batch size, and (b) a plain
  loop over images already decoded on the GPU (the model's own speed, no input pipeline). Target:
  cycle / (a) >= 0.9.
- **scoring**: images/s from stored JPEG bytes to stored uncertainty scores (``model_outputs``
  then ``score_uncertainty``), with CPU decoding in loader workers and with
  ``torchvision.io.decode_jpeg`` on the GPU, against the raw model's bf16 inference rate on
  images already on the GPU. Target: >= 0.7 of the raw rate.

    python -m benchmarks.gpu_throughput                      # on a CUDA machine: the full run
    python -m benchmarks.gpu_throughput --device cpu --n 64 --size 64 --epochs 2 --batch 16  # smoke

Prints one JSON document; ``--write`` also rewrites the ``gpu-throughput`` section of
docs/benchmarks.md. Nothing here was run on a GPU until that section says so.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.io import decode_jpeg
from torchvision.transforms import v2

from workers.ml.architectures import build_model, input_spec_for
from workers.ml.data import LazyImages, make_loader, train_transform
from workers.ml.images import normalize
from workers.ml.inference import accelerated, model_input, model_outputs, prepare_model
from workers.ml.training import TrainConfig, fit, seed_everything
from workers.ml.uncertainty import score_uncertainty

NUM_CLASSES = 10


def synthetic_jpegs(n: int, side: int, seed: int = 0) -> list[bytes]:
    """n RGB JPEGs (quality 90): smooth random colour fields with noise, so they compress like
    photos rather than like flat colour."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, side, dtype=np.float32)
    out = []
    for _ in range(n):
        corners = rng.uniform(0, 255, size=(2, 2, 3)).astype(np.float32)
        top = corners[0, 0] * (1 - ramp[:, None]) + corners[0, 1] * ramp[:, None]
        bottom = corners[1, 0] * (1 - ramp[:, None]) + corners[1, 1] * ramp[:, None]
        field = top[None] * (1 - ramp[:, None, None]) + bottom[None] * ramp[:, None, None]
        field += rng.normal(0, 12, size=field.shape).astype(np.float32)
        buffer = io.BytesIO()
        Image.fromarray(field.clip(0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_epochs(run_epoch: Callable[[], None], epochs: int, device: torch.device) -> float:
    """Seconds per epoch, the first epoch (warm-up: cuDNN autotuning, worker start) left out."""
    run_epoch()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(epochs - 1):
        run_epoch()
    synchronize(device)
    return (time.perf_counter() - started) / max(1, epochs - 1)


def cycle_training_rate(data: LazyImages, args: argparse.Namespace, device: torch.device) -> float:
    """images/s of the cycle's own training function, epochs after the first."""
    model = build_model(args.arch, NUM_CLASSES)
    spec = input_spec_for(args.arch, args.size)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch, augment=True, device=str(device), seed=0)
    stamps: list[float] = []

    def on_epoch(_stats: object) -> None:
        synchronize(device)
        stamps.append(time.perf_counter())

    fit(model, data, None, spec, config, on_epoch, num_workers=args.workers)
    per_epoch = (stamps[-1] - stamps[0]) / max(1, len(stamps) - 1)
    return len(data) / per_epoch


def plain_loader_rate(data: LazyImages, args: argparse.Namespace, device: torch.device) -> float:
    """A plain loop: same dataset, loader, transform, model, batch size, optimizer; nothing else."""
    spec = input_spec_for(args.arch, args.size)
    model = prepare_model(build_model(args.arch, NUM_CLASSES), device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = make_loader(data, train_transform(spec, True), batch_size=args.batch, num_workers=args.workers,
                         shuffle=True, generator=seed_everything(0), pin_memory=device.type == "cuda")

    def epoch() -> None:
        for images, target in loader:
            x = model_input(images, spec, device)
            with accelerated(device):
                loss = F.cross_entropy(model(x).float(), target.to(device, non_blocking=True))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return len(data) / timed_epochs(epoch, args.epochs, device)


def resident_batches(n: int, args: argparse.Namespace, device: torch.device) -> list[torch.Tensor]:
    """Normalised input batches already on the device (what a model-only loop feeds)."""
    spec = input_spec_for(args.arch, args.size)
    generator = torch.Generator().manual_seed(0)
    batches = []
    for start in range(0, n, args.batch):
        raw = torch.randint(0, 256, (min(args.batch, n - start), 3, spec.size, spec.size),
                            dtype=torch.uint8, generator=generator)
        batches.append(model_input(raw, spec, device))
    return batches


def plain_resident_rate(n: int, args: argparse.Namespace, device: torch.device) -> float:
    """The model's own training speed: batches already decoded and on the device."""
    model = prepare_model(build_model(args.arch, NUM_CLASSES), device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batches = resident_batches(n, args, device)
    targets = [torch.randint(0, NUM_CLASSES, (len(b),), device=device) for b in batches]

    def epoch() -> None:
        for x, target in zip(batches, targets, strict=True):
            with accelerated(device):
                loss = F.cross_entropy(model(x).float(), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return n / timed_epochs(epoch, args.epochs, device)


@torch.inference_mode()
def raw_inference_rate(n: int, args: argparse.Namespace, device: torch.device) -> float:
    model = prepare_model(build_model(args.arch, NUM_CLASSES), device).eval()
    batches = resident_batches(n, replace_batch(args, args.score_batch), device)

    def epoch() -> None:
        for x in batches:
            with accelerated(device):
                model(x)

    return n / timed_epochs(epoch, 3, device)


def replace_batch(args: argparse.Namespace, batch: int) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), "batch": batch})


def scoring_rate_cpu_decode(data: LazyImages, args: argparse.Namespace, device: torch.device) -> float:
    """Stored JPEG bytes -> margin scores through the pipeline's own inference (decode in loader
    workers on the CPU)."""
    model = build_model(args.arch, NUM_CLASSES)
    spec = input_spec_for(args.arch, args.size)

    def run() -> None:
        outputs = model_outputs(model, data, spec, batch_size=args.score_batch, device=device,
                                num_workers=args.workers)
        score_uncertainty("margin", outputs.probs)

    return len(data) / timed_epochs(run, 3, device)


@torch.inference_mode()
def scoring_rate_gpu_decode(jpegs: list[bytes], args: argparse.Namespace, device: torch.device) -> float | None:
    """Stored JPEG bytes -> margin scores with nvJPEG: ``decode_jpeg`` on the device, resize and
    centre-crop there, the same model and normalisation. None where CUDA decoding is unavailable."""
    if device.type != "cuda":
        return None
    spec = input_spec_for(args.arch, args.size)
    model = prepare_model(build_model(args.arch, NUM_CLASSES), device).eval()
    fit_to_input = v2.Compose([v2.Resize(spec.size, antialias=True), v2.CenterCrop(spec.size)])
    encoded = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in jpegs]

    def run() -> None:
        parts = []
        for start in range(0, len(encoded), args.score_batch):
            images = decode_jpeg(encoded[start:start + args.score_batch], device=device)
            batch = torch.stack([fit_to_input(image) for image in images])
            x = normalize(batch, spec).contiguous(memory_format=torch.channels_last)
            with accelerated(device):
                parts.append(torch.softmax(model(x).float(), dim=1).cpu())
        score_uncertainty("margin", torch.cat(parts).numpy())

    try:
        return len(jpegs) / timed_epochs(run, 3, device)
    except RuntimeError as error:  # a torchvision build without nvJPEG
        print(f"GPU decoding unavailable: {error}")
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--n", type=int, default=8192, help="training images (JPEG bytes in memory)")
    parser.add_argument("--side", type=int, default=256, help="stored JPEG side in pixels")
    parser.add_argument("--size", type=int, default=224, help="model input side")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--score-batch", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per training measurement (first is warm-up)")
    parser.add_argument("--workers", type=int, default=8, help="DataLoader decoding processes")
    parser.add_argument("--write", action="store_true", help="rewrite the docs/benchmarks.md section")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (the first is a warm-up)")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run on the GPU machine, or pass --device cpu for a smoke run")
    torch.backends.cudnn.benchmark = True
    jpegs = synthetic_jpegs(args.n, args.side)
    targets = np.random.default_rng(0).integers(0, NUM_CLASSES, size=args.n).tolist()
    keys = [str(i) for i in range(args.n)]
    data = LazyImages(keys, lambda key: jpegs[int(key)], 3, targets=targets, size_hint=args.size)
    unlabeled = LazyImages(keys, lambda key: jpegs[int(key)], 3, size_hint=args.size)
    figures = {
        "train_cycle": cycle_training_rate(data, args, device),
        "train_plain_loader": plain_loader_rate(data, args, device),
        "train_plain_resident": plain_resident_rate(args.n, args, device),
        "score_cpu_decode": scoring_rate_cpu_decode(unlabeled, args, device),
        "score_gpu_decode": scoring_rate_gpu_decode(jpegs, args, device),
        "infer_raw": raw_inference_rate(args.n, args, device),
    }
    best_scoring = max(v for v in (figures["score_cpu_decode"], figures["score_gpu_decode"]) if v is not None)
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "args": vars(args), "images_per_second": figures,
        "ratios": {
            "train_cycle_vs_plain_loader": figures["train_cycle"] / figures["train_plain_loader"],
            "train_cycle_vs_resident": figures["train_cycle"] / figures["train_plain_resident"],
            "score_best_vs_raw_inference": best_scoring / figures["infer_raw"],
        },
    }
    print(json.dumps(report, indent=2))
    if args.write:
        from benchmarks.common import write_section

        write_section("gpu-throughput", render(report))


def render(report: dict) -> str:
    a, f, r = report["args"], report["images_per_second"], report["ratios"]
    gpu = "n/a" if f["score_gpu_decode"] is None else f"{f['score_gpu_decode']:,.0f}"
    return f"""## GPU throughput: a cycle's training and scoring against plain torch loops

`python -m benchmarks.gpu_throughput --write` on {report['device']}, torch {report['torch']}:
{a['arch']} at {a['size']} px from {a['n']:,} stored {a['side']} px JPEGs, batch {a['batch']} (scoring
{a['score_batch']}), {a['workers']} loader workers, bf16 autocast and channels-last, epochs after the first.

| what | images/s |
| --- | ---: |
| cycle training (`workers.ml.training.fit`) | {f['train_cycle']:,.0f} |
| plain loop, same loader and model | {f['train_plain_loader']:,.0f} |
| plain loop, images already on the device | {f['train_plain_resident']:,.0f} |
| scoring, JPEG bytes -> scores, CPU decode in workers | {f['score_cpu_decode']:,.0f} |
| scoring, JPEG bytes -> scores, `decode_jpeg` on the device | {gpu} |
| raw bf16 inference, images on the device | {f['infer_raw']:,.0f} |

Cycle vs plain loop on the same loader: **{r['train_cycle_vs_plain_loader']:.2f}** (target 0.9); vs the
model-only loop: {r['train_cycle_vs_resident']:.2f}. Best scoring path vs raw inference:
**{r['score_best_vs_raw_inference']:.2f}** (target 0.7).
"""


if __name__ == "__main__":
    main()
