"""Loaded weights live in private memory, read from the checkpoint, not in its memory mapping
(whose pages would stay resident beside any copy of them)."""

import pytest
import torch
import transformers as T

from conftest import save_tiny
from rosi import load
from rosi.model.private import Unconvertible, mapped, own_memory, stored_tensors


def _tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


@pytest.mark.parametrize("arch", ["qwen2", "gemma2"])
def test_a_cpu_load_leaves_no_weight_in_the_mapped_file(tmp_path, arch):
    original = save_tiny(arch, tmp_path / "m")
    loaded = load(tmp_path / "m", device="cpu", dtype="float32")
    tensors = _tensors(loaded.model)
    assert not [name for name, t in tensors.items() if mapped(t)]
    for name, t in _tensors(original).items():
        assert torch.equal(tensors[name], t), name


def test_the_file_is_read_where_names_match_and_copied_elsewhere(tmp_path):
    save_tiny("qwen2", tmp_path / "m")
    files = [tmp_path / "m" / "model.safetensors"]
    for given in (files, []):  # [] : no checkpoint tensor to read, every mapped one is copied
        model = T.AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32)
        before = {name: t.clone() for name, t in _tensors(model).items()}
        assert any(mapped(t) for t in _tensors(model).values())  # transformers maps the file
        own_memory(model, given)
        after = _tensors(model)
        assert not [name for name, t in after.items() if mapped(t)]
        assert all(torch.equal(after[name], t) for name, t in before.items())


def test_tied_weights_stay_one_tensor(tmp_path):
    model = T.AutoModelForCausalLM.from_config(
        T.Qwen2Config(
            vocab_size=32,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            tie_word_embeddings=True,
        )
    )
    model.save_pretrained(tmp_path / "m")
    loaded = load(tmp_path / "m", device="cpu", dtype="float32").model
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    assert not mapped(loaded.lm_head.weight)
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)


def test_stored_tensors_read_back_what_was_saved(tmp_path):
    from safetensors.torch import save_file

    saved = {"a": torch.randn(3, 4), "b": torch.arange(5, dtype=torch.int64), "c": torch.randn(2).to(torch.bfloat16)}
    save_file(saved, tmp_path / "x.safetensors")
    stored = stored_tensors([tmp_path / "x.safetensors"])
    with open(tmp_path / "x.safetensors", "rb") as f:
        for name, t in saved.items():
            assert stored[name].matches(t)
            assert torch.equal(stored[name].read(f), t)


def test_a_tensor_made_by_more_than_a_read_is_not_converted_afterwards(tmp_path):
    save_tiny("qwen2", tmp_path / "m")
    model = T.AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32)
    model.model.norm.weight.data = model.model.norm.weight.data * 2  # as a weight converter's output would be: not a view
    before = {name: t.clone() for name, t in _tensors(model).items()}
    with pytest.raises(Unconvertible):
        own_memory(model, [tmp_path / "m" / "model.safetensors"], dict.fromkeys(before, torch.bfloat16))
    assert all(torch.equal(_tensors(model)[name], t) for name, t in before.items())  # untouched


def test_stored_tensors_are_converted_a_buffer_at_a_time(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    import rosi.model.private as private

    saved = torch.randn(1000) * 1e3
    save_file({"a": saved}, tmp_path / "x.safetensors")
    monkeypatch.setattr(private, "READ_CHUNK", 4 * 37 + 2)  # not a whole number of elements
    (entry,) = stored_tensors([tmp_path / "x.safetensors"]).values()
    with open(tmp_path / "x.safetensors", "rb") as f:
        for dtype in (torch.bfloat16, torch.float16, torch.float64, torch.float32):
            assert torch.equal(entry.read(f, dtype).view(torch.uint8), saved.to(dtype).view(torch.uint8))
