"""Cold start: images with no prediction come in by API (base64 or multipart) and by
`manage.py hitl import-images` (a folder, or an ImageFolder of labeled images)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from PIL import Image

from hitl.models import Item, Label, LabelSource, LabelStatus, Prediction
from tests.conftest import LABELS

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
