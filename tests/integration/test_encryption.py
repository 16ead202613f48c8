"""Encryption at rest (issue 18): sealed frames round-trip, no plaintext on the medium, typed key errors.

The known pattern: every tensor holds bytes of ``SECRET`` (a fixed pseudo-random block, so no
codec can compress it and a plain store keeps it verbatim); the check greps every file under
the store for 16-byte windows of it. The same state in a plain store is found (the check can fail).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from appliance import api
from appliance.crypto import FileKek
from appliance.errors import (
    CryptoErasedError,
    FrameAuthenticationError,
    FrameError,
    KeyUnavailableError,
    UsageError,
    WrongKeyError,
)
from appliance.format.dtypes import DTYPES
from appliance.signing import SigningKey
from appliance.sources.tensors import sources_from_dict
from appliance.store import layout
from appliance.store.config import StoreConfig
from appliance.store.keys import crypto_erase
from appliance.store.store import Store

pytestmark = pytest.mark.integration

SECRET = np.random.default_rng(1818).integers(0, 256, 256 * 1024, dtype=np.uint8).tobytes()
NEEDLES = [SECRET[i : i + 16] for i in range(0, len(SECRET) - 16, 1024)]


def patterned(n_bytes: int, seed: int = 0) -> np.ndarray:
    """``n_bytes`` of SECRET (repeated if longer), with a few per-seed bit flips (so commits differ)."""
    data = np.frombuffer(SECRET * (n_bytes // len(SECRET) + 1), np.uint8)[:n_bytes].copy()
    rng = np.random.default_rng(seed)
    data[rng.integers(0, n_bytes, 4)] ^= 1
    return data


def state(seed: int = 0) -> dict[str, torch.Tensor]:
    return {
        "w": torch.from_numpy(patterned(96 * 1024, seed)).view(torch.bfloat16).reshape(96, 512),
        "b": torch.from_numpy(patterned(4096, seed + 1)).view(torch.float32),
    }


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-for-bit equality (random bytes hold NaNs, which ``torch.equal`` calls different)."""
    return a.dtype == b.dtype and bytes(a.contiguous().view(torch.uint8).numpy()) == bytes(
        b.contiguous().view(torch.uint8).numpy()
    )


def plaintext_hits(root: Path) -> list[str]:
    """Files under ``root`` holding any 16-byte window of SECRET (its plaintext signature)."""
    needles = NEEDLES
    hits = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            data = (Path(dirpath) / name).read_bytes()
            if any(n in data for n in needles):
                hits.append(str(Path(dirpath, name).relative_to(root)))
    return hits


@pytest.fixture
def kek_path(tmp_path: Path) -> Path:
    return FileKek.create(tmp_path / "store.kek").path


def make_store(
    tmp_path: Path, kek_path: Path, policy: str = "compact", name: str = "s", key: SigningKey | None = None
) -> tuple[Store, SigningKey]:
    key = key or SigningKey.generate()
    config = StoreConfig(model="m", frame_size=16384, policy=policy, encrypt=True)
    return Store.init(tmp_path / name, [key.public], config, kek=FileKek(kek_path)), key


@pytest.mark.parametrize("policy", ["compact", "fast"])
def test_sealed_commits_round_trip_and_leave_no_plaintext_on_the_medium(
    tmp_path: Path, kek_path: Path, policy: str
) -> None:
    store, key = make_store(tmp_path, kek_path, policy)
    store.commit(sources_from_dict(state(0)), [key])
    second = state(0)
    second["b"] = torch.from_numpy(patterned(4096, 9)).view(torch.float32)
    result, _ = store.commit(sources_from_dict(second), [key])  # a child: reuse and deltas under the same key
    assert result.counts["reused"] + result.counts["delta"] > 0
    opened = store.select().opened
    assert opened.verified.manifest.version == 3 and opened.verified.manifest.encryption is not None
    loaded = api.load(Store.open(tmp_path / "s"))
    assert all(same_bytes(loaded.tensors[k], v) for k, v in second.items())
    assert store.verify(deep=True).all_ok
    assert plaintext_hits(tmp_path / "s") == []
    # the same state committed to a plain store does show the pattern (the check can fail)
    plain_key = SigningKey.generate()
    plain = Store.init(tmp_path / "plain", [plain_key.public], StoreConfig(model="m", frame_size=16384, policy=policy))
    plain.commit(sources_from_dict(second), [plain_key])
    assert plaintext_hits(tmp_path / "plain")


def test_raw_identities_are_keyed_so_two_stores_do_not_reveal_shared_frames(tmp_path: Path) -> None:
    a, ka = make_store(tmp_path, FileKek.create(tmp_path / "a.kek").path, name="a")
    b, kb = make_store(tmp_path, FileKek.create(tmp_path / "b.kek").path, name="b")
    a.commit(sources_from_dict(state(0)), [ka])
    b.commit(sources_from_dict(state(0)), [kb])
    raw_a = {f.raw_digest for f in a.select().opened.verified.manifest.all_frames()}
    raw_b = {f.raw_digest for f in b.select().opened.verified.manifest.all_frames()}
    assert raw_a and not raw_a & raw_b


def test_a_wrong_kek_is_a_typed_node_fault_and_marks_nothing(tmp_path: Path, kek_path: Path) -> None:
    store, key = make_store(tmp_path, kek_path)
    store.commit(sources_from_dict(state(0)), [key])
    other = FileKek.create(tmp_path / "other.kek")
    with pytest.raises(WrongKeyError) as info:
        api.load(Store.open(tmp_path / "s", kek=other))
    assert info.value.exit_code == 56
    assert not any((tmp_path / "s" / slot / layout.SLOT_STATE).exists() for slot in "AB")


def test_a_missing_kek_is_key_unavailable(tmp_path: Path, kek_path: Path) -> None:
    store, key = make_store(tmp_path, kek_path)
    store.commit(sources_from_dict(state(0)), [key])
    kek_path.unlink()
    with pytest.raises(KeyUnavailableError) as info:
        api.load(Store.open(tmp_path / "s"))
    assert type(info.value) is KeyUnavailableError and info.value.exit_code == 55


def test_a_kek_readable_by_others_is_refused(tmp_path: Path, kek_path: Path) -> None:
    store, key = make_store(tmp_path, kek_path)
    store.commit(sources_from_dict(state(0)), [key])
    kek_path.chmod(0o444)
    with pytest.raises(KeyUnavailableError, match="mode"):
        api.load(Store.open(tmp_path / "s"))


def test_flipped_ciphertext_fails_the_stored_digest_before_decryption(tmp_path: Path, kek_path: Path) -> None:
    store, key = make_store(tmp_path, kek_path)
    store.commit(sources_from_dict(state(0)), [key])
    opened = store.select().opened
    frame = opened.verified.manifest.tensors[0].frames[0]
    path = tmp_path / "s" / layout.frame_path(opened.slot, frame.digest)
    data = bytearray(path.read_bytes())
    data[40] ^= 0x01
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    with pytest.raises(FrameError) as info:
        store.restore_into(opened, {t.name: np.empty(t.nbytes, np.uint8) for t in opened.verified.manifest.tensors})
    assert type(info.value) is FrameError and "SHA-256" in info.value.problem  # not an authentication failure


def test_crypto_erase_makes_restore_fail_with_the_typed_error(tmp_path: Path, kek_path: Path) -> None:
    store, key = make_store(tmp_path, kek_path)
    store.commit(sources_from_dict(state(0)), [key])
    done = crypto_erase(store.storage)
    assert done["destroyed"] == ["keyring.json", "keyring.copy.json"]
    with pytest.raises(CryptoErasedError) as info:
        api.load(Store.open(tmp_path / "s"))
    assert info.value.exit_code == 57


def test_a_frame_forged_without_the_key_fails_authentication(tmp_path: Path, kek_path: Path) -> None:
    """The attacker holds a signing key (a stolen device key) but not the data key."""
    from appliance.crypto.aead import new_data_key
    from appliance.store.sealed import aad_of

    store, key = make_store(tmp_path, kek_path)
    store.commit(sources_from_dict(state(0)), [key])
    opened = store.select().opened
    manifest = opened.verified.manifest
    frame = manifest.tensors[1].frames[0]
    forger = new_data_key()  # a key of the attacker's own, under the victim's record
    forged = forger.seal(os.urandom(frame.size - 28), aad_of(forger, frame))
    from appliance.store.slot import SlotReader

    reader = SlotReader(store.storage, opened.slot)
    from appliance.format.digest import Digest

    forged_ref = type(frame)(Digest.of(forged), len(forged), frame.raw_digest, frame.raw_size, frame.codec)
    from appliance.store.keys import cipher_for
    from appliance.store.sealed import decode_stored

    reader.verify_frame(forged_ref, memoryview(forged))  # the stored digest is valid for the forged bytes
    with pytest.raises(FrameAuthenticationError) as info:
        from appliance.codec.frames import Scratch

        out = np.empty(frame.raw_size, np.uint8)
        decode_stored(forged, forged_ref, out, Scratch(), cipher_for(store.storage, manifest.encryption))
    assert info.value.exit_code == 58


@pytest.mark.parametrize("name", sorted(DTYPES))
def test_every_dtype_round_trips_sealed_through_both_restore_paths(tmp_path: Path, kek_path: Path, name: str) -> None:
    from appliance.codec.gpu import CpuBatchDecoder
    from appliance.gpu.restore import restore_to_device

    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        pytest.skip(f"torch {torch.__version__} has no {name}")
    itemsize = torch.empty(0, dtype=dtype).element_size()
    raw = torch.from_numpy(patterned(itemsize * 4096, len(name)))
    tensor = raw.view(torch.uint8).view(dtype) if dtype != torch.bool else (raw & 1).bool()
    store, key = make_store(tmp_path, kek_path)
    store.commit(sources_from_dict({"x": tensor}), [key])
    loaded = api.load(Store.open(tmp_path / "s"))
    assert bytes(loaded.tensors["x"].view(torch.uint8).numpy()) == bytes(tensor.view(torch.uint8).numpy())
    opened = store.select().opened
    dest, _ = restore_to_device(store.storage, opened, "cpu", CpuBatchDecoder(), batch_bytes=20_000)
    assert bytes(dest["x"].numpy()) == bytes(tensor.contiguous().view(torch.uint8).numpy())


def _frame_files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_ino for p in root.glob("[AB]/frames/*")}


def test_kek_rotation_rewraps_without_rewriting_a_frame(tmp_path: Path, kek_path: Path) -> None:
    from appliance.store import encryption

    store, key = make_store(tmp_path, kek_path)
    store.commit(sources_from_dict(state(0)), [key])
    before = _frame_files(tmp_path / "s")
    new = FileKek.create(tmp_path / "new.kek")
    status = encryption.rotate_kek(store, new)
    assert status["kek_provider"] == new.descriptor() and status["kek"] == "available"
    assert _frame_files(tmp_path / "s") == before  # same files, same inodes: nothing rewritten
    loaded = api.load(Store.open(tmp_path / "s"))
    assert same_bytes(loaded.tensors["w"], state(0)["w"])
    with pytest.raises(WrongKeyError):  # the old KEK no longer opens the store
        api.load(Store.open(tmp_path / "s", kek=FileKek(kek_path)))


def test_data_key_rotation_reseals_the_newest_checkpoint_by_compaction(tmp_path: Path, kek_path: Path) -> None:
    from appliance.store import encryption

    store, key = make_store(tmp_path, kek_path)
    store.commit(sources_from_dict(state(0)), [key])
    old = store.select().opened.verified.manifest.encryption
    done = encryption.rotate_data_key(store, [key])
    opened = store.select().opened
    new = opened.verified.manifest.encryption
    assert old is not None and new is not None and new.key_id != old.key_id == done["keys"][0]
    assert done["commit"]["frame_kinds"]["reused"] == 0 and done["commit"]["frame_kinds"]["delta"] == 0
    assert same_bytes(api.load(Store.open(tmp_path / "s")).tensors["w"], state(0)["w"])
    # once retention has dropped every checkpoint sealed under the old key, it is retired
    assert encryption.retire_unused(store) == []  # generation 1 (old key) is still committed
    for seed in range(1, 5):  # keep=2 per slot: four more commits retire generation 1
        store.commit(sources_from_dict(state(seed)), [key])
    assert old.key_id not in encryption.status(store)["used_by"]
    assert encryption.retire_unused(store) == [old.key_id]
    assert encryption.status(store)["keys"] == [new.key_id]
    assert plaintext_hits(tmp_path / "s") == []


def test_the_cli_inits_commits_restores_and_crypto_erases(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from safetensors.torch import save_file

    from appliance.cli.main import main

    def run(*argv: str) -> tuple[int, dict[str, object]]:
        code = main([*argv, "--json"])
        out = capsys.readouterr().out
        return code, json.loads(out) if out.strip() else {}

    key, root = tmp_path / "k", tmp_path / "store"
    save_file(state(0), str(tmp_path / "m.safetensors"))
    assert run("keygen", str(key))[0] == 0
    code, init = run("init", str(root), "--trust", f"{key}.pub", "--model", "m", "--encrypt")
    assert code == 0 and init["encrypted"] and init["kek"] == {"provider": "file", "path": f"{root}.kek"}
    assert (Path(f"{root}.kek").stat().st_mode & 0o777) == 0o400
    assert run("commit", str(root), str(tmp_path / "m.safetensors"), "--key", str(key))[0] == 0
    code, status = run("key", str(root), "status")
    assert code == 0 and status["kek"] == "available" and len(status["keys"]) == 1
    assert run("restore", str(root), "--out", str(tmp_path / "out.safetensors"))[0] == 0
    assert plaintext_hits(root) == []
    code, erased = run("erase", str(root), "--crypto", "--yes")
    assert code == 0 and erased["seconds"] < 1.0
    code, error = run("restore", str(root), "--out", str(tmp_path / "again.safetensors"))
    assert code == 57 and error["error"] == "CryptoErasedError"


@pytest.mark.skipif(os.geteuid() != 0, reason="systemd-creds encrypts with the host key, readable by root only")
def test_a_systemd_creds_kek_seals_and_opens_the_store(tmp_path: Path) -> None:
    from appliance.crypto import SystemdCredsKek

    if not SystemdCredsKek.available():
        pytest.skip("systemd-creds (systemd >= 250) is not installed on this machine")
    kek = SystemdCredsKek.create(tmp_path / "kek.cred", with_key="host")
    assert len(kek.kek()) == 32 and b"\x00" not in (tmp_path / "kek.cred").read_bytes()[:0]
    key = SigningKey.generate()
    store = Store.init(tmp_path / "s", [key.public], StoreConfig(model="m", frame_size=16384, encrypt=True), kek=kek)
    store.commit(sources_from_dict(state(0)), [key])
    assert same_bytes(api.load(Store.open(tmp_path / "s")).tensors["w"], state(0)["w"])  # via the keyring's descriptor
    (tmp_path / "kek.cred").write_bytes(b"garbage")
    with pytest.raises(KeyUnavailableError, match="systemd-creds decrypt failed"):
        api.load(Store.open(tmp_path / "s"))


def _export(store: Store, dest: Path) -> None:
    from appliance.storage import LocalStorage
    from appliance.transfer import export_checkpoints, select_for_export

    dest.mkdir()
    export_checkpoints(store, LocalStorage(dest), select_for_export(store, None))


def test_export_carries_ciphertext_and_another_store_refuses_it_before_copying(tmp_path: Path, kek_path: Path) -> None:
    from appliance.storage import LocalStorage
    from appliance.transfer.reseal import import_sealed

    store, key = make_store(tmp_path, kek_path)
    store.commit(sources_from_dict(state(0)), [key])
    _export(store, tmp_path / "stick")
    assert plaintext_hits(tmp_path / "stick") == []
    other = Store.init(tmp_path / "other", [key.public], StoreConfig(model="m", frame_size=16384, encrypt=True),
                       kek=FileKek.create(tmp_path / "other.kek"))  # fmt: skip
    with pytest.raises(WrongKeyError, match="does not hold"):
        import_sealed(other, LocalStorage(tmp_path / "stick"), [key])
    assert not list((tmp_path / "other").glob("[AB]/frames/*"))


def test_import_of_a_plain_checkpoint_reseals_it_under_the_store_key(tmp_path: Path, kek_path: Path) -> None:
    from appliance.storage import LocalStorage
    from appliance.transfer.reseal import import_sealed

    key = SigningKey.generate()
    plain = Store.init(tmp_path / "plain", [key.public], StoreConfig(model="m", frame_size=16384))
    plain.commit(sources_from_dict(state(0)), [key])
    plain.commit(sources_from_dict(state(1)), [key])  # a delta chain in the source
    _export(plain, tmp_path / "stick")
    assert plaintext_hits(tmp_path / "stick")  # a plain export does show the pattern
    store, _ = make_store(tmp_path, kek_path, key=key)
    with pytest.raises(UsageError, match="re-sealed and re-signed"):
        import_sealed(store, LocalStorage(tmp_path / "stick"), [])
    done = import_sealed(store, LocalStorage(tmp_path / "stick"), [key])
    assert done["mode"] == "re-sealed" and done["generation"] == done["source_generation"] + 1
    opened = store.select().opened
    assert opened.verified.manifest.encryption is not None
    assert same_bytes(api.load(Store.open(tmp_path / "s")).tensors["w"], state(1)["w"])
    assert plaintext_hits(tmp_path / "s") == []


def test_replication_uploads_ciphertext_only_and_pulls_back_under_the_node_key(
    tmp_path: Path, kek_path: Path, server: object
) -> None:
    """The bucket holds sealed frames and the clear bundle only; the node (keyring intact) pulls them back."""
    import shutil

    from appliance.events import EventLog
    from appliance.remote.replicate import Replicator
    from appliance.remote.state import StateDir
    from tests.integration.test_remote import Node

    key, head = SigningKey.generate(), SigningKey.generate()
    node = Node(tmp_path, server, key, head)  # type: ignore[arg-type]
    config = StoreConfig(model="test-model", frame_size=16384, encrypt=True)
    node.store = Store.init(tmp_path / "sealed", [key.public], config, kek=FileKek(kek_path))
    node.replicator = Replicator(
        node.store, node.objects, device="node-1", keys=[head], state_dir=StateDir(str(tmp_path / "sealed-state")),
        events=EventLog(tmp_path / "ev.jsonl", "replicate", journal=None), retry_base=0.01, retry_cap=0.05,
    )  # fmt: skip
    node.store.commit(sources_from_dict(state(0)), [key])
    assert node.replicator.step()["action"] == "replicated"
    assert list(node.bucket().rglob("*")) and plaintext_hits(node.bucket()) == []
    for slot in "AB":  # both slots lost; the keyring (and the KEK) survive on the node
        shutil.rmtree(tmp_path / "sealed" / slot)
        (tmp_path / "sealed" / slot / "frames").mkdir(parents=True)
        (tmp_path / "sealed" / slot / "checkpoints").mkdir()
    node.store = Store.open(tmp_path / "sealed")
    result = node.pull()
    assert result.generation == 1
    assert same_bytes(api.load(Store.open(tmp_path / "sealed")).tensors["w"], state(0)["w"])


def test_sealing_switched_on_for_new_commits_of_a_plain_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`appliance key ROOT enable`: later commits are sealed and share no frame with the plain parent."""
    import json

    from appliance.cli.main import main

    key = SigningKey.generate()
    store = Store.init(tmp_path / "s", [key.public], StoreConfig(model="m", frame_size=16384))
    store.commit(sources_from_dict(state(0)), [key])
    assert (
        main(["key", str(tmp_path / "s"), "enable", "--kek", f"file:{tmp_path}/k.kek", "--create-kek", "--json"]) == 0
    )
    status = json.loads(capsys.readouterr().out)
    assert status["encrypt_new_commits"] and status["kek"] == "available" and status["used_by"] == {"plain": ["A/1"]}
    reopened = Store.open(tmp_path / "s")
    result, _ = reopened.commit(sources_from_dict(state(0)), [key])  # same content: still re-encoded, sealed
    assert result.counts["reused"] == 0 and result.counts["delta"] == 0
    sealed = reopened.select().opened
    assert sealed.generation == 2 and sealed.verified.manifest.encryption is not None
    assert same_bytes(api.load(Store.open(tmp_path / "s")).tensors["w"], state(0)["w"])
    assert same_bytes(api.load(Store.open(tmp_path / "s"), generation=1).tensors["w"], state(0)["w"])
    assert plaintext_hits(tmp_path / "s" / "B") == []  # slot A still holds the plain generation 1 until GC


def test_the_gpu_pipeline_restores_sealed_delta_chains_exactly_on_the_cpu_device(
    tmp_path: Path, kek_path: Path
) -> None:
    """Staging by payload size, decrypt into the staging buffer, level-ordered xor: the committed bytes."""
    from appliance.codec.gpu import CpuBatchDecoder
    from appliance.gpu.restore import plan_levels, restore_to_device

    store, key = make_store(tmp_path, kek_path)
    first = {"w": torch.randn(96, 512, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)}
    store.commit(sources_from_dict(first), [key])
    tuned = {"w": first["w"].clone()}
    tuned["w"].view(-1)[::97] += 0.01
    store.commit(sources_from_dict(tuned), [key])
    opened = store.select().opened
    assert len(plan_levels(opened)) == 2 and opened.verified.manifest.encryption is not None
    dest, stats = restore_to_device(store.storage, opened, "cpu", CpuBatchDecoder(), batch_bytes=30_000)
    assert bytes(dest["w"].numpy()) == bytes(tuned["w"].view(torch.uint8).numpy()) and stats.batches > 2


def test_a_systemd_creds_kek_is_sealed_to_the_tpm2_and_refused_where_there_is_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The node's services are unprivileged: a host-key credential (systemd's root-only secret) would
    lock them out of their own store, so first boot and `init --encrypt` seal to the TPM2 or refuse.
    The TPM2 path itself runs in the VM tier against swtpm (tests/vm, docs/image.md §5)."""
    import shutil

    from appliance.crypto import SystemdCredsKek

    if shutil.which("systemd-creds") is None:
        pytest.skip("systemd-creds (systemd >= 250) is not installed on this machine")
    probe = subprocess.run(["systemd-creds", "has-tpm2"], capture_output=True, text=True, check=False).stdout
    if "+driver" in probe.split():
        pytest.skip("this machine has a TPM2 driver: the refusal cannot be shown here")
    with pytest.raises(KeyUnavailableError, match="no usable TPM2") as caught:
        SystemdCredsKek.create(tmp_path / "kek.cred")
    assert "file:PATH" in caught.value.remedy and not (tmp_path / "kek.cred").exists()
    from appliance.cli.main import main

    key = tmp_path / "release"
    assert main(["keygen", str(key)]) == 0
    code = main(["init", str(tmp_path / "s"), "--trust", f"{key}.pub", "--model", "m", "--encrypt",
                 "--kek", f"systemd-creds:{tmp_path}/k.cred"])  # fmt: skip
    assert code == 55 and "no usable TPM2" in capsys.readouterr().err
    assert not (tmp_path / "s" / "store.json").exists() and not (tmp_path / "k.cred").exists()
