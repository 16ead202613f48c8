"""Provisioning file rules, device identity and the file key provider (torch-free; runs on 3.10)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.errors import KeyProviderError, ProvisioningError
from appliance.format.provisioning import DeviceIdentity, Provisioning, check_device_id
from appliance.node.config import NodeConfig
from appliance.node.keyprovider import DEVICE_KEY, FileKeyProvider, open_key_provider

pytestmark = pytest.mark.unit
HASH = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$J4moa2MM0/6uf3HbY2Tf5Fux8JIBTwIhmhxGRE8S9jo"


def doc(**fields: object) -> bytes:
    return json.dumps({"format": "appliance.provision", "version": 1, **fields}).encode()


def test_a_full_provisioning_file_parses() -> None:
    p = Provisioning.from_bytes(
        doc(device_id="orin-0042", technicians=[{"name": "ana", "password_hash": HASH}],
            remote={"url": "s3://bucket/node"}, channel={"name": "stable"})
    )  # fmt: skip
    assert p.device_id == "orin-0042"
    assert [t.name for t in p.technicians] == ["ana"]
    assert p.remote == {"url": "s3://bucket/node"} and p.channel == {"name": "stable"}


def test_plaintext_passwords_are_refused_with_the_remedy() -> None:
    with pytest.raises(ProvisioningError, match="plaintext password") as exc:
        Provisioning.from_bytes(doc(technicians=[{"name": "ana", "password": "hunter2"}]))
    assert "password_hash" in exc.value.remedy


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"technicians": [{"name": "Ana!", "password_hash": HASH}]}, "not a user name"),
        ({"technicians": [{"name": "ana", "password_hash": "hunter2"}]}, "not a PHC hash"),
        ({"technicians": [{"name": "ana", "password_hash": HASH}] * 2}, "listed twice"),
        ({"technicians": {"ana": HASH}}, "must be a list"),
        ({"remote": "s3://x"}, "remote must be a JSON object"),
        ({"device_id": "../etc"}, "device id"),
        ({"secret_sauce": 1}, "unknown field"),
    ],
    ids=["name", "hash", "twice", "not-list", "remote", "device-id", "unknown"],
)
def test_each_bad_field_is_named(fields: dict[str, object], match: str) -> None:
    with pytest.raises(ProvisioningError, match=match):
        Provisioning.from_bytes(doc(**fields))


@pytest.mark.parametrize("data", [b"", b"{", b"[]", b'{"format": "appliance.provision", "version": 2}', b"x" * 70000])
def test_garbage_is_a_provisioning_error_never_a_crash(data: bytes) -> None:
    with pytest.raises(ProvisioningError):
        Provisioning.from_bytes(data)


@given(st.binary(max_size=300))
def test_any_bytes_parse_or_raise_provisioning_error(data: bytes) -> None:
    try:
        parsed = Provisioning.from_bytes(data)
    except ProvisioningError:
        return
    assert all(t.password_hash.startswith("$") for t in parsed.technicians)


@given(st.text(max_size=80))
def test_device_ids_are_safe_path_and_field_values(value: str) -> None:
    try:
        out = check_device_id(value, "test")
    except ProvisioningError:
        return
    assert out and len(out) <= 64 and "/" not in out and not out.startswith((".", "-"))


def test_device_identity_round_trips() -> None:
    ident = DeviceIdentity("orin-1", "ab" * 32, "file", "2026-01-01T00:00:00Z")
    assert DeviceIdentity.from_dict(json.loads(json.dumps(ident.to_dict()))) == ident
    with pytest.raises(ProvisioningError):
        DeviceIdentity.from_dict({**ident.to_dict(), "device_id": "a/b"})


# --- the file key provider ---------------------------------------------------------------------


def test_signing_key_is_created_once_with_mode_0400(tmp_path: Path) -> None:
    keys = FileKeyProvider(tmp_path, {DEVICE_KEY: tmp_path / "device.key"})
    first = keys.create_signing_key(DEVICE_KEY)
    assert stat.S_IMODE((tmp_path / "device.key").stat().st_mode) == 0o400
    assert keys.create_signing_key(DEVICE_KEY) == first  # idempotent, never overwritten
    assert keys.public_key(DEVICE_KEY) == first
    assert (tmp_path / "device.key.pub").read_bytes() == first.to_pem()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.skipif(os.geteuid() != 0, reason="hands a key file to another uid: needs root, as first boot has")
def test_first_boot_as_root_signs_with_the_key_it_provisioned_for_the_persist_user(tmp_path: Path) -> None:
    """VM tier, encrypted first boot: the device key is created owned by appliance-persist, and then root
    could not load it to sign the re-sealed factory checkpoint ("owned by uid 995, this process runs as
    uid 0"). Root may use a key owned by the provider's owner, and no other uid's."""
    from appliance.errors import KeyPermissionError
    from appliance.signing import SigningKey

    keys = FileKeyProvider(tmp_path, {DEVICE_KEY: tmp_path / "device.key"}, owner=(54321, 54321))
    public = keys.create_signing_key(DEVICE_KEY)
    assert (tmp_path / "device.key").stat().st_uid == 54321
    key = keys.signing_key(DEVICE_KEY)
    assert key.public == public and public.verify(key.sign(b"factory"), b"factory")
    with pytest.raises(KeyPermissionError, match="owned by uid 54321"):
        SigningKey.load(tmp_path / "device.key")  # without naming its owner: refused as before
    other = FileKeyProvider(tmp_path, {DEVICE_KEY: tmp_path / "device.key"}, owner=(54322, 54322))
    with pytest.raises(KeyProviderError, match="owned by uid 54321"):
        other.signing_key(DEVICE_KEY)  # a key of any other uid: still refused


def test_a_leftover_temp_file_from_a_cut_is_ignored(tmp_path: Path) -> None:
    (tmp_path / f".tmp-{os.getpid()}-device.key").write_bytes(b"-----BEGIN PRIV")  # cut mid-write
    keys = FileKeyProvider(tmp_path)
    keys.create_signing_key("device")
    assert keys.signing_key("device").public == keys.public_key("device")


def test_reads_fail_closed(tmp_path: Path) -> None:
    keys = FileKeyProvider(tmp_path)
    with pytest.raises(KeyProviderError, match="cannot be read"):
        keys.signing_key("device")
    (tmp_path / "device.key").write_bytes(b"not a key")
    with pytest.raises(KeyProviderError):
        keys.signing_key("device")
    with pytest.raises(KeyProviderError, match="identifier"):
        keys.path("../etc/shadow")


def test_secrets_for_encryption_at_rest(tmp_path: Path) -> None:
    keys = FileKeyProvider(tmp_path)
    keys.create_secret("data", 32)
    first = keys.secret("data")
    keys.create_secret("data", 32)
    assert keys.secret("data") == first and len(first) == 32
    assert stat.S_IMODE((tmp_path / "data.secret").stat().st_mode) == 0o400
    with pytest.raises(KeyProviderError):
        keys.create_secret("tiny", 4)
    with pytest.raises(KeyProviderError):
        keys.secret("missing")


def test_node_json_picks_the_provider(tmp_path: Path) -> None:
    config = NodeConfig(signing_key=str(tmp_path / "k" / "device.key"))
    keys = open_key_provider(config)
    assert isinstance(keys, FileKeyProvider)
    public = keys.create_signing_key(DEVICE_KEY)
    assert (tmp_path / "k" / "device.key").exists() and keys.describe()["provider"] == "file"
    assert public.keyid


# --- the blkid guard ---------------------------------------------------------------------------

EMPTY_GPT_PARTITION = """DEVNAME=/dev/vdb1
PART_ENTRY_SCHEME=gpt
PART_ENTRY_NAME=CKPT_A
PART_ENTRY_UUID=5f1c7b1e-2b6a-4c1e-9d0e-8f3f5a7c9b10
PART_ENTRY_TYPE=0fc63daf-8483-4772-8e79-3d69d8477de4
PART_ENTRY_NUMBER=1
PART_ENTRY_OFFSET=2048
PART_ENTRY_SIZE=1048576
PART_ENTRY_DISK=254:16
"""


def test_an_empty_gpt_partition_reports_only_its_table_entry_and_counts_as_empty() -> None:
    from appliance.provision.partitions import signature

    assert signature(EMPTY_GPT_PARTITION) == {}
    assert signature("") == {}


@pytest.mark.parametrize(
    "extra", ["TYPE=ext4\nUSAGE=filesystem", "TYPE=swap", "PTTYPE=dos", "TYPE=crypto_LUKS", "SOMETHING_NEW=1"]
)
def test_any_signature_or_unknown_field_counts_as_in_use(extra: str) -> None:
    from appliance.provision.partitions import signature

    assert signature(EMPTY_GPT_PARTITION + extra + "\n").get("TYPE") or signature(EMPTY_GPT_PARTITION + extra)["PTTYPE"]
