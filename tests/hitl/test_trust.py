"""The trust history does not rest on trusting the database: raw-SQL tampering of every kind is
detected at the right event, with the right cause, and an export verifies offline."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.utils import timezone

from hitl.models import ProjectRole, TrustEvent, TrustVerification
from hitl.services.trust import (
    ChainCheck,
    ExternalHead,
    _record_verification,
    event_hash,
    external_head,
    trust_export,
    trust_record,
    trust_status,
    trust_verify,
)
from hitl.trust_keys import key_id_of, public_keys, rotate_signing_key
from tests.conftest import member
from workers.tasks import trust_verify_project

VERIFIER = Path(settings.BASE_DIR) / "scripts" / "verify_trust_export.py"


@pytest.fixture()
def chain(project, django_capture_on_commit_callbacks) -> list[TrustEvent]:
    """Five committed events (their heads written to the head file)."""
    with django_capture_on_commit_callbacks(execute=True):
        for i in range(5):
            trust_record(project_id=project.id, kind="model_trained", actor="test",
                         payload={"model": f"v{i}", "labels": list(range(i))})
    return list(TrustEvent.objects.filter(project=project).order_by("sequence"))


def sql(statement: str, *params) -> None:
    with connection.cursor() as cursor:
        cursor.execute(statement, params)


def test_an_untouched_chain_verifies_against_signatures_and_the_head_file(project, chain) -> None:
    check = trust_verify(project_id=project.id)
    assert check.ok, check.problem
    assert (check.events, check.head_hash) == (5, chain[-1].hash)
    assert all(event.signature and event.key_id in public_keys() for event in chain)


def test_an_edited_payload_is_found_at_its_event(project, chain) -> None:
    sql("UPDATE hitl_trustevent SET payload = %s WHERE project_id = %s AND sequence = 3",
        json.dumps({"model": "v9"}), project.id)
    check = trust_verify(project_id=project.id)
    assert (check.ok, check.first_bad_sequence, check.cause) == (False, 3, "edited")


def test_a_deleted_event_is_found(project, chain) -> None:
    sql("DELETE FROM hitl_trustevent WHERE project_id = %s AND sequence = 2", project.id)
    check = trust_verify(project_id=project.id)
    assert (check.ok, check.first_bad_sequence, check.cause) == (False, 2, "deleted")


def test_a_deleted_and_renumbered_event_is_found(project, chain) -> None:
    sql("DELETE FROM hitl_trustevent WHERE project_id = %s AND sequence = 2", project.id)
    for sequence in (3, 4, 5):
        sql("UPDATE hitl_trustevent SET sequence = %s WHERE project_id = %s AND sequence = %s",
            sequence - 1, project.id, sequence)
    check = trust_verify(project_id=project.id)
    assert (check.ok, check.first_bad_sequence, check.cause) == (False, 2, "deleted")


def test_reordered_events_are_found(project, chain) -> None:
    sql("UPDATE hitl_trustevent SET sequence = 1000 WHERE project_id = %s AND sequence = 3", project.id)
    sql("UPDATE hitl_trustevent SET sequence = 3 WHERE project_id = %s AND sequence = 4", project.id)
    sql("UPDATE hitl_trustevent SET sequence = 4 WHERE project_id = %s AND sequence = 1000", project.id)
    check = trust_verify(project_id=project.id)
    assert (check.ok, check.first_bad_sequence, check.cause) == (False, 3, "reordered")


def test_cutting_off_the_newest_events_shows_against_the_head_file(project, chain) -> None:
    sql("DELETE FROM hitl_trustevent WHERE project_id = %s AND sequence >= 4", project.id)
    check = trust_verify(project_id=project.id)
    assert (check.ok, check.first_bad_sequence, check.cause) == (False, 4, "truncated")


def rewrite_from(project_id: int, start: int, sign=None) -> None:
    """What someone with write access to the database but not the key can do: change event
    `start` and recompute every hash after it, so links and hashes all hold again."""
    events = list(TrustEvent.objects.filter(project_id=project_id).order_by("sequence"))
    previous = events[start - 2].hash if start > 1 else "0" * 64
    for event in events[start - 1:]:
        if event.sequence == start:
            event.payload = {"model": "attacker's"}
        digest = event_hash(project_id, previous, event.sequence, event.kind, event.actor, event.payload,
                            event.created_at.isoformat())
        key_id, signature = event.key_id, event.signature
        if sign is not None:
            key_id, signature = sign(digest)
        sql("UPDATE hitl_trustevent SET payload = %s, previous_hash = %s, hash = %s, key_id = %s, signature = %s "
            "WHERE id = %s", json.dumps(event.payload), previous, digest, key_id, signature, event.id)
        previous = digest


def test_a_chain_rewritten_with_recomputed_hashes_but_no_key_is_found(project, chain) -> None:
    rewrite_from(project.id, 2)
    check = trust_verify(project_id=project.id)
    assert (check.ok, check.first_bad_sequence, check.cause) == (False, 2, "forged")


def test_a_chain_re_signed_with_another_key_is_found(project, chain) -> None:
    import base64

    attacker = Ed25519PrivateKey.generate()
    rewrite_from(project.id, 4, sign=lambda digest: (key_id_of(attacker.public_key()),
                                                     base64.b64encode(attacker.sign(digest.encode())).decode()))
    check = trust_verify(project_id=project.id)
    assert (check.ok, check.first_bad_sequence, check.cause) == (False, 4, "forged")
    assert "unknown key" in check.problem


def test_events_signed_before_a_key_rotation_still_verify(project, chain, django_capture_on_commit_callbacks) -> None:
    old, new = rotate_signing_key()
    assert old != new and {old, new} <= set(public_keys())
    with django_capture_on_commit_callbacks(execute=True):
        trust_record(project_id=project.id, kind="model_promoted", actor="test", payload={})
    assert TrustEvent.objects.get(project=project, sequence=6).key_id == new
    assert trust_verify(project_id=project.id).ok


def test_verify_trust_names_the_event_and_cause(project, chain) -> None:
    sql("UPDATE hitl_trustevent SET actor = 'mallory' WHERE project_id = %s AND sequence = 5", project.id)
    with pytest.raises(CommandError, match=r"BROKEN at event 5 \(likely edited\)"):
        call_command("hitl", "verify-trust", "--project", project.slug)


def record(project, django_capture_on_commit_callbacks, n: int) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        for i in range(n):
            trust_record(project_id=project.id, kind="model_evaluated", actor="test", payload={"i": i})


def test_pages_verify_only_the_events_since_the_last_full_check(
    project, chain, django_capture_on_commit_callbacks,
) -> None:
    first = trust_status(project_id=project.id)  # no full check recorded yet: this is one
    assert (first.ok, first.events, first.checked_now) == (True, 5, 5)
    stored = TrustVerification.objects.get(project=project)
    assert (stored.ok, stored.events, stored.head_hash) == (True, 5, chain[-1].hash)
    record(project, django_capture_on_commit_callbacks, 3)
    later = trust_status(project_id=project.id)
    assert (later.ok, later.events, later.checked_now, later.full_check_at) == (True, 8, 3, stored.verified_at)
    assert later.head_hash == TrustEvent.objects.get(project=project, sequence=8).hash


def test_a_bad_event_since_the_full_check_is_found_by_the_page(project, chain, django_capture_on_commit_callbacks) -> None:
    trust_verify(project_id=project.id)
    record(project, django_capture_on_commit_callbacks, 3)
    sql("UPDATE hitl_trustevent SET actor = 'mallory' WHERE project_id = %s AND sequence = 7", project.id)
    check = trust_status(project_id=project.id)
    assert (check.ok, check.first_bad_sequence, check.cause, check.checked_now) == (False, 7, "edited", 8)
    assert not TrustVerification.objects.get(project=project).ok  # and every page checks in full until it holds


def test_the_page_sees_the_last_checked_event_changed_and_the_newest_cut_off(
    project, chain, django_capture_on_commit_callbacks,
) -> None:
    trust_verify(project_id=project.id)
    sql("UPDATE hitl_trustevent SET payload = %s WHERE project_id = %s AND sequence = 5", json.dumps({}), project.id)
    assert (trust_status(project_id=project.id).first_bad_sequence, trust_status(project_id=project.id).cause) == (
        5, "edited")
    sql("UPDATE hitl_trustevent SET payload = %s WHERE project_id = %s AND sequence = 5",
        json.dumps(chain[-1].payload), project.id)
    trust_verify(project_id=project.id)
    record(project, django_capture_on_commit_callbacks, 2)
    sql("DELETE FROM hitl_trustevent WHERE project_id = %s AND sequence = 7", project.id)
    check = trust_status(project_id=project.id)
    assert (check.ok, check.first_bad_sequence, check.cause) == (False, 7, "truncated")


def test_an_older_event_edited_after_the_full_check_shows_at_the_next_one(project, chain, settings) -> None:
    """What a page does not re-read until the next full check: beat runs one every
    HITL_TRUST_FULL_CHECK_SECONDS, and a page runs one itself when the last is twice that old."""
    trust_verify(project_id=project.id)
    sql("UPDATE hitl_trustevent SET payload = %s WHERE project_id = %s AND sequence = 2", json.dumps({}), project.id)
    assert trust_status(project_id=project.id).ok  # not re-read yet
    long_ago = timezone.now() - timedelta(seconds=2 * settings.HITL_TRUST_FULL_CHECK_SECONDS + 1)
    TrustVerification.objects.filter(project=project).delete()
    _record_verification(project.id, ChainCheck(True, 5, head_hash=chain[-1].hash), long_ago)  # a genuine old record
    assert TrustVerification.objects.get(project=project).verified_at == long_ago
    check = trust_status(project_id=project.id)
    assert (check.ok, check.first_bad_sequence, check.cause) == (False, 2, "edited")
    assert trust_status(project_id=project.id).checked_now == 0  # the failure recorded is answered as it stands
    assert not trust_verify_project(project.id)  # the beat's task finds it too


@pytest.mark.parametrize("forgery", ["verified later", "in the future", "unsigned"])
def test_a_forged_verification_record_is_not_believed(project, chain, forgery) -> None:
    trust_verify(project_id=project.id)
    sql("UPDATE hitl_trustevent SET payload = %s WHERE project_id = %s AND sequence = 2", json.dumps({}), project.id)
    changes = {"verified later": {"verified_at": timezone.now() + timedelta(seconds=1)},
               "in the future": {"verified_at": timezone.now() + timedelta(days=365)},
               "unsigned": {"signature": "", "key_id": ""}}[forgery]
    TrustVerification.objects.filter(project=project).update(**changes)  # what someone with the database can do
    check = trust_status(project_id=project.id)
    assert (check.ok, check.first_bad_sequence, check.cause) == (False, 2, "edited")


def test_a_slower_older_check_does_not_overwrite_a_newer_one(project, chain) -> None:
    newer = trust_verify(project_id=project.id)
    _record_verification(project.id, ChainCheck(False, 5, 3, "stale news", "edited"),
                         newer.full_check_at - timedelta(seconds=5))
    stored = TrustVerification.objects.get(project=project)
    assert stored.ok and stored.verified_at == newer.full_check_at


def test_the_head_is_found_behind_many_other_projects_lines(project, chain, settings) -> None:
    path = Path(settings.HITL_TRUST_HEAD_FILE)
    with open(path, "a", encoding="utf-8") as handle:
        for sequence in range(1, 20_000):  # about a megabyte of other projects' heads after ours
            handle.write(json.dumps({"project": project.id + 1, "sequence": sequence, "hash": "f" * 64}) + "\n")
        handle.write("{torn")
    assert external_head(project.id) == ExternalHead(5, chain[-1].hash)
    assert trust_verify(project_id=project.id).ok


def run_verifier(export: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(VERIFIER), str(export), "--public-keys",
                           str(settings.HITL_TRUST_PUBLIC_KEYS), *extra], capture_output=True, text=True)


def test_an_export_verifies_offline_and_tampering_with_it_does_not(project, chain, tmp_path) -> None:
    export = tmp_path / "trust.jsonl"
    call_command("hitl", "export-trust", "--project", project.slug, "--output", str(export))
    result = run_verifier(export, "--expect-head", f"5:{chain[-1].hash}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "verified: 5 events" in result.stdout

    lines = export.read_text().splitlines()
    event = json.loads(lines[3])
    event["payload"] = {"model": "edited"}
    edited = tmp_path / "edited.jsonl"
    edited.write_text("\n".join([*lines[:3], json.dumps(event), *lines[4:]]) + "\n")
    result = run_verifier(edited)
    assert result.returncode == 1 and "event 3" in result.stdout and "edited" in result.stdout

    truncated = tmp_path / "truncated.jsonl"
    truncated.write_text("\n".join(lines[:4]) + "\n")
    result = run_verifier(truncated, "--expect-head", f"5:{chain[-1].hash}")
    assert result.returncode == 1 and "truncated" in result.stdout


def test_the_offline_verifier_refuses_a_key_it_was_not_given(project, chain, tmp_path) -> None:
    export = tmp_path / "trust.jsonl"
    export.write_text("\n".join(trust_export(project_id=project.id)) + "\n")
    other_keys = tmp_path / "other.pem"
    from hitl.trust_keys import public_pem

    other_keys.write_bytes(public_pem(Ed25519PrivateKey.generate().public_key()))
    result = subprocess.run([sys.executable, str(VERIFIER), str(export), "--public-keys", str(other_keys)],
                            capture_output=True, text=True)
    assert result.returncode == 1 and "event 1" in result.stdout and "forged" in result.stdout


def test_the_trust_page_says_when_every_event_was_verified_and_verifies_on_request(project, chain, client) -> None:
    client.force_login(member(project, "eng", ProjectRole.ML_ENGINEER))
    page = client.get(f"/projects/{project.slug}/trust/").content.decode()
    assert "5 events" in page and "Every event verified" in page and 'id="verify-chain"' in page
    sql("UPDATE hitl_trustevent SET actor = 'mallory' WHERE project_id = %s AND sequence = 2", project.id)
    again = client.post(f"/projects/{project.slug}/trust/verify", follow=True).content.decode()
    assert "verified in full moments ago" in again and "5 events" in again  # the page's own check was just now
    TrustVerification.objects.filter(project=project).update(verified_at=timezone.now() - timedelta(minutes=1))
    response = client.post(f"/projects/{project.slug}/trust/verify", follow=True)
    assert response.redirect_chain[-1][0] == f"/projects/{project.slug}/trust/"
    page = response.content.decode()
    assert "broken at event 2" in page and "The chain is broken at event 2 (edited)" in page
    viewer = member(project, "vic", ProjectRole.VIEWER)
    client.force_login(viewer)
    assert 'id="verify-chain"' not in client.get(f"/projects/{project.slug}/trust/").content.decode()
    assert client.post(f"/projects/{project.slug}/trust/verify").status_code == 403
