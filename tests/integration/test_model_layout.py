"""The layout rule: a model committed into a store is the store's model (issue 11, new-user item 11).

The trial committed a tiny Llama into the store holding a tiny GPT-2: exit 0, no warning (the
model id is a label). Now a model file or directory whose tensor names, dtypes or shapes
differ from the newest checkpoint's is refused (`ModelLayoutError`, exit 74) before anything is
written, unless the commit says the model changes (`--new-layout`, `new_layout=True`). The
property test walks the kinds of layout change; values alone, or order, never count.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from appliance import api
from appliance.cli.main import main
from appliance.errors import ModelLayoutError
from appliance.format.lineage import describe_layout_change
from appliance.signing import SigningKey
from appliance.store.config import StoreConfig
from appliance.store.store import Store

pytestmark = pytest.mark.integration


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code = main([*argv, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else None


def base() -> dict[str, torch.Tensor]:
    return {"embed.weight": torch.ones(10, 4), "h.0.weight": torch.ones(4, 4), "h.0.bias": torch.zeros(4)}


CHANGES = {  # kind -> (tensors, whether the layout differs)
    "same tensors": (lambda t: t, False),
    "new values only": (lambda t: {k: v + 1 for k, v in t.items()}, False),
    "another order": (lambda t: dict(reversed(list(t.items()))), False),
    "a tensor added": (lambda t: t | {"h.1.weight": torch.ones(4, 4)}, True),
    "a tensor removed": (lambda t: {k: v for k, v in t.items() if k != "h.0.bias"}, True),
    "a tensor renamed": (lambda t: {k.replace("h.0", "layers.0"): v for k, v in t.items()}, True),
    "a dtype changed": (lambda t: t | {"embed.weight": t["embed.weight"].to(torch.bfloat16)}, True),
    "a shape changed": (lambda t: t | {"embed.weight": torch.ones(12, 4)}, True),  # a resized vocabulary
    "a shape transposed": (lambda t: t | {"embed.weight": torch.ones(4, 10)}, True),
}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(sorted(CHANGES)), st.booleans(), st.booleans())
@example("a tensor renamed", False, True)
def test_a_model_of_another_layout_is_refused_unless_the_commit_says_the_model_changes(tmp_path_factory: pytest.TempPathFactory, change: str, new_layout: bool, as_dir: bool) -> None:  # fmt: skip
    tmp = tmp_path_factory.mktemp("layout")
    key = SigningKey.generate()
    store = Store.init(tmp / "store", [key.public], StoreConfig(model="m", frame_size=4096))
    save_file(base(), str(tmp / "a.safetensors"), metadata={"format": "pt"})
    api.save_directory(store, tmp / "a.safetensors", key)
    make, differs = CHANGES[change]
    source = tmp / "b" if as_dir else tmp / "b.safetensors"
    if as_dir:
        source.mkdir()
        (source / "config.json").write_text("{}")
    save_file(make(base()), str(source / "model.safetensors" if as_dir else source), metadata={"format": "pt"})
    frames = sorted((tmp / "store" / "A" / "frames").iterdir()) + sorted((tmp / "store" / "B" / "frames").iterdir())
    if differs and not new_layout:
        with pytest.raises(ModelLayoutError) as caught:
            api.save_directory(store, source, key)
        assert caught.value.exit_code == 74 and "generation 1" in caught.value.problem
        assert [e["generation"] for e in store.log()] == [1]
        after = sorted((tmp / "store" / "A" / "frames").iterdir()) + sorted((tmp / "store" / "B" / "frames").iterdir())
        assert after == frames  # nothing written
    else:
        assert api.save_directory(store, source, key, new_layout=new_layout).generation == 2


def test_the_trial_llama_over_gpt2_is_refused_naming_the_difference_and_allowed_with_new_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    gpt2 = {"transformer.wte.weight": torch.ones(100, 8), "transformer.h.0.attn.c_attn.weight": torch.ones(8, 24)}
    llama = {
        "model.embed_tokens.weight": torch.ones(100, 8),
        "model.layers.0.self_attn.q_proj.weight": torch.ones(8, 8),
    }
    for name, tensors in (("gpt2", gpt2), ("llama", llama)):
        (tmp_path / name).mkdir()
        save_file(tensors, str(tmp_path / name / "model.safetensors"), metadata={"format": "pt"})
        (tmp_path / name / "config.json").write_text(json.dumps({"model_type": name}))
    key, root = str(tmp_path / "k"), str(tmp_path / "store")
    assert run(capsys, "keygen", key)[0] == 0 and run(capsys, "init", root, "--trust", f"{key}.pub")[0] == 0
    assert run(capsys, "commit", root, str(tmp_path / "gpt2"), "--key", key)[0] == 0
    code, out = run(capsys, "commit", root, str(tmp_path / "llama"), "--key", key)
    assert code == 74 and out["error"] == "ModelLayoutError"
    assert "2 added ('model.embed_tokens.weight'" in out["problem"] and "2 removed" in out["problem"]
    assert "--new-layout" in out["remedy"] and "appliance init" in out["remedy"]
    assert [c["generation"] for c in run(capsys, "log", root)[1]["checkpoints"]] == [1]
    code, out = run(capsys, "commit", root, str(tmp_path / "llama"), "--key", key, "--new-layout")
    assert code == 0 and out["generation"] == 2
    assert run(capsys, "commit", root, str(tmp_path / "llama"), "--key", key)[0] == 0  # now the store's model


def test_an_empty_checkpoint_constrains_nothing_and_training_state_may_grow(store: Store, key: SigningKey, tmp_path: Path) -> None:  # fmt: skip
    """--allow-empty is explicit on its own; api.save (the node's own state: optimizer state appears
    after the first step) is not a model import and is not held to the rule (docs/design.md §4.5)."""
    save_file({}, str(tmp_path / "e.safetensors"))
    store.commit([], [key], allow_empty=True)
    save_file(base(), str(tmp_path / "a.safetensors"), metadata={"format": "pt"})
    assert api.save_directory(store, tmp_path / "a.safetensors", key).generation == 2
    assert api.save(store, base() | {"optimizer.state.0.exp_avg": torch.zeros(4)}, key).generation == 3


@given(
    st.dictionaries(st.sampled_from("abcde"), st.tuples(st.sampled_from(["float32", "bfloat16"]), st.sampled_from([(2,), (3,), (2, 2)]))),
    st.dictionaries(st.sampled_from("abcde"), st.tuples(st.sampled_from(["float32", "bfloat16"]), st.sampled_from([(2,), (3,), (2, 2)]))),
)  # fmt: skip
def test_a_layout_change_is_described_exactly_when_the_layouts_differ(parent: dict[str, Any], source: dict[str, Any]) -> None:  # fmt: skip
    said = describe_layout_change(parent, source)
    assert (said is None) == (parent == source)
    if said is not None:
        added, removed = source.keys() - parent.keys(), parent.keys() - source.keys()
        changed = {n for n in parent.keys() & source.keys() if parent[n] != source[n]}
        assert (f"{len(added)} added" in said) == bool(added) and (f"{len(removed)} removed" in said) == bool(removed)
        assert (f"{len(changed)} changed" in said) == bool(changed)
