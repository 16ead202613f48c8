"""Export to and import from the portable layout: round trips, resume, and every refusal kind.

Each refusal test also checks that nothing local was lost: the node's checkpoints are the same
and still restore bit-exactly.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from appliance import api
from appliance.errors import (
    CheckpointNotFoundError,
    CompatibilityError,
    FrameError,
    ManifestError,
    OlderCheckpointError,
    PartialCheckpointError,
    RollbackError,
    SignatureError,
    SourceUnavailableError,
    StorageIOError,
    UnsafePathError,
    UntrustedKeyError,
)
from appliance.format.canonical import canonical_bytes
from appliance.format.digest import Digest
from appliance.format.portable import blob_key, parse_bundle_name
from appliance.signing import SigningKey
from appliance.storage import LocalStorage
from appliance.store.config import StoreConfig
from appliance.store.store import Store
from appliance.transfer import export_checkpoints, import_checkpoint, inspect_source, select_for_export
from tests.integration.conftest import flip_bit, nudge, same, weights

pytestmark = pytest.mark.integration


def _store(path: Path, key: SigningKey, model: str = "test-model") -> Store:
    return Store.init(path, [key.public], StoreConfig(model=model, frame_size=4096))


def _export(store: Store, dest: Path, generations: list[int] | None = None) -> dict[str, object]:
    dest.mkdir(parents=True, exist_ok=True)
    return export_checkpoints(store, LocalStorage(dest), select_for_export(store, generations)).to_dict()


def _restored(store: Store) -> dict[str, torch.Tensor]:
    return api.load(store).tensors


def _snapshot(store: Store) -> dict[str, bytes]:
    """Every committed file of both slots (records and bundles): what 'nothing local lost' compares."""
    root = Path(str(getattr(store.storage, "root")))
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.glob("[AB]/checkpoints/*"))}


@pytest.fixture
def source(tmp_path: Path, key: SigningKey) -> tuple[Store, Path, dict[str, torch.Tensor]]:
    """A node with two generations, exported (newest) to a stick directory."""
    src = _store(tmp_path / "src", key)
    state = weights(1)
    api.save(src, state, key)
    state = nudge(state, 0.01, 2)
    api.save(src, state, key)
    _export(src, tmp_path / "stick")
    return src, tmp_path / "stick", state


def test_export_then_import_restores_bit_exactly_into_a_fresh_store(source, tmp_path: Path, key: SigningKey) -> None:  # type: ignore[no-untyped-def]
    _, stick, state = source
    dst = _store(tmp_path / "dst", key)
    result = import_checkpoint(dst, LocalStorage(stick))
    assert result.generation == 2 and not result.already
    assert result.from_source == result.blobs > 0
    assert same(_restored(dst), state)
    assert dst.verify(deep=True).all_ok


def test_layout_names_are_lowercase_short_and_regular_files(source) -> None:  # type: ignore[no-untyped-def]
    _, stick, _ = source
    for path in stick.rglob("*"):
        rel = str(path.relative_to(stick))
        assert rel == rel.lower() and len(path.name) <= 90, rel
        assert not path.is_symlink()
        if path.is_file():
            assert path.stat().st_size < 4 * 1024**3
    bundles = list((stick / "bundles").iterdir())
    assert len(bundles) == 1 and parse_bundle_name(bundles[0].name) is not None
    assert Digest.of(bundles[0].read_bytes()) == parse_bundle_name(bundles[0].name).digest  # type: ignore[union-attr]


def test_export_resumes_and_rewrites_only_what_is_missing_or_damaged(source, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src, stick, _ = source
    blobs = sorted(p for p in (stick / "blobs").rglob("*") if p.is_file())
    blobs[0].unlink()
    flip_bit(blobs[1])
    again = _export(src, stick)
    assert again["blobs_written"] == 2 and again["blobs_skipped"] == again["blobs"] - 2  # type: ignore[operator]
    assert _export(src, stick)["blobs_written"] == 0


def test_import_twice_is_a_no_op(source, tmp_path: Path, key: SigningKey) -> None:  # type: ignore[no-untyped-def]
    _, stick, _ = source
    dst = _store(tmp_path / "dst", key)
    import_checkpoint(dst, LocalStorage(stick))
    before = _snapshot(dst)
    again = import_checkpoint(dst, LocalStorage(stick))
    assert again.already and _snapshot(dst) == before


def test_import_goes_to_the_slot_without_the_newest_checkpoint(tmp_path: Path, key: SigningKey) -> None:
    node = _store(tmp_path / "node", key)
    api.save(node, weights(1), key)  # gen 1 in A
    producer = _store(tmp_path / "producer", key)
    api.save(producer, weights(1), key)
    newer = nudge(weights(1), 0.01, 3)
    api.save(producer, newer, key)  # gen 2
    _export(producer, tmp_path / "stick")
    protected = node.select().opened.slot
    result = import_checkpoint(node, LocalStorage(tmp_path / "stick"))
    assert result.slot != protected and result.generation == 2
    assert same(_restored(node), newer)


def test_import_copies_blobs_it_already_has_from_the_other_slot(tmp_path: Path, key: SigningKey) -> None:
    producer = _store(tmp_path / "producer", key)
    api.save(producer, weights(1), key)
    _export(producer, tmp_path / "stick1")
    api.save(producer, nudge(weights(1), 0.01, 3), key)
    _export(producer, tmp_path / "stick2")
    node = _store(tmp_path / "node", key)
    import_checkpoint(node, LocalStorage(tmp_path / "stick1"))
    result = import_checkpoint(node, LocalStorage(tmp_path / "stick2"))
    assert result.from_other_slot > 0
    assert result.bytes_from_source < sum(
        p.stat().st_size for p in (tmp_path / "stick2" / "blobs").rglob("*") if p.is_file()
    )


# --- refusals: each leaves the node exactly as it was ---------------------------------------


@pytest.fixture
def node(tmp_path: Path, key: SigningKey) -> Store:
    store = _store(tmp_path / "node", key)
    api.save(store, weights(7), key)
    return store


def _refused(node: Store, stick: Path, error: type[Exception], **kw: object) -> None:
    before, state = _snapshot(node), _restored(node)
    with pytest.raises(error):
        import_checkpoint(node, LocalStorage(stick), **kw)  # type: ignore[arg-type]
    assert _snapshot(node) == before
    assert same(_restored(node), state)


def _blob_files(stick: Path) -> list[Path]:
    return sorted(p for p in (stick / "blobs").rglob("*") if p.is_file())


def test_truncated_blob_is_refused_as_partial_before_copying(source, node: Store) -> None:  # type: ignore[no-untyped-def]
    _, stick, _ = source
    blob = _blob_files(stick)[0]
    blob.write_bytes(blob.read_bytes()[:-1])
    _refused(node, stick, PartialCheckpointError)


def test_deleted_blob_is_refused_as_partial(source, node: Store) -> None:  # type: ignore[no-untyped-def]
    _, stick, _ = source
    _blob_files(stick)[-1].unlink()
    _refused(node, stick, PartialCheckpointError)


def test_a_wrong_size_blob_is_reported_as_the_wrong_size_naming_its_digest_and_both_sizes_not_as_missing(
    source,
    node: Store,  # type: ignore[no-untyped-def]
) -> None:
    """Trial 3: a truncated inbox blob was reported as "lacks 1 of 11 blobs"."""
    _, stick, _ = source
    blob = _blob_files(stick)[0]
    size = blob.stat().st_size
    blob.write_bytes(blob.read_bytes()[:-1])
    with pytest.raises(PartialCheckpointError) as caught:
        import_checkpoint(node, LocalStorage(stick))
    problem = caught.value.problem
    assert "wrong size" in problem and "lacks" not in problem, problem
    assert f"sha256:{blob.name} has" in problem, problem
    assert f"has {size - 1} bytes, the bundle says {size}" in problem, problem


def test_a_deleted_blob_is_reported_as_lacking_with_its_digest(source, node: Store) -> None:  # type: ignore[no-untyped-def]
    _, stick, _ = source
    blob = _blob_files(stick)[-1]
    blob.unlink()
    with pytest.raises(PartialCheckpointError) as caught:
        import_checkpoint(node, LocalStorage(stick))
    assert "lacks 1 of the" in caught.value.problem and "wrong size" not in caught.value.problem
    assert f"sha256:{blob.name}" in caught.value.problem, caught.value.problem


def test_bit_flipped_blob_is_refused_as_it_is_read(source, node: Store) -> None:  # type: ignore[no-untyped-def]
    _, stick, _ = source
    flip_bit(_blob_files(stick)[0])
    _refused(node, stick, FrameError)


def test_blob_replaced_by_another_checkpoints_is_refused(source, node: Store) -> None:  # type: ignore[no-untyped-def]
    _, stick, _ = source
    a, b = _blob_files(stick)[:2]
    a.write_bytes(b.read_bytes()[: a.stat().st_size].ljust(a.stat().st_size, b"\0"))
    _refused(node, stick, FrameError)


def test_bundle_replaced_by_another_checkpoints_is_refused(source, node: Store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, stick, _ = source
    bundle = next((stick / "bundles").iterdir())
    other = next((Path(str(getattr(node.storage, "root"))) / "A" / "checkpoints").glob("*.manifest.json"))
    bundle.write_bytes(other.read_bytes())
    _refused(node, stick, ManifestError)


def test_forged_bundle_signature_is_refused(source, node: Store) -> None:  # type: ignore[no-untyped-def]
    _, stick, _ = source
    bundle = next((stick / "bundles").iterdir())
    outer = json.loads(bundle.read_bytes())
    payload = base64.b64decode(outer["dsseEnvelope"]["payload"]).replace(b'"generation":2', b'"generation":9')
    outer["dsseEnvelope"]["payload"] = base64.b64encode(payload).decode()
    data = canonical_bytes(outer)
    bundle.unlink()
    (stick / "bundles" / f"{9:020d}-{Digest.of(data).hex}.json").write_bytes(data)
    _refused(node, stick, SignatureError)


def test_bundle_renamed_to_another_generation_is_refused(source, node: Store) -> None:  # type: ignore[no-untyped-def]
    _, stick, _ = source
    bundle = next((stick / "bundles").iterdir())
    bundle.rename(stick / "bundles" / bundle.name.replace(f"{2:020d}", f"{9:020d}"))
    _refused(node, stick, ManifestError)


def test_bundle_signed_by_an_unknown_key_is_refused(tmp_path: Path, node: Store) -> None:
    stranger = SigningKey.generate()
    other = _store(tmp_path / "other", stranger)
    for g in (1, 2):
        api.save(other, weights(g), stranger)
    _export(other, tmp_path / "stick")
    _refused(node, tmp_path / "stick", UntrustedKeyError)


def test_foreign_model_is_refused(tmp_path: Path, node: Store, key: SigningKey) -> None:
    other = _store(tmp_path / "other", key, model="another-model")
    for g in (1, 2):
        api.save(other, weights(g), key)
    _export(other, tmp_path / "stick")
    _refused(node, tmp_path / "stick", CompatibilityError)


def test_older_checkpoint_is_refused(tmp_path: Path, key: SigningKey, node: Store) -> None:
    api.save(node, nudge(weights(7), 0.01, 1), key)  # node at gen 2
    producer = _store(tmp_path / "producer", key)
    api.save(producer, weights(3), key)  # gen 1, different content
    _export(producer, tmp_path / "stick")
    _refused(node, tmp_path / "stick", OlderCheckpointError)


def test_below_the_floor_is_refused(source, tmp_path: Path, key: SigningKey) -> None:  # type: ignore[no-untyped-def]
    _, stick, _ = source
    empty = _store(tmp_path / "empty", key)
    with pytest.raises(RollbackError):
        import_checkpoint(empty, LocalStorage(stick), floor=5)
    assert _snapshot(empty) == {}


def test_empty_or_junk_source_names_what_it_expected(tmp_path: Path, node: Store) -> None:
    stick = tmp_path / "junk"
    (stick / "bundles").mkdir(parents=True)
    for i in range(50):
        (stick / "bundles" / f"junk-{i}.json").write_text("{}")
    (stick / "bundles" / ("0" * 20 + "-" + "a" * 64 + ".json")).write_text("{}")  # generation 0: not a bundle
    _refused(node, stick, CheckpointNotFoundError)


def test_symlinked_blob_in_the_source_is_refused_not_followed(source, node: Store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, stick, _ = source
    blob = _blob_files(stick)[0]
    outside = tmp_path / "outside"
    outside.write_bytes(blob.read_bytes())
    blob.unlink()
    os.symlink(outside, blob)
    _refused(node, stick, UnsafePathError)


class _YankedStick(LocalStorage):
    """Fault-injection seam: a USB stick whose reads fail with EIO (as a pulled stick does) after ``ok`` blob reads."""

    def __init__(self, root: Path, ok: int) -> None:
        super().__init__(root)
        self.ok = ok

    def read_into(self, path: str, out: memoryview) -> int:
        if path.startswith("blobs/"):
            if self.ok <= 0:
                raise StorageIOError(f"I/O error while trying to read {path}")
            self.ok -= 1
        return super().read_into(path, out)


def test_usb_removed_mid_import_loses_nothing_and_the_rerun_resumes(source, node: Store) -> None:  # type: ignore[no-untyped-def]
    _, stick, state = source
    before = _snapshot(node)
    with pytest.raises(SourceUnavailableError):
        import_checkpoint(node, _YankedStick(stick, ok=3))
    assert _snapshot(node) == before and same(_restored(node), weights(7))
    resumed = import_checkpoint(node, LocalStorage(stick))
    assert resumed.kept >= 3 and resumed.from_source == resumed.blobs - resumed.kept
    assert same(_restored(node), state)


def test_stick_unmounted_mid_import_is_source_unavailable(source, node: Store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, stick, _ = source

    class Vanishing(LocalStorage):
        """Fault-injection seam: the stick's directory disappears (unmounted) after the pre-flight check."""

        def read_into(self, path: str, out: memoryview) -> int:
            if stick.exists():
                shutil.move(str(stick), str(tmp_path / "gone"))
            return super().read_into(path, out)

    before = _snapshot(node)
    with pytest.raises(SourceUnavailableError):
        import_checkpoint(node, Vanishing(stick))
    assert _snapshot(node) == before


def test_inspect_reads_no_blob(source, node: Store) -> None:  # type: ignore[no-untyped-def]
    _, stick, _ = source

    class NoBulk(LocalStorage):
        def read_into(self, path: str, out: memoryview) -> int:
            raise AssertionError(f"inspect read bulk data: {path}")

    plan = inspect_source(node, NoBulk(stick))
    assert plan.generation == 2 and plan.total_bytes > 0
    assert all(blob_key(b.digest).startswith("blobs/") for b in plan.blobs)


def test_cli_explains_refusals_with_their_exit_codes(source, node: Store, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    from appliance.cli.main import main

    _, stick, _ = source
    root = str(getattr(node.storage, "root"))
    _blob_files(stick)[0].unlink()
    assert main(["import", root, str(stick), "--json"]) == PartialCheckpointError.exit_code == 48
    err = json.loads(capsys.readouterr().out)
    assert err["error"] == "PartialCheckpointError" and "re-run the export" in err["remedy"]
    assert main(["import", root, str(stick / "nope"), "--json"]) == 10


def test_a_model_directory_checkpoint_travels_with_its_assets(tmp_path: Path, key: SigningKey) -> None:
    """Assets are frames: export carries them, import restores the same files (manifest v2)."""
    from safetensors.torch import load_file, save_file

    model = tmp_path / "model"
    model.mkdir()
    save_file(weights(3), str(model / "model.safetensors"), metadata={"format": "pt"})
    (model / "config.json").write_bytes(b'{"hidden_size": 8}\n')
    (model / "tokenizer.json").write_bytes(b"{" + b'"v": 1, ' * 3000 + b'"end": 0}')
    src = _store(tmp_path / "src", key)
    api.save_directory(src, model, key)
    _export(src, tmp_path / "stick")
    dst = _store(tmp_path / "dst", key)
    import_checkpoint(dst, LocalStorage(tmp_path / "stick"))
    assert dst.verify(deep=True).all_ok
    api.restore_directory(dst, tmp_path / "out")
    for name in ("config.json", "tokenizer.json"):
        assert (tmp_path / "out" / name).read_bytes() == (model / name).read_bytes()
    assert same(load_file(str(tmp_path / "out" / "model.safetensors")), weights(3))


def test_model_directory_with_assets_travels_whole(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A v2 checkpoint (a model directory: shards, index, assets) exports and imports with every asset."""
    from appliance.cli.main import main
    from tests.integration.test_model_dirs import ASSETS, model_dir, state

    def run(*argv: str) -> dict[str, object]:
        assert main([*argv, "--json"]) == 0, capsys.readouterr()
        return json.loads(capsys.readouterr().out)

    key = tmp_path / "k"
    run("keygen", str(key))
    for name in ("src", "dst"):
        run("init", str(tmp_path / name), "--trust", f"{key}.pub", "--model", "m", "--frame-size", "4096")
    run("commit", str(tmp_path / "src"), str(model_dir(tmp_path / "dir", state())), "--key", str(key))
    run("export", str(tmp_path / "src"), str(tmp_path / "stick"))
    imported = run("import", str(tmp_path / "dst"), str(tmp_path / "stick"))
    assert imported["generation"] == 1
    run("restore", str(tmp_path / "dst"), "--out", f"{tmp_path / 'out'}/")
    for rel, data in ASSETS.items():
        assert (tmp_path / "out" / rel).read_bytes() == data, rel
