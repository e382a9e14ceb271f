"""The GGUF outputs in the client that uses them: llama.cpp, through its Python binding.

A tiny random Llama is written as an unquantized ``.gguf`` (F32, or F16) with a byte-fallback
SentencePiece vocabulary, the way llama.cpp's converter lays it out. rosi then edits that file in
place (``rosi edit base.gguf --out edited.gguf``) and writes the same edit as a GGUF LoRA adapter
from the safetensors checkpoint (``--format gguf-lora``). llama.cpp loads the edited file, and the
base file with the adapter, and their next-token log-probabilities at every position of a few
prompts (tokenized by llama.cpp) must equal the transformers edit's within the file's own rounding
error, and differ from the base's by far more than that. Measured (llama-cpp-python 0.3.36, CPU): the
edit moves log-probabilities by up to 3.9; llama.cpp is within 2e-5 of transformers for an F32 file
(base, edited and adapter alike) and within 3e-2 for F16, the F16 base's own 2e-2.

Needs ``llama-cpp-python`` (``pip install -e '.[deploy]'``, built from source; ``make test`` installs it);
skipped without it, except under CI (``CI=true``), where it fails.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as T

from conftest import save_tokenizer
from rosi import Direction, apply_edit
from rosi.cli import main
from rosi.export.gguf import gguf_name


@pytest.fixture(scope="module")
def llama_cpp():
    """The binding; without it the test is skipped, except under CI (CI=true, whose make test installs it)."""
    try:
        import llama_cpp
    except ImportError:
        reason = "llama-cpp-python is not installed (pip install -e '.[deploy]')"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}: make test installs it for CI", pytrace=False)
        pytest.skip(reason)
    return llama_cpp


PROMPTS = ["How do I bake bread?", "Tell me how to pick a lock.", "hello world"]
ALPHA = 1.5
# byte-fallback SentencePiece vocabulary: <unk> <s> </s>, the 256 byte tokens, and the space mark
TOKENS = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), "\u2581"]
TOKEN_TYPES = [2, 3, 3, *([6] * 256), 1]  # unknown, control, control, byte..., normal


def tiny_llama() -> T.LlamaForCausalLM:
    config = T.LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=len(TOKENS),
        max_position_embeddings=128,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        initializer_range=0.2,  # logits with some spread, so log-probabilities are not all -log(vocab)
    )
    torch.manual_seed(0)
    model = T.LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's rotary layout of q/k rows (what its converter does to a transformers Llama)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(model: T.LlamaForCausalLM, path: Path, dtype: type = np.float32) -> Path:
    """``model`` as a llama.cpp GGUF file: matrices in ``dtype``, norms in float32."""
    import gguf

    c = model.config
    w = gguf.GGUFWriter(str(path), arch="llama")
    w.add_name("rosi tiny llama")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_key_length(c.head_dim)
    w.add_value_length(c.head_dim)
    w.add_rope_dimension_count(c.head_dim)
    w.add_rope_freq_base(float(c.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == np.float32 else gguf.LlamaFileType.MOSTLY_F16)
    w.add_tokenizer_model("llama")
    w.add_token_list(TOKENS)
    w.add_token_scores([0.0] * len(TOKENS))
    w.add_token_types(TOKEN_TYPES)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    for name, p in model.state_dict().items():
        data = p.detach().float().numpy()
        if name.endswith("q_proj.weight"):
            data = _permute(data, c.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            data = _permute(data, c.num_key_value_heads)
        w.add_tensor(gguf_name(name, "llama", c.num_hidden_layers), data.astype(dtype if data.ndim == 2 else np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def llama_cpp_logprobs(llama_cpp, model: Path, prompts: list[list[int]], lora: Path | None = None) -> list[np.ndarray]:
    """Next-token log-probabilities at every position of each prompt, from llama.cpp (its KV cache in
    float32: the default F16 cache alone puts 1e-2 between an F32 file and transformers)."""
    llm = llama_cpp.Llama(
        model_path=str(model),
        lora_path=str(lora) if lora else None,
        n_ctx=64,
        n_threads=1,
        logits_all=True,
        type_k=0,
        type_v=0,
        seed=0,
        verbose=False,
    )
    out = []
    for ids in prompts:
        llm.reset()
        llm.eval(ids)
        logits = torch.from_numpy(np.array(llm.scores[: len(ids)], dtype=np.float32))
        out.append(torch.log_softmax(logits, -1).numpy())
    llm.close()
    return out


def transformers_logprobs(model: T.LlamaForCausalLM, prompts: list[list[int]]) -> list[np.ndarray]:
    with torch.no_grad():
        return [torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1).numpy() for ids in prompts]


def max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("llama_cpp")
    model = tiny_llama()
    model.save_pretrained(tmp / "base")
    save_tokenizer(tmp / "base")  # rosi loads the checkpoint with a tokenizer; llama.cpp uses the GGUF's own
    direction = tmp / "d.safetensors"
    Direction(torch.randn(64, generator=torch.Generator().manual_seed(4)), layer=1, position=-1, model="tiny").save(direction)
    edit = ["--direction", str(direction), "--method", "scale", "--alpha", str(ALPHA)]
    assert main(["edit", str(tmp / "base"), *edit, "--format", "gguf-lora", "--out", str(tmp / "adapter.gguf")]) == 0
    return tmp, model, edit


@pytest.mark.parametrize("dtype", ["F32", "F16"])
def test_llama_cpp_answers_like_the_transformers_edit(llama_cpp, files, dtype):
    tmp, model, edit = files
    base = write_gguf(model, tmp / f"base-{dtype}.gguf", np.float32 if dtype == "F32" else np.float16)
    edited = tmp / f"edited-{dtype}.gguf"
    assert main(["edit", str(base), *edit, "--out", str(edited)]) == 0
    assert main(["verify", str(edited), "--base", str(base)]) == 0

    tokenizer = llama_cpp.Llama(model_path=str(base), vocab_only=True, verbose=False)
    prompts = [tokenizer.tokenize(p.encode(), add_bos=True) for p in PROMPTS]
    assert all(len(ids) > 5 and ids[0] == 1 for ids in prompts)

    reference = tiny_llama()  # the same weights, edited by transformers in memory
    want_base = transformers_logprobs(reference, prompts)
    apply_edit(reference, Direction.load(Path(edit[1])), "scale", ALPHA)
    want = transformers_logprobs(reference, prompts)

    got_base = llama_cpp_logprobs(llama_cpp, base, prompts)
    got_edited = llama_cpp_logprobs(llama_cpp, edited, prompts)
    got_lora = llama_cpp_logprobs(llama_cpp, base, prompts, lora=tmp / "adapter.gguf")

    rounding = max_diff(got_base, want_base)  # the file's own error (type and llama.cpp's arithmetic)
    effect = max_diff(want, want_base)
    err_edited, err_lora = max_diff(got_edited, want), max_diff(got_lora, want)
    print(
        f"{dtype}: edit effect {effect:.4f}; llama.cpp vs transformers: base {rounding:.2e}, "
        f"edited .gguf {err_edited:.2e}, base + GGUF LoRA {err_lora:.2e}; "
        f"edited vs base in llama.cpp {max_diff(got_edited, got_base):.4f}"
    )
    tolerance = 2 * rounding + 1e-4
    assert err_edited < tolerance and err_lora < tolerance
    assert effect > 20 * tolerance
    assert max_diff(got_edited, got_base) > 0.5 * effect and max_diff(got_lora, got_base) > 0.5 * effect


def test_an_f32_gguf_edited_in_place_equals_the_transformers_edit(files):
    """The same file through transformers' GGUF loader (no binding needed): an F32 file is edited
    exactly, and the base file it was written from is the transformers model."""
    tmp, model, edit = files
    base = write_gguf(model, tmp / "base-f32-hf.gguf")
    edited = tmp / "edited-f32-hf.gguf"
    assert main(["edit", str(base), *edit, "--out", str(edited)]) == 0
    prompts = [[1, 259, 75, 114, 122, 259, 103, 114], [1, 4, 90, 200, 33, 7, 7, 12, 250]]
    reference = tiny_llama()
    want_base = transformers_logprobs(reference, prompts)
    apply_edit(reference, Direction.load(Path(edit[1])), "scale", ALPHA)
    want = transformers_logprobs(reference, prompts)
    for path, expected in ((base, want_base), (edited, want)):
        loaded = T.AutoModelForCausalLM.from_pretrained(str(tmp), gguf_file=path.name, dtype=torch.float32).eval()
        assert max_diff(transformers_logprobs(loaded, prompts), expected) < 1e-5, path.name
    assert max_diff(want, want_base) > 0.1
