"""First boot into an encrypted store (node.json ``encrypt_kek``, issue 18): created, resumed, refused, no plaintext.

The image is test_firstboot's (partition images that real blkid/mkfs.ext4 format, the real
`appliance firstboot` process); the factory checkpoint holds test_encryption's known pattern, so
that suite's plaintext search (``plaintext_hits``) finds the factory tensors anywhere they lie
in the clear. A cut between the keyring and store.json is made in-process (the store step dies
at store.json's write); a cut after a step's marker is a SIGKILL of the real process.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from appliance import api
from appliance.crypto import FileKek
from appliance.errors import ProvisioningError
from appliance.node.config import load_config
from appliance.provision import files
from appliance.provision import firstboot as firstboot_module
from appliance.provision.firstboot import FirstBoot, FirstBootPaths
from appliance.signing import SigningKey
from appliance.sources.tensors import sources_from_dict
from appliance.store.config import StoreConfig
from appliance.store.store import Store
from tests.integration.test_encryption import plaintext_hits, same_bytes, state
from tests.integration.test_firstboot import CLI, _cut_after, firstboot, make_image

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def factory(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A release-signed factory checkpoint of the known pattern, exported plain (as a release image ships it)."""
    work = tmp_path_factory.mktemp("release")
    key = SigningKey.generate()
    store = Store.init(work / "store", [key.public], StoreConfig(model="factory-model", frame_size=16384))
    store.commit(sources_from_dict(state(0)), [key])
    out = work / "factory"
    subprocess.run([*CLI, "export", str(work / "store"), str(out)], check=True, capture_output=True, timeout=300)
    (out / "store.json").write_bytes((work / "store/store.json").read_bytes())
    (work / "release.json").write_bytes((work / "store/trust.json").read_bytes())
    assert plaintext_hits(out)  # the plain factory shows the pattern: the search can fail
    return out


def encrypted_image(tmp: Path, factory: Path) -> tuple[Path, Path, Path]:
    """(image root, node.json, KEK path) of a node whose node.json asks for an encrypted store."""
    root, node_json = make_image(tmp, factory)
    kek = root / "etc/appliance/store.kek"
    node_json.write_text(json.dumps({**json.loads(node_json.read_text()), "encrypt_kek": f"file:{kek}"}))
    return root, node_json, kek


def store_of(node_json: Path) -> Path:
    return Path(json.loads(node_json.read_text())["store"])


def markers(output: str) -> dict[str, str]:
    lines = [line.split(" ", 2) for line in output.splitlines() if line.startswith("APPLIANCE-FIRSTBOOT ")]
    return {parts[1]: parts[2] if len(parts) > 2 else "" for parts in lines}


def assert_encrypted_and_serves_the_factory(root: Path, node_json: Path, kek: Path) -> None:
    store = store_of(node_json)
    done = json.loads((root / "var/lib/appliance-provision/done.json").read_text())
    config = json.loads(node_json.read_text())
    assert json.loads((store / "store.json").read_text())["encrypt"] is True
    group = files.group_id() if os.geteuid() == 0 else None  # as root: readable by the node's services
    mode = (kek.stat().st_mode, kek.stat().st_gid)
    assert (stat.S_IMODE(mode[0]), mode[1] if group else None) == ((0o440, group) if group else (0o400, None))
    assert kek.stat().st_size == 32
    assert sorted(p.name for p in store.glob("keyring*")) == ["keyring.copy.json", "keyring.json"]
    # the plain factory generation 1 is re-sealed as generation 2, signed by the registered device key
    assert done["factory_generation"] == 2 == json.loads(Path(config["floor_file"]).read_text())["floor"]
    verify = subprocess.run([*CLI, "verify", str(store), "--deep", "--json"], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    opened = Store.open(store, device_id=done["device_id"])
    selected = opened.select().opened
    assert selected.verified.manifest.encryption is not None and selected.verified.manifest.generation == 2
    loaded = api.load(opened).tensors
    assert all(same_bytes(loaded[name], tensor) for name, tensor in state(0).items())
    assert plaintext_hits(store) == []  # no factory tensor in the clear anywhere on the medium
    assert plaintext_hits(root / "etc") == []


def test_encrypted_first_boot_creates_the_keyring_reseals_the_factory_and_restores_it(
    tmp_path: Path, factory: Path
) -> None:
    root, node_json, kek = encrypted_image(tmp_path, factory)
    done = firstboot(root, node_json)
    assert done.returncode == 0, done.stderr
    steps = markers(done.stderr)
    assert steps["store"] == "created encrypted (kek: file) for model 'factory-model'"
    assert "re-sealed as generation 2" in steps["factory"]
    events = [json.loads(line) for line in (tmp_path / "log/events.jsonl").read_text().splitlines()]
    store_event = next(e["fields"] for e in events if e["event"] == "provision.step" and e["fields"]["step"] == "store")
    assert store_event["detail"].startswith("created encrypted (kek: file)")
    assert_encrypted_and_serves_the_factory(root, node_json, kek)
    keyring = (store_of(node_json) / "keyring.json").read_bytes()
    again = firstboot(root, node_json, "provision")
    assert again.returncode == 0 and (store_of(node_json) / "keyring.json").read_bytes() == keyring


class Cut(BaseException):
    """The power goes: raised where a write would start (not an ApplianceError: no step handles it)."""


def cut_before_store_json(root: Path, node_json: Path, monkeypatch: pytest.MonkeyPatch, *, copy: bool) -> bytes:
    """Run first boot in-process until the store step writes store.json, and die there; the keyring's bytes."""
    assert firstboot(root, node_json, "format").returncode == 0
    write_file = firstboot_module.files.write_file

    def dying(path: Path, data: bytes, *args: object, **kw: object) -> None:
        if path.name == "store.json":
            raise Cut
        write_file(path, data, *args, **kw)  # type: ignore[arg-type]

    with monkeypatch.context() as patch:
        patch.setattr(firstboot_module.files, "write_file", dying)
        with pytest.raises(Cut):
            FirstBoot(load_config(node_json), FirstBootPaths().under(root), say=lambda _: None).provision()
    store = store_of(node_json)
    assert not (store / "store.json").exists()
    if not copy:
        (store / "keyring.copy.json").unlink()  # the cut came between the keyring's two copies
    return (store / "keyring.json").read_bytes()


@pytest.mark.faults
@pytest.mark.parametrize("copy", [True, False], ids=["both-copies", "primary-only"])
def test_a_cut_between_keyring_and_store_json_resumes_with_the_same_keyring(
    tmp_path: Path, factory: Path, monkeypatch: pytest.MonkeyPatch, copy: bool
) -> None:
    root, node_json, kek = encrypted_image(tmp_path, factory)
    keyring = cut_before_store_json(root, node_json, monkeypatch, copy=copy)
    kek_bytes = kek.read_bytes()
    done = firstboot(root, node_json)
    assert done.returncode == 0, done.stderr
    assert markers(done.stderr)["store"] == "created encrypted (kek: file, keyring reused) for model 'factory-model'"
    store = store_of(node_json)
    assert (store / "keyring.json").read_bytes() == keyring == (store / "keyring.copy.json").read_bytes()
    assert kek.read_bytes() == kek_bytes  # never a new KEK
    assert_encrypted_and_serves_the_factory(root, node_json, kek)


@pytest.mark.faults
@pytest.mark.parametrize(("kek_state", "code"), [("other", 56), ("missing", 55)])
def test_a_wrong_or_missing_kek_on_resume_is_refused_typed_and_writes_nothing(
    tmp_path: Path, factory: Path, monkeypatch: pytest.MonkeyPatch, kek_state: str, code: int
) -> None:
    root, node_json, kek = encrypted_image(tmp_path, factory)
    keyring = cut_before_store_json(root, node_json, monkeypatch, copy=True)
    kek.unlink()
    if kek_state == "other":
        FileKek.create(kek)
    store = store_of(node_json)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if "log" not in p.parts)
    done = firstboot(root, node_json, "provision")
    assert done.returncode == code, done.stderr
    assert "earlier first boot" in done.stderr and "keyring" in done.stderr  # problem and remedy
    assert "APPLIANCE-FIRSTBOOT store FAILED" in done.stderr
    after = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if "log" not in p.parts)
    assert after == before  # no store.json, no second keyring, no new KEK
    assert (store / "keyring.json").read_bytes() == keyring and not (store / "store.json").exists()


@pytest.mark.faults
@pytest.mark.parametrize("step", ["store", "register", "factory"])
def test_a_cut_after_a_step_of_an_encrypted_first_boot_completes_encrypted(
    tmp_path: Path, factory: Path, step: str
) -> None:
    root, node_json, kek = encrypted_image(tmp_path, factory)
    assert _cut_after(root, node_json, step)
    done = firstboot(root, node_json)
    assert done.returncode == 0, done.stderr
    assert_encrypted_and_serves_the_factory(root, node_json, kek)


def test_a_plain_store_left_on_the_partitions_is_never_taken_for_an_encrypted_one(
    tmp_path: Path, factory: Path
) -> None:
    root, node_json, _ = encrypted_image(tmp_path, factory)
    store = store_of(node_json)
    (store / "store.json").write_text(json.dumps(StoreConfig(model="factory-model").to_dict()))
    boot = FirstBoot(load_config(node_json), FirstBootPaths().under(root), say=lambda _: None)
    with pytest.raises(ProvisioningError, match="holds a plain one") as info:
        boot._store()
    assert "appliance key" in info.value.remedy and not list(store.glob("keyring*"))
