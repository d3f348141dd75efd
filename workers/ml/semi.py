"""Training on the unlabeled pool: confident pseudo-labels and FixMatch-style consistency.

Both methods take each unlabeled image's *weak* view (flip and small shift) through the model and
keep the predicted class as a pseudo-label when its probability reaches a threshold. Pseudo-label
(Lee 2013) trains on that same weak view; FixMatch (Sohn et al. 2020) trains on a *strong* view
of the image (RandAugment-like distortions and a cut-out square), so the model must give the
same answer under heavy change. Pseudo-labels live only inside a training step: nothing here
stores them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from workers.ml.architectures import InputSpec
from workers.ml.data import Transformed, _seed_worker, eval_transform

SEMI_SUPERVISED_METHODS = ("off", "pseudo_label", "fixmatch")
# v2.RandAugment draws one distortion per call, shared by the whole tensor it gets; calling it on
# groups of this many images keeps the strong views varied at a tenth of a per-image call's cost.
STRONG_GROUP = 8
CUTOUT_SHARE = 0.5  # side of FixMatch's cut-out square, at most this share of the image's side


def weak_augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and translations of up to 1/8 of the side, per image, on a
    normalised float batch [n, c, h, w]."""
    n = batch.shape[0]
    flip = torch.rand(n, generator=generator) < 0.5
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * 0.25  # grid units: 2 = full side
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = torch.where(flip, -1.0, 1.0)
    theta[:, 1, 1] = 1.0
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta.to(batch.device), list(batch.shape), align_corners=False)
    return F.grid_sample(batch, grid, padding_mode="border", align_corners=False)


def strong_distort(images: torch.Tensor) -> torch.Tensor:
    """RandAugment (torchvision transforms.v2: two random distortions of magnitude 9 of 31) on
    uint8 images [n, c, h, w], drawn per group of STRONG_GROUP images."""
    distort = v2.RandAugment(num_ops=2, magnitude=9)
    return torch.cat([distort(group) for group in images.split(STRONG_GROUP)])


def cutout(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image with one square of random side (up to CUTOUT_SHARE of its side) set to 0,
    the dataset mean after normalisation."""
    n, _, h, w = batch.shape
    side = (torch.rand(n, generator=generator) * CUTOUT_SHARE * min(h, w)).long()[:, None, None]
    top = (torch.rand(n, generator=generator) * h).long()[:, None, None] - side // 2
    left = (torch.rand(n, generator=generator) * w).long()[:, None, None] - side // 2
    rows = torch.arange(h)[None, :, None]
    cols = torch.arange(w)[None, None, :]
    inside = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
    return batch.masked_fill(inside[:, None].to(batch.device), 0.0)


@dataclass(frozen=True)
class UnlabeledLoss:
    loss: torch.Tensor  # mean over the unlabeled batch, masked-out images counting 0
    confident: torch.Tensor  # bool [n]: the weak view's top probability reached the threshold
    pseudo_labels: torch.Tensor  # int64 [n]: the weak view's predicted classes


def unlabeled_loss(weak_logits: torch.Tensor, trained_logits: torch.Tensor, threshold: float) -> UnlabeledLoss:
    """Cross-entropy of ``trained_logits`` against the weak view's confident predictions. For
    pseudo-labeling ``trained_logits`` are the weak logits themselves, for FixMatch the strong
    view's; the targets never carry a gradient."""
    probs = torch.softmax(weak_logits.detach().float(), dim=1)
    confidence, pseudo = probs.max(dim=1)
    confident = confidence >= threshold
    per_image = F.cross_entropy(trained_logits.float(), pseudo, reduction="none")
    return UnlabeledLoss((per_image * confident).mean(), confident, pseudo)


def unlabeled_draws(pool_size: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` pool indices for one epoch: whole shuffled passes over the pool, so every image
    is drawn as evenly as the count allows."""
    passes = -(-count // pool_size)
    return torch.cat([torch.randperm(pool_size, generator=generator) for _ in range(passes)])[:count]


def unlabeled_batches(data: Dataset, spec: InputSpec, draws: torch.Tensor, batch_size: int, *,
                      num_workers: int = 0, pin_memory: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(uint8 images [b, c, s, s], their pool indices [b]) for the drawn indices, in order; a
    lazy pool is decoded by ``num_workers`` processes while the model runs."""
    indices = draws.tolist()
    loader = DataLoader(Transformed(data, eval_transform(spec)), batch_size=batch_size, sampler=indices,
                        num_workers=num_workers, worker_init_fn=_seed_worker if num_workers else None,
                        pin_memory=pin_memory)
    for (images, _), start in zip(loader, range(0, len(indices), batch_size), strict=True):
        yield images, draws[start:start + len(images)]
