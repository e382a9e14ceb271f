"""Loading from folders: safety checks and one-line errors for every bad input."""

import json

import pytest
import torch
import transformers as T

from conftest import save_tiny
from rosi import load
from rosi._fs import hash_files
from rosi.errors import (
    CorruptWeightsError,
    ModelNotFoundError,
    NotCausalLMError,
    RemoteCodeError,
    UnsafeWeightsError,
    UnsupportedArchitectureError,
)
from rosi.model.gguf import gguf_cache_folder
from rosi.model.loading import pick_device, pick_dtype


def test_loads_a_safetensors_folder_on_cpu_in_float32(tmp_path, tokenizer_dir):
    original = save_tiny("qwen2", tmp_path / "m", dtype=torch.bfloat16, tokenizer_dir=tokenizer_dir)
    loaded = load(tmp_path / "m", device="cpu")
    assert next(loaded.model.parameters()).dtype == torch.float32
    assert loaded.tokenizer is not None and loaded.tokenizer.chat_template
    assert loaded.source.kind == "folder"
    assert loaded.source.weights_sha256 == hash_files([tmp_path / "m" / "model.safetensors"])
    info = loaded.info()
    assert info["model_type"] == "qwen2" and info["layers"] == 3 and info["residual_writers"] == {"embedding": 1, "attention": 3, "mlp": 3}
    assert info["parameters"] == sum(p.numel() for p in original.parameters())
    assert next(load(tmp_path / "m", device="cpu", dtype="bfloat16").model.parameters()).dtype == torch.bfloat16


def test_device_and_dtype_defaults():
    assert pick_device("auto").type in ("cpu", "cuda", "mps")
    assert pick_dtype("auto", torch.device("cpu")) == torch.float32
    assert pick_dtype("auto", torch.device("cuda")) == "auto"  # the checkpoint's own dtype
    assert pick_dtype("float16", torch.device("cpu")) == torch.float16


def test_missing_path():
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load("/nonexistent/model")
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load("./relative/missing")
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load("/tmp/nope.gguf")


def test_folder_without_config(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(NotCausalLMError, match="no config.json"):
        load(tmp_path / "m")


def test_pickle_weights_refused_unless_opted_in(tmp_path):
    model = save_tiny("llama", tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "m" / "pytorch_model.bin")
    with pytest.raises(UnsafeWeightsError, match="pickle.*allow-pickle"):
        load(tmp_path / "m")
    loaded = load(tmp_path / "m", device="cpu", allow_pickle=True)
    assert torch.equal(loaded.model.model.embed_tokens.weight, model.model.embed_tokens.weight)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "header"])
def test_damaged_safetensors(tmp_path, damage):
    save_tiny("llama", tmp_path / "m")
    f = tmp_path / "m" / "model.safetensors"
    data = f.read_bytes()
    if damage == "truncate":
        f.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        f.write_bytes(b"this is not a weights file at all")
    else:
        f.write_bytes(data[:8] + b"{not json" + data[17:])
    with pytest.raises(CorruptWeightsError, match="model.safetensors"):
        load(tmp_path / "m")


def test_not_a_causal_lm(tmp_path):
    T.T5Config(d_model=32, num_layers=1, num_heads=2, d_kv=8, d_ff=32, vocab_size=64).save_pretrained(tmp_path / "m")
    torch.manual_seed(0)
    T.T5ForConditionalGeneration(T.T5Config.from_pretrained(tmp_path / "m")).save_pretrained(tmp_path / "m")
    with pytest.raises(NotCausalLMError, match="'t5' model.*not a causal language model"):
        load(tmp_path / "m")


def test_unknown_model_type(tmp_path):
    save_tiny("llama", tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["model_type"] = "brand_new_arch"
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(NotCausalLMError, match="does not know this model type"):
        load(tmp_path / "m")


def test_remote_code_is_refused_by_default(tmp_path):
    save_tiny("llama", tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["model_type"] = "custom_remote"
    config["auto_map"] = {"AutoConfig": "configuration_custom.CustomConfig", "AutoModelForCausalLM": "modeling_custom.CustomModel"}
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    (tmp_path / "m" / "configuration_custom.py").write_text("raise SystemExit('remote code ran!')\n")
    with pytest.raises(RemoteCodeError, match="trust-remote-code"):
        load(tmp_path / "m")


def test_unsupported_architecture_is_reported_at_info(tmp_path):
    save_tiny("gemma2", tmp_path / "m")
    loaded = load(tmp_path / "m", device="cpu")
    loaded.model.config.model_type = "mystery"
    with pytest.raises(UnsupportedArchitectureError, match="mystery"):
        loaded.info()


def test_hub_id_without_network_is_one_clear_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # fail fast instead of retrying
    with pytest.raises(ModelNotFoundError, match="cannot get someone/some-model"):
        load("someone/some-model")


def test_gguf_cache_key_follows_the_file_content(tmp_path):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF" + b"\0" * 64)
    first, sha = gguf_cache_folder(f, tmp_path / "cache")
    assert gguf_cache_folder(f, tmp_path / "cache")[0] == first
    f.write_bytes(b"GGUF" + b"\1" * 64)
    second, sha2 = gguf_cache_folder(f, tmp_path / "cache")
    assert second != first and sha2 != sha


def test_gguf_without_magic_is_refused(tmp_path):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"PK\3\4 a zip, not a gguf")
    with pytest.raises(CorruptWeightsError, match="not a GGUF file"):
        load(f)


def test_chat_template_option_replaces_the_tokenizers(tmp_path, tokenizer_dir):
    from rosi.model.chat import ChatFormat

    save_tiny("qwen2", tmp_path / "m", tokenizer_dir=tokenizer_dir)
    loaded = load(tmp_path / "m", device="cpu", chat_template="{{ messages[0]['content'] }} assistant")
    assert ChatFormat(loaded.tokenizer).render("hi") == "hi assistant"
    assert loaded.architecture is loaded.architecture  # mapped once


def test_cli_chat_template_must_be_a_file(tmp_path, tokenizer_dir, capsys):
    from rosi.cli import main

    save_tiny("qwen2", tmp_path / "m", tokenizer_dir=tokenizer_dir)
    assert main(["info", str(tmp_path / "m"), "--chat-template", str(tmp_path / "missing.jinja")]) == 1
    assert "--chat-template" in capsys.readouterr().err
    (tmp_path / "t.jinja").write_text("{{ messages[0]['content'] }}!")
    assert main(["info", str(tmp_path / "m"), "--chat-template", str(tmp_path / "t.jinja")]) == 0
