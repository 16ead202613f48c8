"""Sealed frames in the store's pipelines: seal after encoding, open after the stored-digest check.

Owns: the glue between a ``FrameRef`` and ``appliance.crypto.FrameCipher`` — the associated
data of a record, opening a verified stored frame into a worker's scratch (or straight into
the destination for ``id`` frames), decoding a stored frame whatever its sealing, and the raw
identity check (SHA-256 for plain checkpoints, the keyed digest for sealed ones).

Order (docs/design.md §14.3): read -> SHA-256 of the stored bytes (bit rot, ``FrameError``)
-> AES-GCM open (forgery without the key, ``FrameAuthenticationError``) -> decode. A caller
never opens bytes whose stored digest it has not checked.
"""

from __future__ import annotations

import hashlib
import hmac

from appliance.codec.frames import Scratch, decode_into
from appliance.codec.transform import U8
from appliance.crypto import FrameCipher
from appliance.format.codec_name import IDENTITY
from appliance.format.crypto import SEAL_OVERHEAD, frame_aad
from appliance.format.digest import Digest
from appliance.format.manifest import FrameRef

Buffer = bytes | bytearray | memoryview


def aad_of(cipher: FrameCipher, frame: FrameRef) -> bytes:
    base = frame.base.hex if frame.base is not None else None
    return frame_aad(cipher.key_id, frame.raw_digest.hex, frame.raw_size, frame.codec.name, base)


def open_frame(cipher: FrameCipher, frame: FrameRef, stored: Buffer, scratch: Scratch) -> memoryview:
    """The encoded (pre-seal) bytes of a verified stored frame, in ``scratch`` (valid until its next use)."""
    plain = scratch.get("opened", frame.size - SEAL_OVERHEAD)
    cipher.open_into(stored, aad_of(cipher, frame), plain.data, f"frame {frame.digest.short()}")
    return plain.data


def decode_stored(stored: Buffer, frame: FrameRef, out: U8, scratch: Scratch, cipher: FrameCipher | None) -> None:
    """``decode_into`` for a verified stored frame, opening it first when it is sealed.

    A sealed ``id`` frame decrypts straight into ``out`` (no scratch copy): the only extra work
    over a plain ``id`` frame is the AES-GCM pass itself.
    """
    if cipher is None:
        decode_into(memoryview(stored), frame.codec, out, scratch)
    elif frame.codec == IDENTITY and frame.size - SEAL_OVERHEAD == out.size:
        cipher.open_into(stored, aad_of(cipher, frame), out.data, f"frame {frame.digest.short()}")
    else:
        decode_into(open_frame(cipher, frame, stored, scratch), frame.codec, out, scratch)


def raw_identity(cipher: FrameCipher | None, raw: Buffer) -> Digest:
    """A frame's raw identity: SHA-256 (plain) or HMAC-SHA256 under the identity key (sealed)."""
    return Digest(hashlib.sha256(raw).hexdigest()) if cipher is None else cipher.raw_digest(raw)


def raw_matches(cipher: FrameCipher | None, frame: FrameRef, raw: Buffer) -> bool:
    return hmac.compare_digest(raw_identity(cipher, raw).hex, frame.raw_digest.hex)


def seal_encoded(cipher: FrameCipher | None, frame: FrameRef, encoded: bytes) -> bytes | bytearray:
    """Stored bytes for ``encoded`` under ``frame``'s record (``frame.digest``/``size`` are not used)."""
    return encoded if cipher is None else cipher.seal(encoded, aad_of(cipher, frame))
