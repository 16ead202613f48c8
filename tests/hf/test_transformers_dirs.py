"""Real Hugging Face model directories through appliance and back into ``from_pretrained``.

Tiny GPT-2, BERT and Llama (tied and untied) built from configs (never downloaded), saved
sharded by transformers (``max_shard_size="200KB"``) with a tokenizer, committed with the CLI,
restored as a directory, loaded with ``AutoModel*.from_pretrained``: logits bit-equal to the
source model's. ``bootstrap/hf.sh`` runs this module under transformers 4.x and 5.x (each in
its own venv: they need different huggingface-hub majors); without transformers it skips.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

transformers = pytest.importorskip(
    "transformers", reason="transformers is not in this venv; bootstrap/hf.sh runs tests/hf under 4.x and 5.x"
)
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from appliance.cli.main import main  # noqa: E402
from appliance.format.directory import INDEX_NAME  # noqa: E402

pytestmark = [pytest.mark.hf, pytest.mark.integration]

VOCAB = 1000
INPUT_IDS = torch.tensor([[1, 5, 17, 400, 999, 3, 42, 7]])


def gpt2() -> Any:
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=64, n_layer=2, n_head=2)
    return transformers.GPT2LMHeadModel(cfg), transformers.AutoModelForCausalLM


def bert() -> Any:
    cfg = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=96
    )
    return transformers.BertForMaskedLM(cfg), transformers.AutoModelForMaskedLM


def llama(tied: bool) -> Callable[[], Any]:
    def build() -> Any:
        cfg = transformers.LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            tie_word_embeddings=tied,
        )
        return transformers.LlamaForCausalLM(cfg), transformers.AutoModelForCausalLM

    return build


MODELS = {"gpt2": gpt2, "bert": bert, "llama-tied": llama(True), "llama-untied": llama(False)}


def tokenizer() -> Any:
    """A word-level tokenizer built in code (tokenizers ships with transformers)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, "[PAD]": 1} | {f"w{i}": i + 2 for i in range(VOCAB - 2)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")


def cli(*argv: str) -> Any:
    code = main([*argv, "--json"])
    assert code == 0, argv
    return code


def logits(model: Any) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=INPUT_IDS).logits


def header(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return {k: v for k, v in (f.metadata() or {}).items() if not k.startswith("appliance.")}


@pytest.fixture
def store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    key, root = tmp_path / "k", tmp_path / "store"
    cli("keygen", str(key))
    cli("init", str(root), "--trust", f"{key}.pub", "--model", "tiny")
    capsys.readouterr()
    return {"key": str(key), "root": str(root)}


@pytest.mark.parametrize("name", list(MODELS))
def test_sharded_model_directory_round_trips_into_from_pretrained(
    store: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    torch.manual_seed(0)
    model, auto = MODELS[name]()
    model.eval()
    src, dst = tmp_path / "src", tmp_path / "dst"
    model.save_pretrained(src, max_shard_size="200KB")
    tokenizer().save_pretrained(src)
    assert len(list(src.glob("*.safetensors"))) > 1 and (src / INDEX_NAME).is_file()

    cli("commit", store["root"], str(src), "--key", store["key"])
    cli("restore", store["root"], "--out", f"{dst}/")
    capsys.readouterr()

    restored = auto.from_pretrained(dst).eval()
    assert torch.equal(logits(restored), logits(model))
    assert torch.equal(logits(restored), logits(auto.from_pretrained(src).eval()))
    tied = model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    tied_back = restored.get_output_embeddings().weight.data_ptr() == restored.get_input_embeddings().weight.data_ptr()
    assert tied_back == tied == (name != "llama-untied")

    import huggingface_hub  # refused appliance's restored files before (its format check)

    shard = next(dst.glob("*.safetensors"))
    assert huggingface_hub.load_state_dict_from_file(shard).keys() == load_file(str(shard)).keys()

    tok_src, tok_dst = transformers.AutoTokenizer.from_pretrained(src), transformers.AutoTokenizer.from_pretrained(dst)
    assert tok_dst("w1 w5 w77 nope")["input_ids"] == tok_src("w1 w5 w77 nope")["input_ids"]

    src_files = {p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()}
    assert {p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file()} == src_files
    for rel in src_files:
        if rel.endswith(".safetensors"):  # rewritten from tensors: same tensors, same header keys
            assert header(dst / rel) == header(src / rel) and header(src / rel).get("format") == "pt"
            a, b = load_file(str(src / rel)), load_file(str(dst / rel))
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        elif rel == INDEX_NAME:
            assert json.loads((dst / rel).read_text()) == json.loads((src / rel).read_text())
        else:
            assert (dst / rel).read_bytes() == (src / rel).read_bytes(), rel


def test_resharded_restore_loads_too(store: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(1)
    model, auto = llama(False)()
    model.eval()
    model.save_pretrained(tmp_path / "src", max_shard_size="200KB")
    cli("commit", store["root"], str(tmp_path / "src"), "--key", store["key"])
    cli("restore", store["root"], "--out", f"{tmp_path / 'dst'}/", "--max-shard-size", "100KB")
    capsys.readouterr()
    assert len(list((tmp_path / "dst").glob("*.safetensors"))) > len(list((tmp_path / "src").glob("*.safetensors")))
    assert torch.equal(logits(auto.from_pretrained(tmp_path / "dst").eval()), logits(model))


LAYER0 = {"gpt2": "transformer.h.0.*", "bert": "bert.encoder.layer.0.*", "llama-untied": "model.layers.0.*"}


@pytest.mark.parametrize("name", list(LAYER0))
def test_a_subset_restore_is_a_directory_transformers_loads_with_exactly_the_subset(
    store: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    """`--tensors` writes shards numbered 1..m of m and the subset's totals; from_pretrained reads every one."""
    torch.manual_seed(0)
    model, auto = MODELS[name]()
    src, dst = tmp_path / "src", tmp_path / "dst"
    model.save_pretrained(src, max_shard_size="200KB")
    cli("commit", store["root"], str(src), "--key", store["key"])
    cli("restore", store["root"], "--out", f"{dst}/", "--tensors", LAYER0[name], "--tensors", "*.norm*")
    capsys.readouterr()

    index = json.loads((dst / INDEX_NAME).read_text())
    files = sorted(p.name for p in dst.glob("*.safetensors"))
    assert sorted(set(index["weight_map"].values())) == files
    assert files == [f"model-{i:05d}-of-{len(files):05d}.safetensors" for i in range(1, len(files) + 1)]
    written = {k: v for f in files for k, v in load_file(str(dst / f)).items()}
    assert written.keys() == index["weight_map"].keys() and written
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in written.values())
    if "total_parameters" in json.loads((src / INDEX_NAME).read_text())["metadata"]:
        assert index["metadata"]["total_parameters"] == sum(t.numel() for t in written.values())

    torch.manual_seed(12345)  # the tensors left out are initialised afresh, differently from the source
    restored, info = auto.from_pretrained(dst, output_loading_info=True)
    state, source = restored.state_dict(), model.state_dict()
    for key, tensor in written.items():
        assert torch.equal(state[key], tensor) and torch.equal(tensor, source[key]), key
        assert key not in info["missing_keys"]
    assert info["missing_keys"] and not info["unexpected_keys"]
