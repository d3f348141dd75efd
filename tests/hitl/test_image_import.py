"""Cold start: images with no prediction come in by API (base64 or multipart) and by
`manage.py hitl import-images` (a folder, or an ImageFolder of labeled images)."""

from __future__ import annotations

import base64
import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from PIL import Image

from hitl.errors import Conflict
from hitl.models import (
    GoldenItem,
    GoldenSet,
    Item,
    Label,
    LabelSource,
    LabelStatus,
    Prediction,
    ReviewReason,
    ReviewTask,
    ReviewTaskStatus,
    Split,
)
from hitl.services.golden import golden_set_freeze
from hitl.services.ingestion import ImportedImage, items_import
from hitl.services.labels import label_submit
from hitl.services.selection import review_batch_request
from tests.conftest import LABELS
from workers.pipelines.selection import review_batch_select

pytestmark = pytest.mark.django_db


def _png(seed: int, size: tuple[int, int] = (40, 30)) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_api_adds_images_without_predictions_and_is_idempotent(project, project_admin_client) -> None:
    url = f"/api/v1/projects/{project.slug}/images/"
    body = {"images": [{"image_base64": _b64(_png(1)), "name": "a.png"}, {"image_base64": _b64(_png(2))}]}
    first = project_admin_client.post(url, body, format="json")
    assert first.status_code == 201, first.content
    assert first.json()["items_created"] == 2 and first.json()["labels_created"] == 0
    again = project_admin_client.post(url, body, format="json")
    assert again.status_code == 201 and again.json()["items_created"] == 0
    assert again.json()["item_ids"] == first.json()["item_ids"]
    items = Item.objects.filter(project=project)
    assert items.count() == 2 and not Prediction.objects.filter(item__in=items).exists()
    assert sorted((i.width, i.height) for i in items) == [(40, 30), (40, 30)]


def test_api_multipart_upload_with_a_label_records_an_import_label(project, project_admin_client) -> None:
    files = [io.BytesIO(_png(i)) for i in range(3)]
    for i, f in enumerate(files):
        f.name = f"cam-{i}.png"
    response = project_admin_client.post(f"/api/v1/projects/{project.slug}/images/",
                                    {"images": files, "label": LABELS[1]}, format="multipart")
    assert response.status_code == 201, response.content
    assert response.json()["items_created"] == 3 and response.json()["labels_created"] == 3
    labels = Label.objects.filter(item__project=project, status=LabelStatus.CURRENT)
    assert {(label.value, label.source) for label in labels} == {(LABELS[1], LabelSource.IMPORT)}


def test_api_bad_input_is_a_400_that_says_what_to_fix_and_stores_nothing(project, project_admin_client) -> None:
    url = f"/api/v1/projects/{project.slug}/images/"
    cases = [({"images": []}, "images"),
             ({"images": [{"image_base64": _b64(_png(1))}, {"image_base64": "!!notbase64"}]}, "images[1].image_base64"),
             ({"images": [{"image_base64": _b64(b"not an image at all")}]}, "images[0]"),
             ({"images": [{"image_base64": _b64(_png(1)), "label": "unicorn"}]}, "images[0]"),
             ({"images": [{"image_base64": _b64(_png(1)), "colour": "red"}]}, "images[0].colour")]
    for body, field in cases:
        response = project_admin_client.post(url, body, format="json")
        assert response.status_code == 400, (body, response.content)
        assert field in response.content.decode(), response.content
    assert not Item.objects.filter(project=project).exists()


def test_only_operators_may_import(project, reviewer_client) -> None:
    response = reviewer_client.post(f"/api/v1/projects/{project.slug}/images/",
                                    {"images": [{"image_base64": _b64(_png(1))}]}, format="json")
    assert response.status_code == 403
    assert not Item.objects.filter(project=project).exists()


def test_command_imports_a_plain_folder_unlabeled(project, tmp_path: Path) -> None:
    for i in range(4):
        (tmp_path / f"{i}.png").write_bytes(_png(i))
    (tmp_path / ".DS_Store").write_bytes(b"junk")
    out = io.StringIO()
    call_command("hitl", "import-images", "--project", project.slug, str(tmp_path), stdout=out)
    assert "4 new items" in out.getvalue()
    assert Item.objects.filter(project=project).count() == 4
    assert not Label.objects.filter(item__project=project).exists()


def test_command_imports_an_image_folder_with_labels_and_their_source(project, tmp_path: Path) -> None:
    root = tmp_path / "photos"
    for c, label in enumerate(LABELS[1:3]):  # folder names: no "/" (t-shirt/top)
        (root / label).mkdir(parents=True)
        for i in range(3):
            (root / label / f"{i}.png").write_bytes(_png(10 * c + i))
    call_command("hitl", "import-images", "--project", project.slug, str(root), "--chunk", "2", stdout=io.StringIO())
    labels = Label.objects.filter(item__project=project, status=LabelStatus.CURRENT)
    assert sorted(label.value for label in labels) == sorted([LABELS[1]] * 3 + [LABELS[2]] * 3)
    assert {label.source for label in labels} == {LabelSource.IMPORT}
    assert {label.reviewer_name for label in labels} == {f"import: {root.resolve()}"}
    assert min(label.external_id for label in labels) == f"{LABELS[2]}/0.png"
    call_command("hitl", "import-images", "--project", project.slug, str(root), stdout=io.StringIO())
    assert Label.objects.filter(item__project=project).count() == 6  # a rerun adds nothing


def test_command_refuses_an_unknown_label_folder_and_stores_nothing(project, tmp_path: Path) -> None:
    (tmp_path / "unicorn").mkdir()
    (tmp_path / "unicorn" / "0.png").write_bytes(_png(0))
    with pytest.raises(CommandError, match="unknown label 'unicorn'"):
        call_command("hitl", "import-images", "--project", project.slug, str(tmp_path), stdout=io.StringIO())
    assert not Item.objects.filter(project=project).exists()
    (tmp_path / "loose.png").write_bytes(_png(1))
    with pytest.raises(CommandError, match="mixes files"):
        call_command("hitl", "import-images", "--project", project.slug, str(tmp_path), stdout=io.StringIO())


# --- an import's labels never bypass review (issue 8: golden-set and held-out labels come only
# through review tasks) -----------------------------------------------------------------------------


def _import(client, project, images: list[tuple[bytes, str, str | None]]):
    body = {"images": [{"image_base64": _b64(data), "name": name, **({"label": label} if label else {})}
                       for data, name, label in images]}
    return client.post(f"/api/v1/projects/{project.slug}/images/", body, format="json")


def _item(project, data: bytes) -> Item | None:
    return Item.objects.filter(project=project, sha256=hashlib.sha256(data).hexdigest()).first()


def _labels(project) -> list[tuple[int, str, str]]:
    return sorted(Label.objects.filter(item__project=project).values_list("item_id", "value", "status"))


def test_an_import_may_not_label_an_existing_golden_set_item_and_stores_nothing(project, project_admin_client) -> None:
    project.holdout_fraction = 0.0
    project.save()
    golden_png, new_png = _png(1), _png(2)
    assert _import(project_admin_client, project, [(golden_png, "g.png", None)]).status_code == 201
    golden = _item(project, golden_png)
    GoldenItem.objects.create(project=project, item=golden, source="golden")
    before = _labels(project)
    response = _import(project_admin_client, project, [(new_png, "new.png", LABELS[0]), (golden_png, "g.png", LABELS[1])])
    assert response.status_code == 400, response.content
    error = response.json()["errors"][0]
    assert error["field"] == "images[1]"
    assert f"item {golden.id} is a golden-set item" in error["message"] and "review task" in error["message"]
    assert _item(project, new_png) is None and _labels(project) == before  # all or nothing
    # without its label the golden item is merely found again; the new image is imported
    again = _import(project_admin_client, project, [(new_png, "new.png", LABELS[0]), (golden_png, "g.png", None)])
    assert again.status_code == 201 and again.json()["labels_created"] == 1
    assert not Label.objects.filter(item=golden).exists()


def test_existing_held_out_items_take_no_import_label_but_new_ones_and_reruns_do(project, project_admin_client) -> None:
    project.holdout_fraction = 1.0  # every image lands in the held-out split
    project.save()
    first = _import(project_admin_client, project, [(_png(1), "a.png", LABELS[0])])
    assert first.status_code == 201 and first.json()["labels_created"] == 1  # a new item: its label is the import's
    held_out = _item(project, _png(1))
    assert held_out.split == Split.HOLDOUT
    rerun = _import(project_admin_client, project, [(_png(1), "a.png", LABELS[0])])
    assert rerun.status_code == 201 and rerun.json()["labels_created"] == 0  # the same import again: nothing written
    for name, label in (("a.png", LABELS[2]), ("renamed.png", LABELS[0])):  # another label, or another import
        response = _import(project_admin_client, project, [(_png(1), name, label)])
        assert response.status_code == 400, response.content
        assert f"item {held_out.id} is held out for evaluation" in response.json()["errors"][0]["message"]
    unlabeled = _import(project_admin_client, project, [(_png(3), "b.png", None)])
    assert unlabeled.status_code == 201
    refused = _import(project_admin_client, project, [(_png(3), "b.png", LABELS[1])])
    assert refused.status_code == 400 and "held out for evaluation" in refused.content.decode()
    assert [(v, s) for _, v, s in _labels(project)] == [(LABELS[0], LabelStatus.CURRENT)]


def test_an_import_may_not_answer_an_audit_draw(project, project_admin_client, ingest, media_root: Path) -> None:
    project.holdout_fraction = 0.0
    project.save()
    ingest(range(12))
    batch = review_batch_request(project=project, requested_by="otto", size=4, strategy="margin",
                                 audit_fraction=1.0, seed=1)
    review_batch_select(batch_id=batch.id)
    audited = ReviewTask.objects.filter(batch=batch, reason=ReviewReason.AUDIT).select_related("item").first()
    data = next(p.read_bytes() for p in (media_root / "storage" / "imgs").glob("*.png")
                if hashlib.sha256(p.read_bytes()).hexdigest() == audited.item.sha256)
    response = _import(project_admin_client, project, [(data, "audit.png", LABELS[0])])
    assert response.status_code == 400, response.content
    assert f"item {audited.item_id} is drawn for an audit slice" in response.json()["errors"][0]["message"]
    audited.refresh_from_db()
    assert audited.status == ReviewTaskStatus.OPEN and not Label.objects.filter(item_id=audited.item_id).exists()


def test_the_command_refuses_a_golden_item_in_any_chunk_before_storing_one(project, tmp_path: Path) -> None:
    project.holdout_fraction = 0.0
    project.save()
    root = tmp_path / "photos"
    (root / LABELS[1]).mkdir(parents=True)
    for i in range(4):
        (root / LABELS[1] / f"{i}.png").write_bytes(_png(i))
    items_import(project=project, images=[ImportedImage("3.png", _png(3))], source="earlier")
    golden = _item(project, _png(3))
    GoldenItem.objects.create(project=project, item=golden, source="golden")
    with pytest.raises(CommandError, match=rf"nothing imported: 1 labeled images are refused: {LABELS[1]}/3.png: "
                                           rf"item {golden.id} is a golden-set item"):
        call_command("hitl", "import-images", "--project", project.slug, str(root), "--chunk", "2",
                     stdout=io.StringIO())
    assert list(Item.objects.filter(project=project)) == [golden]  # the first chunk was not stored either
    assert not Label.objects.filter(item__project=project).exists()


def test_import_labels_never_make_golden_set_members_until_reviewed(project, ingest) -> None:
    """Whatever way an import's label came to a reserved or audited item (before this rule, or
    through a race with a golden draw), a frozen golden set takes the item only once a reviewer's
    label is current."""
    ingest(range(20))
    batch = review_batch_request(project=project, requested_by="otto", size=6, strategy="margin",
                                 audit_fraction=0.5, seed=2)
    review_batch_select(batch_id=batch.id)
    audit = list(ReviewTask.objects.filter(batch=batch, reason=ReviewReason.AUDIT).order_by("id"))
    reserved = Item.objects.filter(project=project).exclude(review_tasks__batch=batch).order_by("id")[:2]
    GoldenItem.objects.bulk_create([GoldenItem(project=project, item=item, source="golden") for item in reserved])
    for item_id in [t.item_id for t in audit] + [item.id for item in reserved]:
        label_submit(item_id=item_id, value=LABELS[0], source=LabelSource.IMPORT, reviewer_name="import: x")
    with pytest.raises(Conflict, match="no reviewed golden-set items yet"):
        golden_set_freeze(project=project, actor="otto", reason="imports only", from_audit=True)
    assert not GoldenSet.objects.exists()
    reviewed = [audit[0], ReviewTask.objects.create(batch=batch, item=reserved[0], reason=ReviewReason.GOLDEN, rank=99)]
    for task in reviewed:
        label_submit(item_id=task.item_id, value=LABELS[1], source=LabelSource.WEB, reviewer_name="rita",
                     review_task_id=task.id)
    golden = golden_set_freeze(project=project, actor="otto", reason="reviewed ones", from_audit=True)
    assert golden.item_ids == sorted(task.item_id for task in reviewed)
