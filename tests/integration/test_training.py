"""Training state: a resumed run does not diverge; nested state round-trips with its types."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from torch import nn

from appliance import api, training
from appliance.errors import ManifestError, TensorMismatchError, UsageError
from appliance.signing import SigningKey
from appliance.store.store import Store
from tests.integration.conftest import weights

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def _run(mode: str, store: Store, keyfile: Path, out: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    root = str(getattr(store.storage, "root"))
    subprocess.run(
        [sys.executable, "-m", "tests.integration.training_run", mode, root, str(keyfile), str(out / mode)],
        cwd=REPO,
        check=True,
        timeout=300,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    return load_file(out / f"{mode}.safetensors"), json.loads((out / f"{mode}.json").read_text())


def test_resume_in_a_fresh_process_after_3_steps_equals_6_uninterrupted_steps_bit_for_bit(
    store: Store, key: SigningKey, tmp_path: Path
) -> None:
    keyfile = tmp_path / "k.pem"
    key.save(keyfile)
    full, full_info = _run("full", store, keyfile, tmp_path)
    _, first_info = _run("first", store, keyfile, tmp_path)
    resumed, resumed_info = _run("resume", store, keyfile, tmp_path)
    assert len(first_info["losses"]) == 3 and len(resumed_info["losses"]) == 3
    assert first_info["losses"] + resumed_info["losses"] == full_info["losses"]
    assert full.keys() == resumed.keys() and any(k.endswith("exp_avg_sq") for k in full)
    for name in full:
        assert torch.equal(full[name].reshape(-1).view(torch.uint8), resumed[name].reshape(-1).view(torch.uint8)), name
    for field in ("python_rng", "last_lr", "scale", "betas"):
        assert resumed_info[field] == full_info[field], field
    assert resumed_info["betas"].startswith("(") and resumed_info["betas"].endswith(", 0.95)")  # still a tuple


keys = st.one_of(st.text(max_size=6), st.sampled_from(["", ".", "..", "/", "a/b", "%2F", "$tensor", "é"]))
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**62), 2**62), st.floats(allow_nan=True), st.text(max_size=5)
)
small_tensors = st.builds(
    lambda seed, dtype, n: torch.randn(n, generator=torch.Generator().manual_seed(seed)).to(dtype),
    st.integers(0, 99),
    st.sampled_from([torch.float32, torch.bfloat16, torch.int64, torch.float16]),
    st.integers(0, 5),
)
leaves = st.one_of(scalars, small_tensors)
trees = st.recursive(
    leaves,
    lambda kids: st.one_of(
        st.lists(kids, max_size=3),
        st.lists(kids, max_size=3).map(tuple),
        st.dictionaries(keys, kids, max_size=3),
        st.dictionaries(st.integers(-3, 3), kids, max_size=3),
    ),
    max_leaves=12,
)


def _same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(keys, trees, min_size=1, max_size=4))
def test_any_nested_state_round_trips_through_a_checkpoint_with_its_types(
    store: Store, key: SigningKey, state: dict[str, Any]
) -> None:
    tensors, skeleton = training.flatten(state)
    api.save(store, tensors, key, {"skeleton": skeleton}, allow_empty=True)  # a state may hold no tensor
    loaded = api.load(store)
    assert _same(training.unflatten(loaded.tensors, loaded.metadata["skeleton"]), state)


def test_numpy_arrays_and_dtypes_come_back_as_themselves() -> None:
    state = {"a": np.arange(5, dtype=np.uint32), "d": torch.bfloat16, "n": np.int64(3)}
    back = training.unflatten(*training.flatten(state))
    assert isinstance(back["a"], np.ndarray) and back["a"].dtype == np.uint32 and back["a"].tolist() == [0, 1, 2, 3, 4]
    assert back["d"] is torch.bfloat16 and back["n"] == 3


def test_api_save_of_a_merged_model_and_optimizer_state_dict_names_the_api_argument(
    store: Store, key: SigningKey
) -> None:
    model = nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    with pytest.raises(UsageError) as caught:
        api.save(store, model.state_dict() | opt.state_dict(), key)  # the example
    text = str(caught.value)
    assert "argument `tensors`" in text and "appliance.training" in text and "command" not in text
    for bad_key in ([], "k.pem"):
        with pytest.raises(UsageError, match="argument `key`") as caught:
            api.save(store, weights(), bad_key)  # type: ignore[arg-type]
        assert "command" not in str(caught.value)


def test_unstorable_objects_are_refused_naming_their_place_in_the_state() -> None:
    with pytest.raises(UsageError, match=r"'extra/fn'.*function") as caught:
        training.flatten({"extra": {"fn": lambda: 0}})
    assert "command" not in str(caught.value)
    with pytest.raises(UsageError, match="argument `model`"):
        training.get_state_dict(nn.Linear(2, 2).state_dict())  # type: ignore[arg-type]


def test_loading_into_an_optimizer_over_other_parameters_is_refused_before_anything_changes(
    store: Store, key: SigningKey
) -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    training.save(store, key, model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    other = torch.optim.SGD(model[0].parameters(), lr=0.1)
    with pytest.raises(TensorMismatchError, match="optimizer parameters differ"):
        training.load(store, model, other)
    with pytest.raises(TensorMismatchError, match="1 optimizer"):
        training.load(store, model)


KINDS: dict[str, Any] = {
    "SGD": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
    "Adam": torch.optim.Adam,
    "RMSprop": torch.optim.RMSprop,
    "Adagrad": torch.optim.Adagrad,
    "Adadelta": torch.optim.Adadelta,
}


@pytest.mark.parametrize("saved_kind", sorted(KINDS))
@pytest.mark.parametrize("given_kind", sorted(KINDS))
def test_loading_state_of_another_optimizer_kind_is_refused_before_anything_changes(
    store: Store, key: SigningKey, saved_kind: str, given_kind: str
) -> None:
    """Regression (new-user trial): AdamW state went into SGD silently and failed at the next step."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    saved = KINDS[saved_kind](model.parameters())
    model(torch.randn(2, 3)).sum().backward()
    saved.step()
    training.save(store, key, model, saved, rng=False)
    given = KINDS[given_kind](model.parameters())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fresh = repr(given.state_dict())  # Adagrad starts with state of its own
    if saved_kind == given_kind:
        training.load(store, model, given, rng=False)
        given.step()  # the loaded state is usable
        return
    with pytest.raises(TensorMismatchError, match=f"another kind of optimizer than {given_kind}"):
        training.load(store, model, given, rng=False)
    assert repr(given.state_dict()) == fresh and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_plain_checkpoint_is_not_mistaken_for_training_state(store: Store, key: SigningKey) -> None:
    api.save(store, weights(), key)
    with pytest.raises(ManifestError, match="not a training checkpoint"):
        training.load(store, nn.Linear(2, 2))


def test_optimizer_state_is_keyed_by_parameter_names_and_survives_a_reordered_optimizer(
    store: Store, key: SigningKey
) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    training.save(store, key, model, opt, rng=False, extra={"note": "x"})
    reordered = torch.optim.Adam(list(model.parameters())[::-1])
    back = training.load(store, model, reordered, rng=False)
    assert back.extra == {"note": "x"}
    assert set(training.optimizer_state_dict(model, reordered)["state"]) == {"0.weight", "0.bias", "1.weight", "1.bias"}
    for p in model.parameters():
        assert torch.equal(opt.state[p]["exp_avg"], reordered.state[p]["exp_avg"])


def test_the_built_in_adaptive_model_resumes_its_adaptation_through_the_training_api(
    store: Store, key: SigningKey
) -> None:
    from appliance.models import demo

    def batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(i)
        return torch.randn(8, 16, generator=g), torch.randn(8, 4, generator=g)

    straight = demo.build()
    full = [straight.adapt(*batch(i))["loss"] for i in range(6)]
    first = demo.build()
    losses = [first.adapt(*batch(i))["loss"] for i in range(3)]
    training.save(store, key, first, position={"adaptation_step": first.adaptation_step()})
    resumed = demo.build()
    position = training.load(store, resumed).position
    assert position == {"adaptation_step": 3} and resumed.adaptation_step() == 3
    losses += [resumed.adapt(*batch(i))["loss"] for i in range(3, 6)]
    assert losses == full
    for name, tensor in straight.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name


def test_a_shuffled_data_loader_resumes_mid_epoch_from_its_epoch_start_generator(store: Store, key: SigningKey) -> None:
    """The README recipe: save the sampler generator as it was at the epoch's start, plus the batch index."""
    import itertools

    from torch.utils.data import DataLoader, TensorDataset

    data = TensorDataset(torch.arange(40, dtype=torch.float32))
    model = nn.Linear(1, 1)

    def batches(sampler: torch.Generator) -> list[list[float]]:
        return [b[0].tolist() for b in DataLoader(data, batch_size=4, shuffle=True, generator=sampler)]

    sampler = torch.Generator().manual_seed(3)
    batches(sampler)  # epoch 0
    epoch_start = torch.Generator()
    epoch_start.set_state(sampler.get_state())  # epoch 1 starts here
    straight = batches(sampler)
    training.save(store, key, model, generators={"sampler": epoch_start}, position={"epoch": 1, "batch": 4})

    fresh = torch.Generator().manual_seed(12345)
    position = training.load(store, model, generators={"sampler": fresh}).position
    loader = DataLoader(data, batch_size=4, shuffle=True, generator=fresh)
    rest = [b[0].tolist() for b in itertools.islice(loader, position["batch"], None)]
    assert rest == straight[4:] and len(rest) == 6


@pytest.mark.parametrize(
    "call",
    [
        lambda s, k: api.save(s, weights(), k, metadata={"x": float("nan")}),
        lambda s, k: api.save(s, {"a": torch.zeros(2), "b": [1]}, k),
        lambda s, k: api.load(s, into={}, zero_copy=True),
        lambda s, k: training.save(s, k, nn.Linear(1, 1), metadata={"appliance.training": 1}),
        lambda s, k: training.save(s, k, nn.Linear(1, 1), [torch.optim.lr_scheduler]),
        lambda s, k: training.save(s, k, nn.Linear(1, 1), extra={"set": {1, 2}}),
    ],
    ids=["nan-metadata", "list-value", "zero-copy-into", "reserved-key", "not-an-optimizer", "a-set"],
)
def test_api_usage_errors_never_talk_about_the_command_line(store: Store, key: SigningKey, call: Any) -> None:
    with pytest.raises(UsageError) as caught:
        call(store, key)
    assert "command-line" not in str(caught.value) and "command line" not in caught.value.remedy


def test_optimizer_state_has_the_layout_of_torch_distributed_checkpoint_get_state_dict() -> None:
    """Same vocabulary, same shape: our optimizer section equals DCP's optim_state_dict, and DCP loads ours."""
    dcp = pytest.importorskip("torch.distributed.checkpoint.state_dict", reason="torch built without distributed")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    opt = torch.optim.AdamW(model.parameters(), betas=(0.8, 0.9))
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    _, theirs = dcp.get_state_dict(model, opt)
    ours = training.get_state_dict(model, opt, rng=False)["optim"][0]
    assert ours["param_groups"] == theirs["param_groups"]
    assert ours["state"].keys() == theirs["state"].keys()
    for name, slots in ours["state"].items():
        assert all(torch.equal(slots[k], theirs["state"][name][k]) for k in slots)
    restored = training.unflatten(*training.flatten({"optim": ours}))["optim"]
    fresh = torch.optim.AdamW(model.parameters(), betas=(0.8, 0.9))
    dcp.set_state_dict(model, fresh, model_state_dict=model.state_dict(), optim_state_dict=restored)
    assert torch.equal(fresh.state[model[0].weight]["exp_avg_sq"], opt.state[model[0].weight]["exp_avg_sq"])


@pytest.mark.parametrize("change", ["shape", "dtype", "missing", "extra"])
def test_loading_into_another_model_is_refused_naming_the_tensors_and_nothing_is_written(
    store: Store, key: SigningKey, change: str
) -> None:
    """Found by a new-user trial: a wrong-shaped model used to raise torch's RuntimeError half-loaded."""
    torch.manual_seed(0)
    saved = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    training.save(store, key, saved)
    torch.manual_seed(1)
    layers: list[nn.Module] = [nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3 if change == "shape" else 2)]
    if change == "extra":
        layers.append(nn.Linear(2, 2))
    if change == "missing":
        layers = layers[:1]
    other = nn.Sequential(*layers)
    if change == "dtype":
        other = other.double()
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(TensorMismatchError, match="nothing was loaded") as caught:
        training.load(store, other)
    assert "argument `model`" in caught.value.remedy
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())


def test_the_served_demo_model_persists_through_the_training_api_and_resumes_bit_exactly(store: Store, key: SigningKey, tmp_path: Path) -> None:  # fmt: skip
    """The service's export path (capture -> outbox file -> the watchdog's commit) persists the
    built-in model as a training checkpoint: `training.load` resumes it, and 3 served steps +
    resume + 3 steps equal 6 uninterrupted ones bit for bit; boot's by-name restore still fits."""
    import threading

    from appliance.models import demo
    from appliance.service import export
    from appliance.sources.export import open_export

    def batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(100 + i)
        return torch.randn(8, 16, generator=g), torch.randn(8, 4, generator=g)

    straight = demo.build()
    full = [straight.adapt(*batch(i))["loss"] for i in range(6)]
    served = demo.build()
    losses = [served.adapt(*batch(i))["loss"] for i in range(3)]
    written = export.write(export.capture(served, threading.Lock()), tmp_path / "outbox", "appliance.models.demo:build", None)  # fmt: skip
    opened = open_export(written.path)
    try:  # what appliance.persist.committer does with an authentic export
        store.commit(opened.model.sources, [key], opened.info.checkpoint_metadata())
    finally:
        opened.close()
    meta = api.load(store).metadata
    assert meta[training.METADATA_KEY] == training.served_record(served.state_dict())
    assert meta["step"] == 3
    resumed = demo.build()
    assert training.load(store, resumed).generation == 1 and resumed.adaptation_step() == 3
    losses += [resumed.adapt(*batch(i))["loss"] for i in range(3, 6)]
    assert losses == full
    for name, tensor in straight.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name
    booted = demo.build()  # boot restores by state_dict() name, as before: the names did not change
    api.load(store, into=booted.state_dict())
    assert all(torch.equal(t, served.state_dict()[n]) for n, t in booted.state_dict().items())


def test_a_served_state_record_round_trips_any_state_dict_names() -> None:
    state = {"a.weight": torch.ones(2), "$odd": torch.zeros(1), "b.step": torch.tensor(3)}
    for names in (["a.weight", "b.step"], list(state)):
        part = {n: state[n] for n in names}
        rebuilt = training.unflatten(part, training.served_record(part)["state"])
        assert rebuilt.keys() == {"model"} and list(rebuilt["model"]) == names
        assert all(rebuilt["model"][n] is part[n] for n in names)


MISMATCHES = {
    "stateful missing": lambda m, o, s: {"optimizers": o},
    "stateful renamed": lambda m, o, s: {"optimizers": o, "stateful": {"other": s}},
    "generator never saved": lambda m, o, s: {
        "optimizers": o,
        "stateful": {"sch": s},
        "generators": {"g": torch.Generator()},
    },  # fmt: skip
    "optimizer kind": lambda m, o, s: {"optimizers": torch.optim.SGD(m.parameters(), lr=0.1), "stateful": {"sch": s}},
    "optimizer count": lambda m, o, s: {"optimizers": (), "stateful": {"sch": s}},
    # second trial: same names, other kinds of objects
    "stateful grad scaler": lambda m, o, s: {"optimizers": o, "stateful": {"sch": torch.amp.GradScaler("cpu")}},
    "stateful other scheduler": lambda m, o, s: {
        "optimizers": o,
        "stateful": {"sch": torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=3)},
    },
    "generator not torch": lambda m, o, s: {
        "optimizers": o,
        "stateful": {"sch": s},
        "generators": {"g": np.random.default_rng(0)},
    },  # fmt: skip
}


@pytest.mark.parametrize("case", sorted(MISMATCHES))
def test_a_refused_training_load_touches_no_object(store: Store, key: SigningKey, case: str) -> None:
    """Regression (new-user trial): model and optimizer were set before a later argument was refused."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    sch = torch.optim.lr_scheduler.StepLR(opt, step_size=1)
    model(torch.randn(2, 3)).sum().backward()
    opt.step()
    sch.step()
    training.save(store, key, model, opt, stateful={"sch": sch}, rng=False)
    fresh = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.5)
    fresh_sch = torch.optim.lr_scheduler.StepLR(fresh_opt, step_size=7)
    args = MISMATCHES[case](fresh, fresh_opt, fresh_sch)
    before = ({k: v.clone() for k, v in fresh.state_dict().items()}, repr(fresh_opt.state_dict()),
              repr(fresh_sch.state_dict()))  # fmt: skip
    with pytest.raises((TensorMismatchError, UsageError)):
        training.load(store, fresh, rng=False, **args)
    assert all(torch.equal(before[0][k], v) for k, v in fresh.state_dict().items()), case
    assert repr(fresh_opt.state_dict()) == before[1] and repr(fresh_sch.state_dict()) == before[2], case
