"""The trust history: an append-only, hash-chained and signed record per project.

Three layers, so that trusting the database is not needed:
- each event's hash covers its project, content and the previous event's hash (editing, deleting
  or reordering an event breaks the chain);
- each hash is signed with an Ed25519 key that lives in a file beside the web and the workers
  (``hitl.trust_keys``): a chain rewritten with recomputed hashes has no valid signatures;
- after each event commits, the chain's head (sequence and hash) is appended to a file outside
  the database (``HITL_TRUST_HEAD_FILE``): cutting off the newest events shows against it.

``trust_verify`` checks all three over the whole chain, names the first bad event with the
likely cause, and records the result, signed (``TrustVerification``; beat repeats it every
``HITL_TRUST_FULL_CHECK_SECONDS``). ``trust_status``, for pages, checks only the events written
since that record (and that its last event is unchanged), so a page costs about the same with 10
events or 100,000; a record that failed is shown as it stands, and a full check runs in its place
when there is no record to believe (none, badly signed, dated ahead, or older than twice that
interval) or anything newer does not line up.
``trust_export`` writes JSON lines that ``scripts/verify_trust_export.py`` verifies offline with
the public keys alone.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from hitl.models import Project, TrustEvent, TrustVerification
from hitl.trust_keys import public_keys, signing_key, verify_signature

GENESIS_HASH = "0" * 64
TRUST_VERIFY_COOLDOWN_SECONDS = 30  # a person's full check runs at most this often per project
EXPORT_FORMAT = "hitl-trust-export/1"


def event_hash(project_id: int, previous_hash: str, sequence: int, kind: str, actor: str, payload: Any,
               created_at: str) -> str:
    """sha256 of the event's canonical JSON (sorted keys, no spaces); the offline verifier
    computes exactly this."""
    body = json.dumps(
        {"project": project_id, "previous": previous_hash, "sequence": sequence, "kind": kind,
         "actor": actor, "payload": payload, "created_at": created_at},
        sort_keys=True, separators=(",", ":"),
    )
    return hashlib.sha256(body.encode()).hexdigest()


def _hash_of(event: TrustEvent) -> str:
    return event_hash(event.project_id, event.previous_hash, event.sequence, event.kind, event.actor,
                      event.payload, event.created_at.isoformat())


def _append_head(project_id: int, sequence: int, digest: str) -> None:
    """One JSON line per event, appended with O_APPEND (whole lines from many processes) and
    fsynced. Written after the commit, so a crash in between leaves the file behind the database,
    which verification tolerates (those events are still signed); never ahead of it."""
    path = Path(settings.HITL_TRUST_HEAD_FILE)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"project": project_id, "sequence": sequence, "hash": digest}) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class ExternalHead:
    sequence: int
    hash: str


HEAD_FILE_BLOCK = 64 * 1024


def external_head(project_id: int) -> ExternalHead | None:
    """The newest head the file records for the project. The file holds a line per event of
    every project, so it is read from its end, a block at a time, up to one block past the first
    block holding a line of this project (lines that concurrent commits append land a few lines
    apart, never a block)."""
    path = Path(settings.HITL_TRUST_HEAD_FILE)
    if not path.exists():
        return None
    head: ExternalHead | None = None
    with open(path, "rb") as handle:
        position, partial, past_found = handle.seek(0, os.SEEK_END), b"", 0
        while position > 0 and past_found < 2:
            size = min(HEAD_FILE_BLOCK, position)
            position -= size
            handle.seek(position)
            lines = (handle.read(size) + partial).split(b"\n")
            partial, whole = (lines[0], lines[1:]) if position > 0 else (b"", lines)
            for entry in filter(None, (_head_entry(line, project_id) for line in whole)):
                if head is None or entry.sequence > head.sequence:
                    head = entry
            past_found += head is not None
    return head


def _head_entry(line: bytes, project_id: int) -> ExternalHead | None:
    try:
        entry = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # a torn last line after a crash mid-write, or the empty string after the last newline
    if not isinstance(entry, dict) or entry.get("project") != project_id:
        return None
    try:
        return ExternalHead(int(entry["sequence"]), str(entry["hash"]))
    except (KeyError, TypeError, ValueError):
        return None


@transaction.atomic
def trust_record(*, project_id: int, kind: str, actor: str, payload: dict[str, Any]) -> TrustEvent:
    """Append a signed event to the project's chain (serialised by locking the project row)."""
    Project.objects.select_for_update().get(pk=project_id)
    last = TrustEvent.objects.filter(project_id=project_id).order_by("-sequence").first()
    sequence = last.sequence + 1 if last else 1
    previous_hash = last.hash if last else GENESIS_HASH
    created_at = timezone.now()
    payload = json.loads(json.dumps(payload))  # store exactly what was hashed
    digest = event_hash(project_id, previous_hash, sequence, kind, actor, payload, created_at.isoformat())
    key = signing_key()
    event = TrustEvent.objects.create(
        project_id=project_id, sequence=sequence, kind=kind, actor=actor, payload=payload,
        created_at=created_at, previous_hash=previous_hash, hash=digest,
        key_id=key.key_id, signature=key.sign(digest.encode()),
    )
    transaction.on_commit(lambda: _append_head(project_id, sequence, digest))
    return event


@dataclass(frozen=True)
class ChainCheck:
    ok: bool
    events: int
    first_bad_sequence: int | None = None
    problem: str = ""
    cause: str = ""  # edited, deleted, reordered, truncated, forged
    head_hash: str | None = None  # the last event's hash, only for a chain that verifies
    full_check_at: datetime | None = None  # when every event was last verified
    checked_now: int = 0  # events this check verified itself (all of them for a full check)


def _broken(events: int, sequence: int, cause: str, problem: str) -> ChainCheck:
    return ChainCheck(False, events, sequence, problem, cause)


def _check_events(events: list[TrustEvent], keys: dict, *, first: int = 1,
                  previous_hash: str = GENESIS_HASH) -> ChainCheck | None:
    """The first bad event, or None when links, hashes and signatures all hold. ``events`` run
    from sequence ``first``, whose predecessor's hash is ``previous_hash``."""
    later_hashes = {event.hash for event in events}
    for position, event in enumerate(events, first):
        later_hashes.discard(event.hash)
        if event.sequence != position:
            return _broken(len(events), position, "deleted",
                           f"event {position} is missing (the next stored event is {event.sequence})")
        if event.previous_hash != previous_hash:
            if event.previous_hash in later_hashes:
                return _broken(len(events), position, "reordered",
                               f"event {position} links to an event stored after it")
            return _broken(len(events), position, "deleted",
                           f"event {position} does not link to event {position - 1}: "
                           "an event before it was removed and the rest renumbered")
        if _hash_of(event) != event.hash:
            return _broken(len(events), position, "edited",
                           f"event {position}'s content does not match its hash")
        if not verify_signature(keys, event.key_id, event.signature, event.hash.encode()):
            known = "an unknown key" if event.key_id not in keys else f"key {event.key_id}"
            return _broken(len(events), position, "forged",
                           f"event {position}'s signature does not verify with {known}: its hash was "
                           "recomputed or it was written without the signing key")
        previous_hash = event.hash
    return None


def trust_verify(*, project_id: int) -> ChainCheck:
    """Verify the project's whole chain and the external head, and record the result (signed,
    so the record itself is no weaker than the chain)."""
    started = timezone.now()
    events = list(TrustEvent.objects.filter(project_id=project_id).order_by("sequence"))
    check = _check_events(events, public_keys()) or _check_head(
        project_id, len(events), {e.sequence: e.hash for e in events}.get)
    if check is None:
        check = ChainCheck(True, len(events), head_hash=events[-1].hash if events else GENESIS_HASH)
    _record_verification(project_id, check, started)
    return replace(check, full_check_at=started, checked_now=len(events))


def _verification_message(project_id: int, events: int, head_hash: str, ok: bool, verified_at: datetime) -> bytes:
    return json.dumps({"project": project_id, "events": events, "head_hash": head_hash, "ok": ok,
                       "verified_at": verified_at.isoformat()}, sort_keys=True, separators=(",", ":")).encode()


def _record_verification(project_id: int, check: ChainCheck, started: datetime) -> None:
    """Keep the result unless a check that read the chain later has already recorded its own."""
    key, head_hash = signing_key(), check.head_hash or ""
    fields = {"events": check.events, "head_hash": head_hash, "ok": check.ok,
              "first_bad_sequence": check.first_bad_sequence, "cause": check.cause, "problem": check.problem,
              "verified_at": started, "key_id": key.key_id,
              "signature": key.sign(_verification_message(project_id, check.events, head_hash, check.ok, started))}
    if TrustVerification.objects.filter(project_id=project_id, verified_at__lt=started).update(**fields):
        return
    try:
        with transaction.atomic():
            TrustVerification.objects.create(project_id=project_id, **fields)
    except IntegrityError:  # a newer check holds the row
        pass


def trust_status(*, project_id: int) -> ChainCheck:
    """The chain's state for a page, without reading every event: the newest full verification
    (its record signed), extended over the events written since (links, hashes, signatures, the
    external head). A failed record is answered as it stands (beat or the trust page's button
    verify again). Anything that does not line up with the record (none yet, a bad signature, a
    time in the future or older than twice ``HITL_TRUST_FULL_CHECK_SECONDS``, its last event
    changed, a bad new event) runs the full ``trust_verify``, which finds and records the break."""
    record = _trusted_record(project_id)
    if record is None:
        return trust_verify(project_id=project_id)
    if not record.ok:
        return ChainCheck(False, record.events, record.first_bad_sequence, record.problem, record.cause,
                          full_check_at=record.verified_at)
    tail = _events_since(record)
    if tail is None:
        return trust_verify(project_id=project_id)
    total, known = record.events + len(tail), {e.sequence: e.hash for e in tail}
    if _check_events(tail, public_keys(), first=record.events + 1, previous_hash=record.head_hash) or _check_head(
            project_id, total, lambda sequence: known.get(sequence) or _stored_hash(project_id, sequence)):
        return trust_verify(project_id=project_id)
    return ChainCheck(True, total, head_hash=tail[-1].hash if tail else record.head_hash,
                      full_check_at=record.verified_at, checked_now=len(tail))


def _trusted_record(project_id: int) -> TrustVerification | None:
    """The project's verification record, if it is signed and current; None otherwise."""
    record = TrustVerification.objects.filter(project_id=project_id).first()
    now = timezone.now()
    if record is None or not (now - timedelta(seconds=2 * settings.HITL_TRUST_FULL_CHECK_SECONDS)
                              <= record.verified_at <= now + timedelta(minutes=1)):
        return None
    message = _verification_message(project_id, record.events, record.head_hash, record.ok, record.verified_at)
    return record if verify_signature(public_keys(), record.key_id, record.signature, message) else None


def _events_since(record: TrustVerification) -> list[TrustEvent] | None:
    """The events after the record's last one; None when that one is no longer what was
    verified (gone, or its content, hash or signature changed)."""
    events = list(TrustEvent.objects.filter(project_id=record.project_id, sequence__gte=max(record.events, 1))
                  .order_by("sequence"))
    if record.events == 0:
        return events
    if not events or events[0].sequence != record.events:
        return None
    last = events[0]
    if last.hash != record.head_hash or _hash_of(last) != last.hash or not verify_signature(
            public_keys(), last.key_id, last.signature, last.hash.encode()):
        return None
    return events[1:]


def trust_verify_requested(*, project_id: int) -> ChainCheck | None:
    """A person asked for a full check: run it, unless one finished within
    ``TRUST_VERIFY_COOLDOWN_SECONDS`` (None then: the page shows that one), so that repeated
    requests cannot keep the web process busy."""
    recent = timezone.now() - timedelta(seconds=TRUST_VERIFY_COOLDOWN_SECONDS)
    if TrustVerification.objects.filter(project_id=project_id, verified_at__gte=recent).exists():
        return None
    return trust_verify(project_id=project_id)


def _stored_hash(project_id: int, sequence: int) -> str | None:
    return TrustEvent.objects.filter(project_id=project_id, sequence=sequence).values_list("hash", flat=True).first()


def _check_head(project_id: int, events: int, hash_at: Callable[[int], str | None]) -> ChainCheck | None:
    """The external head against a chain of ``events`` events (``hash_at``: a stored event's
    hash by sequence); None when it matches or there is no head file."""
    head = external_head(project_id)
    if head is None:
        return None
    if head.sequence > events:
        return _broken(events, events + 1, "truncated",
                       f"the external head records event {head.sequence}, the database ends at "
                       f"{events}: the newest events were removed")
    if hash_at(head.sequence) != head.hash:
        return _broken(events, head.sequence, "forged",
                       f"event {head.sequence} differs from the external head's hash: "
                       "the chain was rewritten")
    return None


def export_lines(project: Project, events: Iterable[TrustEvent]) -> Iterator[str]:
    """A header line, then one JSON line per event with everything needed to verify it."""
    yield json.dumps({"format": EXPORT_FORMAT, "project": project.slug, "project_id": project.id,
                      "exported_at": timezone.now().isoformat()})
    for event in events:
        yield json.dumps({
            "sequence": event.sequence, "kind": event.kind, "actor": event.actor, "payload": event.payload,
            "created_at": event.created_at.isoformat(), "previous_hash": event.previous_hash,
            "hash": event.hash, "key_id": event.key_id, "signature": event.signature,
        }, sort_keys=True)


def trust_export(*, project_id: int) -> Iterator[str]:
    project = Project.objects.get(pk=project_id)
    return export_lines(project, TrustEvent.objects.filter(project_id=project_id).order_by("sequence").iterator())
