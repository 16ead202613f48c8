"""Encryption at rest, pure rules and primitives: manifest v3, keyring form, AAD binding, wrapping."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from appliance.crypto import FrameCipher, kek_check, new_data_key, unwrap_data_key, wrap_data_key
from appliance.errors import FrameAuthenticationError, ManifestError, WrongKeyError
from appliance.format.canonical import canonical_bytes, strict_loads
from appliance.format.crypto import Encryption, Keyring, frame_aad, may_share_frames
from appliance.format.manifest import ENCRYPTED_VERSION, Manifest
from tests.unit.factories import manifest

pytestmark = pytest.mark.unit


def test_a_v3_manifest_round_trips_and_requires_its_encryption_field() -> None:
    enc = Encryption("ab" * 16)
    m = manifest(encryption=enc, version=ENCRYPTED_VERSION)
    again = Manifest.from_dict(strict_loads(canonical_bytes(m.to_dict()), what="m", max_bytes=1 << 20, max_depth=32))
    assert again == m and again.encryption == enc
    with pytest.raises(ManifestError, match="exactly when"):
        manifest(version=ENCRYPTED_VERSION)
    with pytest.raises(ManifestError, match="exactly when"):
        manifest(encryption=enc)  # v2 cannot carry it
    d = m.to_dict()
    d["version"] = 2
    with pytest.raises(ManifestError):  # a v2 reading of a sealed manifest is refused, never misread
        Manifest.from_dict(d)


def test_frames_are_shared_only_under_one_data_key() -> None:
    a, b = Encryption("aa" * 16), Encryption("bb" * 16)
    assert may_share_frames(None, None) and may_share_frames(a, a)
    assert not may_share_frames(None, a) and not may_share_frames(a, None) and not may_share_frames(a, b)


@pytest.mark.parametrize("field", ["key_id", "raw_digest", "raw_size", "codec", "base"])
def test_a_sealed_frame_moved_under_another_record_fails_authentication(field: str) -> None:
    cipher = new_data_key()
    record = {"key_id": cipher.key_id, "raw_digest": "0" * 64, "raw_size": 100, "codec": "id", "base": None}
    sealed = cipher.seal(b"x" * 100, frame_aad(**record))
    assert cipher.open(sealed, frame_aad(**record)) == b"x" * 100
    changed = dict(record)
    changed[field] = {"key_id": "cd" * 16, "raw_digest": "1" * 64, "raw_size": 101, "codec": "zstd-1",
                      "base": "2" * 64}[field]  # fmt: skip
    with pytest.raises(FrameAuthenticationError):
        cipher.open(sealed, frame_aad(**changed))


def test_each_seal_draws_a_fresh_nonce() -> None:
    cipher = new_data_key()
    seals = {bytes(cipher.seal(b"same bytes", b"aad")[:12]) for _ in range(64)}
    assert len(seals) == 64


def test_keyed_identity_differs_per_key_and_equals_within_one() -> None:
    a, b = new_data_key(), new_data_key()
    assert a.raw_digest(b"frame") == a.raw_digest(b"frame") != b.raw_digest(b"frame")
    assert FrameCipher(a.data_key).key_id == a.key_id and a.key_id != b.key_id


def test_wrapping_needs_the_right_kek_and_the_keyring_round_trips() -> None:
    kek, other = os.urandom(32), os.urandom(32)
    cipher = new_data_key()
    wrapped = wrap_data_key(cipher, kek, "2026-12-04T00:00:00Z")
    assert unwrap_data_key(wrapped, kek).data_key == cipher.data_key
    with pytest.raises(WrongKeyError):
        unwrap_data_key(wrapped, other)
    ring = Keyring({"provider": "file", "path": "/k"}, kek_check(kek), cipher.key_id, (wrapped,))
    assert (
        Keyring.from_dict(strict_loads(canonical_bytes(ring.to_dict()), what="k", max_bytes=1 << 20, max_depth=32))
        == ring
    )
    assert kek_check(kek) != kek_check(other)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(version=2),
        lambda d: d.update(active="ff" * 16),
        lambda d: d["kek"].update(provider="floppy"),
        lambda d: d["keys"][0].update(wrapped="AAAA"),
        lambda d: d.update(keys=[]),
    ],
)
def test_a_malformed_keyring_is_refused(mutate: object) -> None:
    cipher, kek = new_data_key(), os.urandom(32)
    d = Keyring({"provider": "file", "path": "/k"}, kek_check(kek), cipher.key_id,
                (wrap_data_key(cipher, kek, "t"),)).to_dict()  # fmt: skip
    mutate(d)  # type: ignore[operator]
    with pytest.raises(ManifestError):
        Keyring.from_dict(d)


def test_a_file_kek_is_created_whole_0400_and_never_overwritten(tmp_path: Path) -> None:
    from appliance.crypto import EntryPointKek, FileKek, create_missing
    from appliance.errors import UsageError

    kek = create_missing(FileKek(tmp_path / "store.kek"))  # init --encrypt's and first boot's path
    assert isinstance(kek, FileKek) and os.stat(kek.path).st_mode & 0o777 == 0o400 and len(kek.kek()) == 32
    before = kek.path.read_bytes()
    assert create_missing(FileKek(kek.path)).kek() == before  # an existing KEK is used, not replaced
    with pytest.raises(UsageError, match="never overwritten"):
        FileKek.create(kek.path)
    assert kek.path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["store.kek"]  # no temp file left
    group = FileKek.create(tmp_path / "group.kek", os.getgid())
    assert os.stat(group.path).st_mode & 0o777 == 0o440 and len(group.kek()) == 32  # the group may read it
    provider = EntryPointKek("vendor.optee:kek")
    assert create_missing(provider) is provider  # nothing to create
