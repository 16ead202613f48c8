"""Signing and verifying head records (the pointer to the newest checkpoint under a prefix).

Owns: ``sign_head`` and ``verify_head`` — DSSE over the canonical head payload (payload type
``application/vnd.appliance.head+json``, so a head signature can never pass as a checkpoint
signature or the reverse), checked against an explicit list of accepted public keys (a node's
head key for its own replica; the release keys for a fleet channel). Does not own the anti-replay
rule (``appliance.format.remote.check_head_fresh``): callers apply it to the verified head.
"""

from __future__ import annotations

from collections.abc import Sequence

from appliance.errors import HeadError
from appliance.format.remote import (
    HEAD_PAYLOAD_TYPE,
    HeadRecord,
    envelope_bytes,
    parse_envelope,
    parse_head_payload,
)
from appliance.format.statement import pae
from appliance.signing import PublicKey, SigningKey


def sign_head(head: HeadRecord, keys: Sequence[SigningKey]) -> bytes:
    payload = head.payload()
    signed = pae(HEAD_PAYLOAD_TYPE, payload)
    return envelope_bytes(payload, [(k.keyid, k.sign(signed)) for k in keys])


def verify_head(data: bytes, accepted: Sequence[PublicKey]) -> HeadRecord:
    """The head, only if at least one signature verifies with an accepted key; else ``HeadError`` (49)."""
    envelope = parse_envelope(data)
    signed = pae(HEAD_PAYLOAD_TYPE, envelope.payload)
    by_id = {k.keyid: k for k in accepted}
    unknown = bad = 0
    for keyid, sig in envelope.signatures:
        key = by_id.get(keyid)
        if key is None:
            unknown += 1
        elif key.verify(sig, signed):
            return parse_head_payload(envelope.payload)
        else:
            bad += 1
    if bad:
        raise HeadError("the head's signature does not match its content: forged or altered")
    raise HeadError(f"the head is signed by {unknown} key(s) this node does not accept for heads")
