"""Deployments get a storage prefix; item images outside the content store are copied into it.

Before this migration an image ingested by ``image_path`` stayed where the deployment put it,
and hitl read it there again to serve or train: whoever could write to the storage volume could
swap it. Each such image is now read once more through the safe reader (no symbolic link on
the path, a regular file), checked against the sha256 recorded at ingestion, and copied into
``items/ab/<sha256>.<ext>``. An image that cannot be copied keeps its old path, which hitl no
longer reads (serving it answers 404), and is listed in MEDIA_ROOT/migration-0004-not-copied.json.
Existing deployments get the default prefix ``<project-slug>/<deployment-name>``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from django.conf import settings
from django.db import migrations, models

import hitl.media

NOT_COPIED_RECORD = "migration-0004-not-copied.json"


def copy_items_into_store(item_model, media_root: Path) -> list[dict]:
    """Copy every item image outside the store into it; returns what could not be copied (and
    writes that list to ``media_root/NOT_COPIED_RECORD`` when it is not empty)."""
    not_copied = []
    outside = item_model.objects.exclude(image__startswith=f"{hitl.media.STORE_FOLDER}/").order_by("id")
    for item in outside.iterator(chunk_size=500):
        reason = _copy_one(item, media_root)
        if reason:
            not_copied.append({"item": item.pk, "project": item.project_id, "image": item.image,
                               "sha256": item.sha256, "reason": reason})
    if not_copied:
        (media_root / NOT_COPIED_RECORD).write_text(json.dumps(not_copied, indent=1))
        print(f"\n  {len(not_copied)} item image(s) could not be copied into the content store; "
              f"hitl will not serve or train on them: see {media_root / NOT_COPIED_RECORD}")
    return not_copied


def _copy_one(item, media_root: Path) -> str | None:
    if item.format not in hitl.media.ALLOWED_FORMATS:
        return f"format {item.format!r} is not one hitl accepts"
    try:
        data = hitl.media.read_beneath(media_root, hitl.media.storage_relative(item.image))
    except hitl.media.ImageRejected as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot read it: {exc.strerror}"
    if hashlib.sha256(data).hexdigest() != item.sha256:
        return "the file changed since ingestion: its sha256 no longer matches the item's"
    target = hitl.media.content_addressed_path(item.sha256, item.format)
    hitl.media.write_once(target, data)
    item.image = target
    item.save(update_fields=["image"])
    return None


def forwards(apps, schema_editor) -> None:
    copy_items_into_store(apps.get_model("hitl", "Item"), Path(settings.MEDIA_ROOT))
    deployment_model = apps.get_model("hitl", "Deployment")
    for deployment in deployment_model.objects.select_related("project").filter(storage_prefix=""):
        deployment.storage_prefix = f"{deployment.project.slug}/{deployment.name}".strip("/")
        deployment.save(update_fields=["storage_prefix"])


class Migration(migrations.Migration):

    dependencies = [
        ("hitl", "0003_cycle_heartbeat"),
    ]

    operations = [
        migrations.AddField(
            model_name="deployment",
            name="storage_prefix",
            field=models.CharField(
                default="",
                help_text="Folder under the storage root that this deployment's image_path values must lie in "
                "(default <project-slug>/<deployment-name>).",
                max_length=300,
                validators=[hitl.media.validate_storage_prefix],
            ),
            preserve_default=False,
        ),
        migrations.RunPython(forwards, migrations.RunPython.noop),
    ]
