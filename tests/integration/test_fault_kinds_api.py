"""Issue 12, kinds 1 (destination layouts), 2 (aliasing), 6 (odd tensors), 7 (half-filled destinations).

Each kind has a test named after it, each concrete input of the issue is kept as a regression
test, and the kinds with a space of inputs (strides and views, aliasing patterns) have
property tests over that space.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from appliance import api
from appliance.errors import (
    AliasingConflictError,
    FrameError,
    NoValidCheckpointError,
    TensorMismatchError,
    UsageError,
)
from appliance.signing import SigningKey
from appliance.store import layout
from appliance.store.store import Store
from tests.integration.conftest import same as same_contiguous

pytestmark = pytest.mark.integration
FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.bn(self.conv1(x))))


class TiedLM(nn.Module):
    def __init__(self, vocab: int = 64, dim: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.embed.weight  # tied: one tensor under two names


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Bit-exact equality of the logical values, whatever the layout."""
    return same_contiguous({k: v.contiguous() for k, v in a.items()}, {k: v.contiguous() for k, v in b.items()})


def _seeded(module: nn.Module, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    for p in module.parameters():
        nn.init.normal_(p)
    return module


# --- kind 1: a healthy checkpoint is blamed for the model's own memory format -------------------


def test_kind1_channels_last_conv_net_loads_into_its_own_tensors(store: Store, key: SigningKey) -> None:
    """Regression: a conv net in channels_last; load(into=...) used to raise 'has no CPU byte view'."""
    saved = _seeded(ConvNet(), 1)
    api.save(store, saved.state_dict(), key)
    target = _seeded(ConvNet(), 2).to(memory_format=torch.channels_last)
    state = target.state_dict()
    assert not state["conv1.weight"].is_contiguous()
    pointers = {n: t.data_ptr() for n, t in state.items()}
    api.load(store, into=state)
    assert same(state, saved.state_dict())
    assert {n: t.data_ptr() for n, t in target.state_dict().items()} == pointers  # filled in place
    assert target.conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_kind1_any_destination_layout_restores_in_place(store: Store, key: SigningKey) -> None:
    """Transposed parameters, slices with steps, views of a bigger buffer, expanded-free strides."""
    g = torch.Generator().manual_seed(3)
    state = {"t": torch.randn(33, 17, generator=g), "s": torch.randn(40, generator=g), "c": torch.randn(2, 3, 5, 7)}
    api.save(store, state, key)
    big = torch.zeros(200)
    into = {
        "t": torch.zeros(17, 33).t(),
        "s": big[10:90:2],
        "c": torch.zeros(2, 5, 7, 3).permute(0, 3, 1, 2),
    }
    api.load(store, into=into, deep=True)
    assert same(into, state)
    assert big[11:90:2].eq(0).all() and big[:10].eq(0).all()  # nothing outside the view is touched


@FAST
@given(
    shape=st.lists(st.integers(1, 24), min_size=1, max_size=4),
    perm_seed=st.integers(0, 10_000),
    step=st.integers(1, 3),
)
def test_kind1_property_strided_destinations_receive_exact_bytes(
    tmp_path_factory: pytest.TempPathFactory,
    key: SigningKey,
    shape: list[int],
    perm_seed: int,
    step: int,
) -> None:
    """Any permutation of dims and any step along the last one: the view ends up equal to the saved tensor.

    float64 elements and 4 KiB frames: frame boundaries fall inside rows at every depth.
    """
    from appliance.store.config import StoreConfig

    root = tmp_path_factory.mktemp("strides") / "store"
    store = Store.init(root, [key.public], StoreConfig(model="m", frame_size=4096))
    g = torch.Generator().manual_seed(perm_seed)
    saved = torch.randn(*shape, generator=g, dtype=torch.float64)
    api.save(store, {"x": saved}, key)
    perm = torch.randperm(len(shape), generator=g).tolist()
    inverse = sorted(range(len(shape)), key=lambda i: perm[i])
    permuted_shape = [shape[p] for p in perm]
    permuted_shape[-1] *= step
    backing = torch.full(permuted_shape, -7.0, dtype=torch.float64)
    view = backing[..., ::step].permute(*inverse)
    assert tuple(view.shape) == tuple(shape)
    api.load(store, into={"x": view})
    assert torch.equal(view, saved)
    untouched = backing.clone()
    untouched[..., ::step] = 0
    if step > 1:
        assert untouched[..., 1::step].eq(-7.0).all()


def test_kind1_mismatch_errors_name_the_tensor_and_the_mismatch(store: Store, key: SigningKey) -> None:
    api.save(store, {"conv.weight": torch.zeros(4, 3, 3, 3)}, key)
    with pytest.raises(TensorMismatchError, match=r"'conv.weight'.*float32\[4, 3, 3, 3\].*float32\[4, 3, 3, 2\]"):
        api.load(store, into={"conv.weight": torch.zeros(4, 3, 3, 2)})


# --- kind 2: silent mixing of destinations that share memory ------------------------------------


def test_kind2_tied_destinations_with_different_saved_tensors_are_refused(store: Store, key: SigningKey) -> None:
    """Regression: separate lm_head and embedding loaded into a model that ties them (was a patchwork)."""
    untied = {"embed.weight": torch.randn(64, 32), "lm_head.weight": torch.randn(64, 32)}
    api.save(store, untied, key)
    model = TiedLM()
    before = model.embed.weight.detach().clone()
    for _ in range(5):
        with pytest.raises(AliasingConflictError, match="'embed.weight' and 'lm_head.weight'") as caught:
            api.load(store, into=model.state_dict())
        assert caught.value.exit_code == 21
        assert torch.equal(model.embed.weight, before)  # refused before a byte was written


def test_kind2_tied_destinations_with_equal_saved_tensors_load_once(store: Store, key: SigningKey) -> None:
    model = _seeded(TiedLM(), 4)
    api.save(store, model.state_dict(), key)
    target = TiedLM()
    loaded = api.load(store, into=target.state_dict())
    assert torch.equal(target.lm_head.weight, model.lm_head.weight)
    assert target.lm_head.weight.data_ptr() == target.embed.weight.data_ptr()  # still tied
    assert loaded.stats.raw_bytes > 0


def _alias_destinations(pattern: str, n: int) -> dict[str, torch.Tensor]:
    buf = torch.zeros(3 * n)
    if pattern == "same":
        return {"a": buf[:n], "b": buf[:n]}
    if pattern == "overlap":
        return {"a": buf[:n], "b": buf[n // 2 : n // 2 + n]}
    if pattern == "interleaved":  # share a span, never a byte
        return {"a": buf[0 : 2 * n : 2], "b": buf[1 : 2 * n : 2]}
    if pattern == "transposed":
        square = torch.zeros(n, n)
        return {"a": square, "b": square.t()}
    raise AssertionError(pattern)


@FAST
@given(
    pattern=st.sampled_from(["same", "overlap", "interleaved", "transposed"]),
    n=st.integers(2, 40),
    agree=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_kind2_property_shared_memory_is_deterministic_or_refused(
    tmp_path_factory: pytest.TempPathFactory, key: SigningKey, pattern: str, n: int, agree: bool, seed: int
) -> None:
    """For each aliasing pattern: the result is the one value both saved tensors agree on, or a typed refusal."""
    from appliance.store.config import StoreConfig

    store = Store.init(tmp_path_factory.mktemp("alias") / "s", [key.public], StoreConfig(model="m", frame_size=4096))
    into = _alias_destinations(pattern, n)
    g = torch.Generator().manual_seed(seed)
    if agree:  # consistent saved values: write them through one view, read them back through both
        into["a"].copy_(torch.randn(into["a"].shape, generator=g))
        saved = {k: v.clone() for k, v in into.items()}
        for v in into.values():
            v.zero_()
    else:
        saved = {k: torch.randn(v.shape, generator=g) for k, v in into.items()}
    api.save(store, saved, key)
    conflict = not agree and pattern != "interleaved"
    if conflict:
        with pytest.raises(AliasingConflictError):
            api.load(store, into=into)
    else:
        api.load(store, into=into)
        assert same(into, saved)


def test_kind2_expanded_destination_takes_only_a_constant_tensor(store: Store, key: SigningKey) -> None:
    api.save(store, {"e": torch.full((4, 3), 2.5)}, key)
    base = torch.zeros(1, 3)
    api.load(store, into={"e": base.expand(4, 3)})
    assert base.eq(2.5).all()
    api.save(store, {"e": torch.arange(12.0).reshape(4, 3)}, key)
    with pytest.raises(AliasingConflictError, match="'e'"):
        api.load(store, into={"e": torch.zeros(1, 3).expand(4, 3)})


# --- kind 6: odd tensors through the API ---------------------------------------------------------


def test_kind6_conj_and_neg_views_are_materialised_and_round_trip(store: Store, key: SigningKey) -> None:
    """Regression: lazy conj/neg views raised an untyped RuntimeError."""
    z = torch.randn(16, dtype=torch.complex64)
    state = {"conj": z.conj(), "neg": torch._neg_view(torch.randn(8)), "conjneg": torch._neg_view(z.conj())}
    assert state["conj"].is_conj() and state["neg"].is_neg()
    api.save(store, state, key)
    loaded = api.load(store, deep=True).tensors
    for name, t in state.items():
        assert torch.equal(loaded[name], t.resolve_conj().resolve_neg()), name
    into = {"conj": torch.zeros(16, dtype=torch.complex64).conj(), "neg": torch._neg_view(torch.zeros(8)),
            "conjneg": torch.zeros(16, dtype=torch.complex64)}  # fmt: skip
    api.load(store, into=into)
    for name, t in state.items():
        assert torch.equal(into[name].resolve_conj().resolve_neg(), t.resolve_conj().resolve_neg()), name


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (lambda: torch.empty(4, device="meta"), "meta tensor"),
        (lambda: torch.eye(3).to_sparse(), "sparse_coo tensor"),
        (lambda: torch.eye(3).to_sparse_csr(), "sparse_csr tensor"),
        (lambda: torch.nested.nested_tensor([torch.ones(2), torch.ones(3)]), "nested tensor"),
        (lambda: torch.quantize_per_tensor(torch.ones(4), 0.1, 0, torch.qint8), "quantized tensor"),
    ],
)
def test_kind6_tensors_without_dense_memory_get_a_typed_error_naming_them(
    store: Store, key: SigningKey, make, kind: str
) -> None:  # type: ignore[no-untyped-def]
    """Regression: meta and sparse tensors raised untyped NotImplementedError / RuntimeError."""
    with pytest.raises(UsageError, match=f"tensor 'odd.one' is a {kind}"):
        api.save(store, {"fine": torch.ones(2), "odd.one": make()}, key)
    api.save(store, {"odd.one": torch.ones(4)}, key)
    with pytest.raises(TensorMismatchError, match=f"tensor 'odd.one' is a {kind}"):
        api.load(store, into={"odd.one": make()})


# --- kind 7: half-filled destinations -------------------------------------------------------------


def _damage_last_frame(store: Store, root: Path) -> None:
    for slot in ("A", "B"):
        frames = sorted((root / slot / layout.FRAMES).iterdir(), key=lambda p: p.stat().st_size)
        for frame in frames[-1:]:
            frame.chmod(0o644)
            data = bytearray(frame.read_bytes())
            data[len(data) // 2] ^= 0xFF
            frame.write_bytes(bytes(data))


def test_kind7_failed_load_into_says_exactly_which_tensors_were_written(store: Store, key: SigningKey) -> None:
    """Regression: 1,024 of 8,192 elements overwritten, then NoValidCheckpointError saying nothing of it."""
    g = torch.Generator().manual_seed(7)
    saved = {"small": torch.randn(16, generator=g), "big": torch.randn(8192, generator=g)}
    api.save(store, saved, key, policy="fast")
    _damage_last_frame(store, Path(store.storage.root))  # type: ignore[attr-defined]
    into = {"small": torch.zeros(16), "big": torch.zeros(8192)}
    with pytest.raises(NoValidCheckpointError) as caught:
        api.load(store, into=into, workers=1)
    written = caught.value.written
    assert "big" in written and "destination tensors written before the failure" in caught.value.problem
    for name, t in into.items():
        if name not in written:
            assert t.eq(0).all(), f"{name} was written but not reported"


def test_kind7_atomic_load_into_leaves_destinations_as_they_were(store: Store, key: SigningKey) -> None:
    g = torch.Generator().manual_seed(8)
    api.save(store, {"small": torch.randn(16, generator=g), "big": torch.randn(8192, generator=g)}, key, policy="fast")
    _damage_last_frame(store, Path(store.storage.root))  # type: ignore[attr-defined]
    into = {"small": torch.full((16,), 5.0), "big": torch.full((8192,), 5.0)}
    with pytest.raises((NoValidCheckpointError, FrameError)) as caught:
        api.load(store, into=into, atomic=True)
    assert caught.value.written == ()
    assert all(t.eq(5.0).all() for t in into.values())


def test_kind7_atomic_load_into_fills_on_success(store: Store, key: SigningKey) -> None:
    saved = {"w": torch.randn(300), "tied_a": torch.ones(5), "tied_b": torch.ones(5)}
    api.save(store, saved, key)
    shared = torch.zeros(5)
    into = {"w": torch.zeros(600)[::2], "tied_a": shared, "tied_b": shared}
    api.load(store, into=into, atomic=True)
    assert same(into, saved)
