"""Trust events get an Ed25519 signature. Chains recorded before signing are signed here, but
only where they still verify: a chain already broken stays unsigned, and so reported."""

import json

from django.db import migrations, models


def sign_existing_chains(apps, schema_editor):
    from hitl.services.trust import GENESIS_HASH, _append_head, event_hash
    from hitl.trust_keys import signing_key

    TrustEvent = apps.get_model("hitl", "TrustEvent")
    project_ids = TrustEvent.objects.values_list("project_id", flat=True).distinct()
    if not project_ids:
        return
    key = signing_key()
    for project_id in project_ids:
        events = list(TrustEvent.objects.filter(project_id=project_id).order_by("sequence"))
        previous = GENESIS_HASH
        intact = True
        for position, event in enumerate(events, 1):
            payload = json.loads(json.dumps(event.payload))
            expected = event_hash(project_id, previous, event.sequence, event.kind, event.actor, payload,
                                  event.created_at.isoformat())
            if event.sequence != position or event.previous_hash != previous or expected != event.hash:
                intact = False
                break
            previous = event.hash
        if not intact:
            continue
        for event in events:
            event.key_id = key.key_id
            event.signature = key.sign(event.hash.encode())
            event.save(update_fields=["key_id", "signature"])
        if events:
            _append_head(project_id, events[-1].sequence, events[-1].hash)


class Migration(migrations.Migration):

    dependencies = [
        ("hitl", "0005_project_membership"),
    ]

    operations = [
        migrations.AddField(
            model_name="trustevent",
            name="key_id",
            field=models.CharField(blank=True, help_text="Which trust key signed the hash.", max_length=16),
        ),
        migrations.AddField(
            model_name="trustevent",
            name="signature",
            field=models.CharField(blank=True, help_text="Ed25519 signature of the hash, base64.", max_length=100),
        ),
        migrations.RunPython(sign_existing_chains, migrations.RunPython.noop),
    ]
