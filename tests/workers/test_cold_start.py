"""Cold start: before any model, the first batches are random or k-center picks on a pretrained
backbone's embeddings, and the first cycle fine-tunes that backbone."""

from __future__ import annotations

import io
import uuid

import numpy as np
import pytest
import torch
from PIL import Image

from hitl.models import CycleStatus, Item, LabelSource, ReviewBatchStatus, ReviewTask, Split
from hitl.selectors import model_weights_file
from hitl.services.cycles import cycle_request
from hitl.services.ingestion import ImportedImage, items_import
from hitl.services.labels import label_submit
from hitl.services.projects import project_create
from hitl.services.selection import review_batch_request
from workers.ml.architectures import ARCHITECTURES
from workers.ml.checkpoint import load_checkpoint
from workers.pipelines.cycles import cycle_train
from workers.pipelines.selection import review_batch_select

pytestmark = pytest.mark.django_db


def _photo(colour: tuple[int, int, int], seed: int) -> bytes:
    """A 64 px image of one colour with a little noise (distinct seeds: distinct items)."""
    rng = np.random.default_rng(seed)
    array = np.clip(np.array(colour)[None, None] + rng.normal(0, 8, (64, 64, 3)), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture()
def rgb_project():
    """12 red images and 2 blue ones, no model, no prediction."""
    project = project_create(slug=f"cold-{uuid.uuid4().hex[:6]}", name="cold", labels=["red", "blue"],
                             architecture="efficientnet_lite0", train_config={"epochs": 1, "batch_size": 16})
    images = [ImportedImage(f"red{i}", _photo((200, 30, 30), i)) for i in range(12)]
    images += [ImportedImage(f"blue{i}", _photo((30, 30, 200), 100 + i)) for i in range(2)]
    ids = items_import(project=project, images=images, source="test").item_ids
    return project, ids[:12], ids[12:]


def _select(project, strategy: str, size: int):
    batch = review_batch_request(project=project, requested_by="test", size=size, strategy=strategy, seed=5)
    return review_batch_select(batch_id=batch.id)


def test_a_random_first_batch_needs_no_model(rgb_project) -> None:
    project, red, blue = rgb_project
    batch = _select(project, "random", 5)
    assert batch.status == ReviewBatchStatus.SELECTED and batch.model_version is None
    tasks = list(ReviewTask.objects.filter(batch=batch))
    assert len(tasks) == 5 and len({t.item_id for t in tasks}) == 5
    assert all(t.prediction_id is None for t in tasks) and {t.item_id for t in tasks} <= set(red + blue)


def test_a_diversity_first_batch_covers_both_kinds_of_image(rgb_project) -> None:
    # k-center on the backbone's embeddings takes one image of each colour; two random picks would
    # both be red 66% of the time (12 of 14)
    project, red, blue = rgb_project
    batch = _select(project, "coreset", 2)
    assert batch.status == ReviewBatchStatus.SELECTED, batch.error
    picked = set(ReviewTask.objects.filter(batch=batch).values_list("item_id", flat=True))
    assert len(picked & set(red)) == 1 and len(picked & set(blue)) == 1


def test_a_typiclust_first_batch_takes_the_typical_image_of_each_kind(rgb_project) -> None:
    # two clusters (red, blue), the larger first; random picks would both be red 66% of the time
    project, red, blue = rgb_project
    batch = _select(project, "typiclust", 2)
    assert batch.status == ReviewBatchStatus.SELECTED, batch.error
    tasks = list(ReviewTask.objects.filter(batch=batch).order_by("id"))
    assert [t.item_id in red for t in tasks] == [True, False]


def test_labeled_items_count_as_covered(rgb_project) -> None:
    project, red, blue = rgb_project
    label_submit(item_id=blue[0], value="blue", source=LabelSource.IMPORT, reviewer_name="rita")
    batch = _select(project, "coreset", 1)
    picked = ReviewTask.objects.get(batch=batch).item_id
    assert picked in red  # the labeled blue image covers the blue ones


def test_a_model_strategy_before_any_model_fails_saying_what_to_use(rgb_project) -> None:
    project, _, _ = rgb_project
    batch = _select(project, "margin", 3)
    assert batch.status == ReviewBatchStatus.FAILED
    assert "no production model yet" in batch.error and "random or coreset" in batch.error


def test_the_first_cycle_fine_tunes_the_pretrained_backbone(rgb_project) -> None:
    project, red, blue = rgb_project
    for item in red[:6] + blue:
        label_submit(item_id=item, value="red" if item in red else "blue", source=LabelSource.IMPORT, reviewer_name="rita")
    Item.objects.filter(id__in=red[:6] + blue).update(split=Split.TRAIN)
    cycle = cycle_request(project=project, requested_by="test")
    cycle_train(cycle_id=cycle.id)
    cycle.refresh_from_db()
    assert cycle.status == CycleStatus.EVALUATING, cycle.error
    model, meta = load_checkpoint(model_weights_file(cycle.candidate_version)[0])
    assert meta.architecture == "efficientnet_lite0"
    imagenet = ARCHITECTURES["efficientnet_lite0"].pretrained()["_blocks.10._depthwise_conv.weight"]
    tuned = model.state_dict()["_blocks.10._depthwise_conv.weight"]
    torch.manual_seed(0)
    fresh = ARCHITECTURES["efficientnet_lite0"].build(2).state_dict()["_blocks.10._depthwise_conv.weight"]
    # one epoch moves the ImageNet weights a little; a model trained from scratch would be far off
    assert (tuned - imagenet).abs().mean() < 0.1 * (fresh - imagenet).abs().mean()
