"""Issue 16 goal 2: the chunked content digest, and commits that take its piece digests as raw digests.

An export's chunked digest hashes each tensor in the store's frame cut, on every core; the
watchdog's commit (bytes read once into its private buffers) records those piece digests as
its frames' raw digests instead of hashing the same bytes again. The guarantees: the digest
binds every byte, name, dtype and shape like the serial one; exports with the serial digest
(every export before) are still read; and a commit that takes the pieces writes exactly the
checkpoint a commit that hashes writes (same manifest digest), whatever the shapes, dtypes,
frame size and piece size — a frame whose span is not a piece is hashed as before.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance import api
from appliance.errors import ExportFileError, ManifestError
from appliance.format.export import CONTENT_CHUNK, ExportInfo, chunk_spans
from appliance.format.plan import frame_spans
from appliance.signing import SigningKey
from appliance.sources.export import open_export, tensors_digest, write_export
from appliance.store.config import StoreConfig
from appliance.store.discovery import open_checkpoint, scan
from appliance.store.lastcommit import LastCommit
from appliance.store.store import Store

pytestmark = pytest.mark.integration  # torch: tests/unit stays torch-free (Python 3.10 smoke)

SMALL_CHUNK = 4096


def _state(seed: int, shapes: list[tuple[int, ...]], dtypes: list[torch.dtype]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {f"t{i:02d}": torch.randn(shape, generator=g).to(dtype) for i, (shape, dtype) in enumerate(zip(shapes, dtypes, strict=True))}  # fmt: skip


def _store(root: Path, frame_size: int, policy: str = "compact") -> tuple[Store, SigningKey]:
    key = SigningKey.generate()
    store = Store.init(root, [key.public], StoreConfig(model="m", frame_size=frame_size, policy=policy))
    store.good_provider = lambda: {"A": 1, "B": None}
    return store, key


def _newest_frames(store: Store) -> list[tuple[str, str, str, int, str]]:
    """Every frame of the newest checkpoint: tensor, stored and raw digest, raw size, codec."""
    found = scan(store.storage, store.limits)
    record = max((r for r in found.records if r.record is not None), key=lambda r: r.generation).record
    assert record is not None
    manifest = open_checkpoint(store.storage, record, store.trust, "m", store.limits).verified.manifest
    return [
        (t.name, f.digest.hex, f.raw_digest.hex, f.raw_size, str(f.codec)) for t in manifest.tensors for f in t.frames
    ]


def test_chunk_spans_are_the_store_frame_cut() -> None:
    for nbytes, itemsize in [(0, 2), (1, 1), (4096, 2), (4097 * 3, 3), (10 * CONTENT_CHUNK + 6, 2)]:
        assert chunk_spans(nbytes, itemsize, CONTENT_CHUNK) == frame_spans(nbytes, itemsize, CONTENT_CHUNK)


def test_the_chunked_digest_binds_names_dtypes_shapes_and_every_byte() -> None:
    base = {"a": torch.arange(3000, dtype=torch.float32), "b": torch.zeros(2, 5, dtype=torch.int16)}
    ref = tensors_digest(base, chunk=SMALL_CHUNK, workers=2)
    assert ref == tensors_digest(dict(reversed(list(base.items()))), chunk=SMALL_CHUNK)  # order-free, any workers
    assert ref != tensors_digest(base)  # the serial form is another digest
    assert ref != tensors_digest(base, chunk=SMALL_CHUNK * 2)  # the piece size is bound
    variants = [
        {"a": base["a"], "c": base["b"]},
        {"a": base["a"], "b": base["b"].reshape(5, 2)},
        {"a": base["a"], "b": base["b"].to(torch.uint8)},
        {"a": base["a"].clone().index_fill_(0, torch.tensor([2999]), 7.0), "b": base["b"]},  # last byte's piece
        {"a": base["a"].clone().index_fill_(0, torch.tensor([0]), 7.0), "b": base["b"]},  # first piece
    ]
    for v in variants:
        assert tensors_digest(v, chunk=SMALL_CHUNK) != ref


def test_an_export_with_the_serial_digest_is_still_read(tmp_path: Path) -> None:
    """Exports written before the chunked digest (no ``content_chunk`` in the header) verify as before."""
    state = {"w": torch.randn(64, 64)}
    path, info = write_export(state, tmp_path, model="m", step=1, pause_s=0.0, content_chunk=None)
    assert "content_chunk" not in info.to_dict() and "content_chunk" not in info.checkpoint_metadata()
    opened = open_export(path, LastCommit())
    assert opened.info.content_sha256 == tensors_digest(state)
    assert all(s.raw_digests is None for s in opened.model.sources)  # no pieces to take
    opened.close()


@pytest.mark.parametrize("value", [0, 17, 2048, 1 << 30, True, "4096", 4096.0])
def test_a_header_with_an_impossible_content_chunk_is_refused(value: object) -> None:
    info = ExportInfo("m", 1, "t", "0" * 64, 0, 0, 0.0, content_chunk=SMALL_CHUNK).to_dict()
    info["content_chunk"] = value
    from appliance.format.canonical import canonical_bytes

    with pytest.raises(ManifestError, match="content_chunk"):
        ExportInfo.from_header(canonical_bytes(info).decode())


def test_a_flipped_byte_fails_the_chunked_digest(tmp_path: Path) -> None:
    path, _ = write_export({"w": torch.randn(5000)}, tmp_path, model="m", step=1, pause_s=0.0)
    with path.open("r+b") as f:
        f.seek(-3, 2)
        b = f.read(1)
        f.seek(-3, 2)
        f.write(bytes([b[0] ^ 0x10]))
    with pytest.raises(ExportFileError, match="content_sha256"):
        open_export(path, LastCommit())


def test_only_the_watchdogs_private_buffers_carry_piece_digests(tmp_path: Path) -> None:
    """Without the memory the commit reads the file again: pieces of the first read must not travel."""
    path, _ = write_export(
        {"w": torch.randn(3000)}, tmp_path, model="m", step=1, pause_s=0.0, content_chunk=SMALL_CHUNK
    )
    plain = open_export(path)
    assert all(s.raw_digests is None for s in plain.model.sources)
    plain.close()
    kept = open_export(path, LastCommit())
    pieces = kept.model.sources[0].raw_digests
    assert pieces is not None and sorted(pieces) == chunk_spans(3000 * 4, 4, SMALL_CHUNK)
    kept.close()


shapes = st.lists(st.lists(st.integers(0, 70), min_size=1, max_size=2).map(tuple), min_size=1, max_size=4)
dtypes = st.sampled_from([torch.float32, torch.bfloat16, torch.float16, torch.int8, torch.float64])


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(
    shapes=shapes,
    dts=st.lists(dtypes, min_size=4, max_size=4),
    frame_size=st.sampled_from([4096, 8192]),
    chunk=st.sampled_from([4096, 8192, 12288]),
    policy=st.sampled_from(["compact", "fast"]),
)
def test_a_commit_that_takes_the_pieces_writes_the_checkpoint_a_hashing_commit_writes(
    tmp_path_factory: pytest.TempPathFactory, shapes: list[tuple[int, ...]], dts: list[torch.dtype],
    frame_size: int, chunk: int, policy: str,
) -> None:  # fmt: skip
    """Property: the same frames (stored and raw digests, codecs) with and without the pieces,
    through a full commit and a delta commit; and the checkpoint restores byte for byte."""
    tmp = tmp_path_factory.mktemp("chunks")
    first = _state(1, shapes, dts[: len(shapes)]) | {"z": torch.randn(3000)}  # never all-empty (refused)
    digests: list[list[tuple[str, str, str, int, str]]] = []
    for mode in ("kept", "hashing"):
        state = {n: t.clone() for n, t in first.items()}
        store, key = _store(tmp / mode, frame_size, policy)
        last = LastCommit()
        for step in range(2):
            if step:
                for t in state.values():
                    if t.numel():
                        t.view(-1)[0] = t.view(-1)[-1]
            path, _ = write_export(state, tmp / f"out-{mode}", model="m", step=step, pause_s=0.0, content_chunk=chunk)
            opened = open_export(path, last)
            sources = opened.model.sources
            if mode == "hashing":
                sources = [dataclasses.replace(s, raw_digests=None) for s in sources]
            store.commit(sources, [key], opened.info.checkpoint_metadata(), last=last)
            opened.close()
            path.unlink()
        digests.append(_newest_frames(store))
        loaded = api.load(store)
        for name, t in state.items():
            assert (
                loaded.tensors[name].view(torch.uint8).numpy().tobytes()
                == t.contiguous().view(torch.uint8).numpy().tobytes()
            )
    assert digests[0] == digests[1]


def test_a_commit_with_the_pieces_hashes_no_frame_it_was_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The point of the pieces: frames whose span is a piece are not hashed again (store frame = piece)."""
    import appliance.store.encode as encode

    calls: list[int] = []
    real = encode.raw_identity
    monkeypatch.setattr(encode, "raw_identity", lambda cipher, raw: calls.append(len(raw)) or real(cipher, raw))
    store, key = _store(tmp_path / "s", SMALL_CHUNK)
    path, _ = write_export(
        {"w": torch.randn(10_000)}, tmp_path, model="m", step=1, pause_s=0.0, content_chunk=SMALL_CHUNK
    )
    opened = open_export(path, LastCommit())
    store.commit(opened.model.sources, [key], opened.info.checkpoint_metadata(), last=LastCommit())
    opened.close()
    assert calls == []
    store2, key2 = _store(tmp_path / "s2", 8192)  # frames of two pieces: hashed as before
    path, _ = write_export(
        {"w": torch.randn(10_000)}, tmp_path, model="m", step=2, pause_s=0.0, content_chunk=SMALL_CHUNK
    )
    opened = open_export(path, LastCommit())
    store2.commit(opened.model.sources, [key2], opened.info.checkpoint_metadata(), last=LastCommit())
    opened.close()
    assert len(calls) == len(frame_spans(40_000, 4, 8192))
