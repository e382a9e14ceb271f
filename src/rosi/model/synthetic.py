"""Random-weight models built from real configs, for measuring cost without downloading a model.

What a step costs (time, memory, bytes moved) depends on a model's shape and dtype, not on its
weights, so rosi's speed figures are measured on models made here:

- :data:`SHAPES`: the shapes measured (Qwen2.5-0.5B, Llama-3.1-8B, and a tiny one for the CPU);
  :func:`random_model` builds one on a device, with a word-level tokenizer that has a chat
  template (:func:`word_tokenizer`), as a :class:`LoadedModel` every rosi call takes;
  :func:`random_prompts` makes prompts of random words from that tokenizer's vocabulary.
- :data:`LLAMA_3_2_3B` and :func:`random_checkpoint`: a sharded checkpoint on disk with
  Llama-3.2-3B's config (real vocabulary size, so real file sizes), for ``rosi apply``'s figures.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from rosi.model.loading import LoadedModel, ModelSource

SHAPES: dict[str, dict[str, Any]] = {
    "qwen0.5b": dict(
        kind="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2
    ),
    "llama8b": dict(
        kind="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8
    ),
    "tiny": dict(kind="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2),
}
LLAMA_3_2_3B: dict[str, Any] = dict(
    hidden_size=3072,
    intermediate_size=8192,
    num_hidden_layers=28,
    num_attention_heads=24,
    num_key_value_heads=8,
    head_dim=128,
    vocab_size=128256,
    tie_word_embeddings=True,
    rms_norm_eps=1e-5,
)
WORDS = tuple(f"w{i}" for i in range(2000))
PAD, BOS, EOS = 0, 1, 2  # the word tokenizer's special token ids


def word_tokenizer() -> Any:
    """A fast tokenizer over :data:`WORDS` (split on whitespace) with a plain chat template."""
    import transformers as T
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["<pad>", "<s>", "</s>", "<unk>", "user", "assistant", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = T.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    fast.chat_template = (
        "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} </s> {% endfor %}{% if add_generation_prompt %}assistant {% endif %}"
    )
    return fast


def random_prompts(n: int, seed: int) -> tuple[str, ...]:
    """``n`` prompts of 8 to 24 random words each, the same for the same seed."""
    rng = random.Random(seed)
    return tuple(" ".join(rng.choices(WORDS, k=rng.randint(8, 24))) for _ in range(n))


def random_model(shape: str | dict[str, Any], device: torch.device, dtype: torch.dtype) -> LoadedModel:
    """A model of ``shape`` (a name in :data:`SHAPES`, or such a dict) with weights drawn with seed 0,
    made directly on ``device`` in ``dtype``, and the word tokenizer."""
    import transformers as T

    shape = SHAPES[shape] if isinstance(shape, str) else shape
    tok = word_tokenizer()
    kind = shape["kind"]
    config_class = T.Qwen2Config if kind == "qwen2" else T.LlamaConfig
    config = config_class(
        **{k: v for k, v in shape.items() if k != "kind"}, vocab_size=len(tok), pad_token_id=PAD, eos_token_id=EOS, bos_token_id=BOS
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = T.AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    model.generation_config = T.GenerationConfig(eos_token_id=EOS, pad_token_id=PAD)
    return LoadedModel(model, tok, ModelSource(f"random:{kind}", "memory", "", "0" * 64))


def random_checkpoint(folder: Path, config: dict[str, Any] = LLAMA_3_2_3B, max_shard_size: str = "1500MB") -> Path:
    """A Llama checkpoint of ``config`` in bfloat16, weights drawn with seed 0, saved to ``folder``
    in shards (no tokenizer). Made in bfloat16 directly: half the memory of float32 and a cast."""
    import transformers as T

    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = T.LlamaForCausalLM(T.LlamaConfig(**config))
    finally:
        torch.set_default_dtype(previous)
    model.save_pretrained(folder, max_shard_size=max_shard_size)
    return folder
