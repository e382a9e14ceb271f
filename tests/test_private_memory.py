"""Loaded weights live in private memory, read from the checkpoint, not in its memory mapping
(whose pages would stay resident beside any copy of them)."""

import pytest
import torch
import transformers as T

from conftest import ARCHS, CONFIGS, save_tiny
from rosi import load
from rosi.model.finite import all_finite
from rosi.model.loading import _conversion, _set_dtype, _take_buffers, _Target, checkpoint_dtype
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


def _same(ours: torch.nn.Module, theirs: torch.nn.Module) -> None:
    """Every parameter and buffer (shared ones under each name) of the same dtype, shape and bytes,
    shared alike, and the same config."""
    for get in ("named_parameters", "named_buffers"):
        a, b = dict(getattr(ours, get)(remove_duplicate=False)), dict(getattr(theirs, get)(remove_duplicate=False))
        assert a.keys() == b.keys()
        for name, t in b.items():
            assert (a[name].dtype, a[name].shape) == (t.dtype, t.shape), name
            assert torch.equal(a[name].contiguous().view(-1).view(torch.uint8), t.contiguous().view(-1).view(torch.uint8)), name
            assert a[name].requires_grad == t.requires_grad, name
        assert [[n for n, u in a.items() if u is t] for t in a.values()] == [[n for n, u in b.items() if u is t] for t in b.values()]
    assert ours.config.to_dict() == theirs.config.to_dict()
    assert ours.config._attn_implementation == theirs.config._attn_implementation
    assert ours.generation_config.to_dict() == theirs.generation_config.to_dict()
    assert ours.dtype == theirs.dtype


def _loads(monkeypatch) -> list:
    """The dtypes transformers is asked to load in, call by call."""
    import rosi.model.loading as loading

    calls = []
    real = loading._load_weights

    def spy(where, config, target, spec):
        calls.append(target.dtype)
        return real(where, config, target, spec)

    monkeypatch.setattr(loading, "_load_weights", spy)
    return calls


# transformers stacks these models' experts, stored one by one: they are loaded in the dtype asked for
CONVERTED_BY_TRANSFORMERS = {"mixtral", "qwen2_moe", "qwen3_moe"}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(("stored", "wanted"), [(torch.float32, "bfloat16"), (torch.bfloat16, "float32")])
def test_a_cpu_load_in_another_dtype_than_the_files_is_transformers_own(tmp_path, monkeypatch, arch, stored, wanted):
    save_tiny(arch, tmp_path / "m", dtype=stored)
    calls = _loads(monkeypatch)
    ours = load(tmp_path / "m", device="cpu", dtype=wanted).model
    assert calls == [getattr(torch, wanted) if arch in CONVERTED_BY_TRANSFORMERS else stored]
    theirs = T.AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=getattr(torch, wanted))
    _same(ours, theirs)
    assert not [name for name, t in _tensors(ours).items() if mapped(t)]
    assert checkpoint_dtype(tmp_path / "m") == stored  # what a saved checkpoint keeps


def test_the_file_is_converted_as_it_is_read(tmp_path):
    save_tiny("gemma3_text", tmp_path / "m")
    config = T.AutoConfig.from_pretrained(tmp_path / "m")
    files = [tmp_path / "m" / "model.safetensors"]
    conversion = _conversion(config, _Target(torch.device("cpu"), torch.bfloat16, False, False, None), files)
    assert conversion is not None and conversion.stored == torch.float32
    assert conversion.buffers.keys() == {name for name, _ in T.AutoModelForCausalLM.from_config(config).named_non_persistent_buffers()}
    model = T.AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32)
    stored = stored_tensors(files)
    assert all(mapped(t) and stored[name].matches(t) for name, t in _tensors(model).items() if name in stored)  # views of the file
    _take_buffers(model, conversion.buffers)
    own_memory(model, files, conversion.dtypes)
    _set_dtype(model.config, torch.bfloat16)
    _same(model, T.AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.bfloat16))


class _KeepConfig(T.Qwen2Config):
    model_type = "rosi_test_keep_fp32"


class _KeepModel(T.Qwen2ForCausalLM):
    config_class = _KeepConfig
    _keep_in_fp32_modules = ["up_proj"]  # in float16 only
    _keep_in_fp32_modules_strict = ["layers.*.mlp.down_proj", "norm"]  # in float16 and bfloat16


@pytest.mark.parametrize("wanted", ["bfloat16", "float16"])
def test_modules_transformers_keeps_in_float32_stay_in_it(tmp_path, monkeypatch, wanted):
    T.AutoConfig.register(_KeepConfig.model_type, _KeepConfig, exist_ok=True)
    T.AutoModelForCausalLM.register(_KeepConfig, _KeepModel, exist_ok=True)
    _KeepModel(_KeepConfig(**CONFIGS["qwen2"]().to_diff_dict())).save_pretrained(tmp_path / "m")
    calls = _loads(monkeypatch)
    ours = load(tmp_path / "m", device="cpu", dtype=wanted).model
    assert calls == [torch.float32]
    theirs = T.AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=getattr(torch, wanted))
    kept = {name for name, t in theirs.named_parameters() if t.dtype == torch.float32}
    assert any("down_proj" in name for name in kept) and any("up_proj" in name for name in kept) == (wanted == "float16")
    _same(ours, theirs)
    assert not [name for name, t in _tensors(ours).items() if mapped(t)]


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


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", [0, 17, 99])
def test_all_finite_finds_a_bad_value_in_any_chunk(bad: float, where: int) -> None:
    tensor = torch.randn(10, 10)
    assert all_finite(tensor, chunk=7)
    tensor.view(-1)[where] = bad
    assert not all_finite(tensor, chunk=7)
    assert not all_finite(tensor.T, chunk=7)  # not contiguous
    assert not all_finite(tensor.to(torch.bfloat16), chunk=7)


def test_all_finite_passes_integer_tensors() -> None:
    assert all_finite(torch.arange(10))
    assert all_finite(torch.zeros(0))
