"""Every dtype and shape round-trips bit-exactly through commit and verified restore."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance import api
from appliance.errors import TensorMismatchError, UsageError
from appliance.format.dtypes import DTYPES
from appliance.signing import SigningKey
from appliance.store.store import Store
from tests.integration.conftest import same, weights

pytestmark = pytest.mark.integration

AVAILABLE = [n for n in DTYPES if isinstance(getattr(torch, n, None), torch.dtype)]


def _random_tensor(dtype_name: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    dtype = getattr(torch, dtype_name)
    g = torch.Generator().manual_seed(seed)
    numel = 1
    for d in shape:
        numel *= d
    itemsize = torch.empty((), dtype=dtype).element_size() if dtype != torch.bool else 1
    raw = torch.randint(0, 256, (numel * itemsize,), generator=g, dtype=torch.uint8)
    if dtype == torch.bool:
        raw = raw % 2
    return raw.view(dtype).reshape(shape) if numel else torch.empty(shape, dtype=dtype)


shapes = st.lists(st.integers(0, 9), min_size=0, max_size=3).map(tuple)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(AVAILABLE), shapes, st.integers(0, 1000)), min_size=1, max_size=6))
def test_every_dtype_and_shape_round_trips(store: Store, key: SigningKey, specs: list) -> None:  # type: ignore[type-arg]
    state = {f"t{i}.{d}": _random_tensor(d, s, seed) for i, (d, s, seed) in enumerate(specs)}
    api.save(store, state, key, {"note": "property"}, allow_empty=True)  # all-zero-element draws are data-less
    loaded = api.load(store, deep=True)
    assert same(loaded.tensors, state)
    assert loaded.metadata == {"note": "property"}


def test_all_dtypes_at_once_including_scalars_and_empties(store: Store, key: SigningKey) -> None:
    state = {}
    for i, name in enumerate(AVAILABLE):
        state[f"{name}.matrix"] = _random_tensor(name, (33, 7), i)
        state[f"{name}.scalar"] = _random_tensor(name, (), i + 100)
        state[f"{name}.empty"] = _random_tensor(name, (0, 5), i)
    api.save(store, state, key)
    assert same(api.load(store, deep=True).tensors, state)


def test_nan_payloads_and_negative_zero_survive(store: Store, key: SigningKey) -> None:
    raw = torch.tensor([0x7FC00001, 0xFFC00002, 0x80000000, 0x7F800000], dtype=torch.int64).to(torch.int32)
    state = {"f": raw.view(torch.float32)}
    api.save(store, state, key)
    assert same(api.load(store).tensors, state)


def test_load_into_preallocated_tensors_in_place(store: Store, key: SigningKey) -> None:
    state = weights()
    api.save(store, state, key)
    into = {n: torch.zeros_like(t) for n, t in state.items()}
    pointers = {n: t.data_ptr() for n, t in into.items()}
    loaded = api.load(store, into=into)
    assert same(into, state)
    assert {n: t.data_ptr() for n, t in loaded.tensors.items()} == pointers


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda d: d.update(w=torch.zeros(5, dtype=torch.bfloat16)), "destination is"),
        (lambda d: d.update(w=torch.zeros_like(d["w"], dtype=torch.float16)), "destination is"),
        (lambda d: d.pop("v"), "missing"),
        (lambda d: d.update(extra=torch.zeros(1)), "extra"),
        (lambda d: d.update(v=torch.empty_like(d["v"], device="meta")), "'v' is a meta tensor"),
    ],
)
def test_mismatched_destinations_are_refused(store: Store, key: SigningKey, mutate, needle: str) -> None:  # type: ignore[no-untyped-def]
    state = weights()
    api.save(store, state, key)
    into = {n: torch.empty_like(t) for n, t in state.items()}
    mutate(into)
    with pytest.raises(TensorMismatchError, match=needle):
        api.load(store, into=into)


def test_metadata_must_be_json(store: Store, key: SigningKey) -> None:
    with pytest.raises(UsageError, match="JSON"):
        api.save(store, weights(), key, {"bad": float("nan")})
    with pytest.raises(UsageError, match="JSON"):
        api.save(store, weights(), key, {"bad": object()})


def test_unsupported_values_are_refused(store: Store, key: SigningKey) -> None:
    with pytest.raises(UsageError, match="torch.Tensor"):
        api.save(store, {"x": [1, 2, 3]}, key)  # type: ignore[dict-item]
    with pytest.raises(UsageError, match="tensor .q. is a quantized tensor"):
        api.save(store, {"q": torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.quint8)}, key)


def test_policies_fast_and_compact_both_round_trip(store: Store, key: SigningKey) -> None:
    state = weights(3)
    fast = api.save(store, state, key, policy="fast")
    compact = api.save(store, state, key, policy="compact", full=True)
    assert fast.stored_bytes >= fast.raw_bytes  # uncompressed
    assert compact.stored_bytes < 0.9 * compact.raw_bytes
    assert same(api.load(store, generation=fast.generation).tensors, state)
    assert same(api.load(store, generation=compact.generation).tensors, state)
