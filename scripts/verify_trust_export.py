#!/usr/bin/env python3
"""Verify a hitl trust export offline, with nothing but Python and `cryptography`.

    python manage.py hitl export-trust --project cats --output cats-trust.jsonl
    python scripts/verify_trust_export.py cats-trust.jsonl --public-keys public_keys.pem

The export is JSON lines: a header ({"format", "project", "project_id", ...}), then one event per
line. For each event this recomputes its hash - sha256 of the canonical JSON (sorted keys, no
spaces) of {"project": project_id, "previous": previous_hash, "sequence", "kind", "actor",
"payload", "created_at"} - checks that it links to the event before it, and checks its Ed25519
signature of the hash (hex, as ASCII bytes) with the public key named by its key_id (the first 16
hex digits of sha256 of the raw 32-byte public key). The public keys come from hitl's
HITL_TRUST_PUBLIC_KEYS file, handed over apart from the export; never trust keys inside it.
--expect-head SEQUENCE:HASH also checks that the export reaches a head recorded elsewhere.
Exit status 0 when everything verifies, 1 with the first bad event named otherwise.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

FORMAT = "hitl-trust-export/1"
GENESIS = "0" * 64
BEGIN = b"-----BEGIN PUBLIC KEY-----"


def load_keys(pem: bytes) -> dict[str, Ed25519PublicKey]:
    keys = {}
    for block in pem.split(BEGIN)[1:]:
        key = serialization.load_pem_public_key(BEGIN + block)
        if isinstance(key, Ed25519PublicKey):
            raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            keys[hashlib.sha256(raw).hexdigest()[:16]] = key
    return keys


def event_hash(project_id: int, event: dict) -> str:
    body = {"project": project_id, "previous": event["previous_hash"], "sequence": event["sequence"],
            "kind": event["kind"], "actor": event["actor"], "payload": event["payload"],
            "created_at": event["created_at"]}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def signature_ok(keys: dict[str, Ed25519PublicKey], event: dict) -> bool:
    key = keys.get(event.get("key_id", ""))
    if key is None:
        return False
    try:
        key.verify(base64.b64decode(event.get("signature", ""), validate=True), event["hash"].encode())
    except (InvalidSignature, ValueError):
        return False
    return True


def verify(lines: list[str], keys: dict[str, Ed25519PublicKey], expect_head: str | None) -> str | None:
    """None when the export verifies, else what is wrong with the first bad line."""
    if not lines:
        return "the export is empty"
    header = json.loads(lines[0])
    if header.get("format") != FORMAT:
        return f"not a {FORMAT} file"
    project_id = header["project_id"]
    previous = GENESIS
    events = [json.loads(line) for line in lines[1:] if line.strip()]
    for position, event in enumerate(events, 1):
        if event["sequence"] != position:
            return f"event {position} is missing (deleted); the next is {event['sequence']}"
        if event["previous_hash"] != previous:
            return f"event {position} does not link to event {position - 1} (deleted or reordered)"
        if event_hash(project_id, event) != event["hash"]:
            return f"event {position}: content does not match its hash (edited)"
        if not signature_ok(keys, event):
            return f"event {position}: signature does not verify with the given public keys (forged)"
        previous = event["hash"]
    if expect_head:
        sequence, _, digest = expect_head.partition(":")
        if int(sequence) > len(events):
            return f"the export ends at event {len(events)}, the expected head is {sequence} (truncated)"
        if events[int(sequence) - 1]["hash"] != digest:
            return f"event {sequence} does not have the expected head hash (rewritten)"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export", help="the JSON lines file from `manage.py hitl export-trust`")
    parser.add_argument("--public-keys", required=True, help="PEM file of Ed25519 public keys")
    parser.add_argument("--expect-head", help="SEQUENCE:HASH recorded elsewhere")
    args = parser.parse_args()
    with open(args.public_keys, "rb") as handle:
        keys = load_keys(handle.read())
    with open(args.export, encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    problem = verify(lines, keys, args.expect_head)
    if problem:
        print(f"NOT VERIFIED: {problem}")
        return 1
    print(f"verified: {len(lines) - 1} events, links, hashes and signatures intact")
    return 0


if __name__ == "__main__":
    sys.exit(main())
