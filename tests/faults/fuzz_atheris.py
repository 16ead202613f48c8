"""Coverage-guided fuzzing (atheris / libFuzzer) of every parser that reads bytes from disk.

Targets, chosen by the first input byte: the signed bundle (envelope -> signature -> statement ->
manifest), the same bytes as a statement *signed with the trusted key* (reaches the manifest
parser behind the signature), the commit record, the scrub cursor, and a stored zstd frame
(structural check + decode into a bounded buffer). Any exception other than an
``ApplianceError`` is a finding. Not part of the pytest run (long runs only):

    pip install atheris
    python tests/faults/fuzz_atheris.py --seeds CORPUS_DIR      # valid inputs of every target
    python tests/faults/fuzz_atheris.py -max_total_time=1800 -rss_limit_mb=2048 CORPUS_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

with atheris.instrument_imports(include=["appliance"]):
    import numpy as np

    from appliance.codec.frames import Scratch, decode_into
    from appliance.errors import ApplianceError
    from appliance.format.canonical import canonical_bytes, strict_loads
    from appliance.format.codec_name import CodecSpec
    from appliance.format.commit import CommitRecord
    from appliance.format.scrub_state import ScrubCursor
    from appliance.format.statement import PAYLOAD_TYPE, Signature, bundle_bytes, pae, parse_bundle
    from appliance.signing import SigningKey, TrustStore, verify_bundle
    from appliance.store.store import Store

KEY = SigningKey(Ed25519PrivateKey.from_private_bytes(bytes(range(32))))  # fixed: seeds stay valid
MODEL_ID = "faults-model"
TRUST = TrustStore().with_key(KEY.public)
CODECS = ["zstd-1", "bg2+zstd-1", "bg4+zstd-3", "id", "bg2+id"]


def one_input(data: bytes) -> None:
    """Byte 0 selects the target; the rest is its input (a frame target reads a 3-byte raw size first)."""
    if not data:
        return
    target, body = data[0] % 5, data[1:]
    try:
        if target == 0:
            verify_bundle(body, TRUST, expected_model=MODEL_ID)
        elif target == 1:
            bundle = bundle_bytes(body, [Signature(KEY.keyid, KEY.sign(pae(PAYLOAD_TYPE, body)))])
            verify_bundle(bundle, TRUST, expected_model=MODEL_ID)
        elif target == 2:
            CommitRecord.from_bytes(body)
        elif target == 3:
            ScrubCursor.from_dict(strict_loads(body, what="scrub.json", max_bytes=1 << 20, max_depth=8))
        elif len(body) > 4:
            codec = CodecSpec.parse(CODECS[body[0] % len(CODECS)])
            raw_size = max(8, int.from_bytes(body[1:4], "big") // 8 * 8)
            decode_into(body[4:], codec, np.zeros(raw_size, np.uint8), Scratch())
    except ApplianceError:
        pass


def write_seeds(directory: Path) -> None:
    """One valid input per target (prefixed with its selector byte) from a real store."""
    import zstandard

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.faults.model import History, empty_store_storage, make_config

    directory.mkdir(parents=True, exist_ok=True)
    storage = empty_store_storage()
    store = Store(storage, make_config(), TRUST)
    history = History(3)
    for step in (1, 2):
        store.commit(history.sources(step), [KEY])
    for path in storage.walk():
        data = storage.read(path, 1 << 26)
        if path.endswith(".manifest.json"):
            (directory / f"bundle-{path[0]}").write_bytes(b"\0" + data)
            (directory / f"statement-{path[0]}").write_bytes(b"\1" + parse_bundle(data).payload)
        elif path.endswith(".commit.json"):
            (directory / f"record-{path[0]}").write_bytes(b"\2" + data)
    (directory / "cursor").write_bytes(b"\3" + canonical_bytes(ScrubCursor().to_dict()))
    frame = zstandard.ZstdCompressor(level=1, write_content_size=True).compress(bytes(4096))
    (directory / "frame").write_bytes(b"\4\0" + (4096).to_bytes(3, "big") + frame)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--seeds":
        write_seeds(Path(sys.argv[2]))
        return
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
