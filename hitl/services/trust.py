"""The trust history: an append-only hash chain per project.

Each event's hash covers its project, content and the previous event's hash, so editing,
deleting or reordering any event but the newest is detected by `trust_verify`. Cutting off the
newest events leaves a valid shorter chain: to detect that, keep the head hash somewhere else
(`manage.py hitl verify-trust` and the trust API print it) and compare.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.utils import timezone

from hitl.models import Project, TrustEvent

GENESIS_HASH = "0" * 64


def _event_hash(project_id: int, previous_hash: str, sequence: int, kind: str, actor: str, payload: Any,
                created_at: str) -> str:
    body = json.dumps(
        {"project": project_id, "previous": previous_hash, "sequence": sequence, "kind": kind, "actor": actor,
         "payload": payload, "created_at": created_at},
        sort_keys=True, separators=(",", ":"),
    )
    return hashlib.sha256(body.encode()).hexdigest()


@transaction.atomic
def trust_record(*, project_id: int, kind: str, actor: str, payload: dict[str, Any]) -> TrustEvent:
    """Append an event to the project's chain (serialised by locking the project row)."""
    Project.objects.select_for_update().get(pk=project_id)
    last = TrustEvent.objects.filter(project_id=project_id).order_by("-sequence").first()
    sequence = last.sequence + 1 if last else 1
    previous_hash = last.hash if last else GENESIS_HASH
    created_at = timezone.now()
    payload = json.loads(json.dumps(payload))  # store exactly what was hashed
    digest = _event_hash(project_id, previous_hash, sequence, kind, actor, payload, created_at.isoformat())
    return TrustEvent.objects.create(
        project_id=project_id, sequence=sequence, kind=kind, actor=actor, payload=payload,
        created_at=created_at, previous_hash=previous_hash, hash=digest,
    )


@dataclass(frozen=True)
class ChainCheck:
    ok: bool
    events: int
    first_bad_sequence: int | None = None
    problem: str = ""
    head_hash: str | None = None  # the last event's hash, only for a chain that verifies


def trust_verify(*, project_id: int) -> ChainCheck:
    previous_hash = GENESIS_HASH
    count = 0
    for count, event in enumerate(TrustEvent.objects.filter(project_id=project_id).order_by("sequence"), 1):
        if event.sequence != count:
            return ChainCheck(False, count, event.sequence, f"sequence {count} is missing")
        if event.previous_hash != previous_hash:
            return ChainCheck(False, count, event.sequence, "does not link to the previous event")
        expected = _event_hash(project_id, previous_hash, event.sequence, event.kind, event.actor, event.payload,
                               event.created_at.isoformat())
        if expected != event.hash:
            return ChainCheck(False, count, event.sequence, "content does not match its hash")
        previous_hash = event.hash
    return ChainCheck(True, count, head_hash=previous_hash)
