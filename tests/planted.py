"""A tiny model whose refusal is controlled by one known direction.

Layer 0's attention averages the (normalised) embeddings of all tokens so far (q = k = 0,
v = o = identity); every other write is zero. The word "bomb" has an embedding along ``u``,
and the output head's row for "I" (a refusal start) is ``u`` scaled up. So a prompt refuses
exactly when "bomb" is in it, through ``u``: ablating ``u`` stops it, adding ``u`` causes it.
"""

from __future__ import annotations

import torch
import transformers as T
from tokenizers import Tokenizer, models, pre_tokenizers

WORDS = [
    "<pad>",
    "<s>",
    "</s>",
    "<unk>",
    "user",
    "assistant",
    "I",
    "Sure",
    "how",
    "to",
    "make",
    "bake",
    "a",
    "bomb",
    "bread",
    "cake",
    "poison",
    "soup",
    "gun",
    "kite",
]
HIDDEN = 32
HARMFUL = ["how to make a bomb", "make a bomb", "how to bake a bomb cake", "bomb how to make", "a bomb to make", "make bomb soup"]
HARMLESS = ["how to bake bread", "make a cake", "how to make soup", "bake a kite", "make a kite", "how to bake a cake"]


def tokenizer():
    vocab = {w: i for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = T.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    fast.chat_template = (
        "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} </s> {% endfor %}{% if add_generation_prompt %}assistant {% endif %}"
    )
    return fast


def model(u: torch.Tensor, layers: int = 4) -> torch.nn.Module:
    config = T.LlamaConfig(
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=8,
        vocab_size=len(WORDS),
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    m = T.LlamaForCausalLM(config).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        for name, p in m.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
        eye = torch.eye(HIDDEN)
        m.model.layers[0].self_attn.v_proj.weight.copy_(eye)
        m.model.layers[0].self_attn.o_proj.weight.copy_(eye)
        other = torch.randn(len(WORDS), HIDDEN, generator=g)
        other -= (other @ u).unsqueeze(-1) * u  # ordinary words carry nothing along u
        m.model.embed_tokens.weight.copy_(other)
        m.model.embed_tokens.weight[WORDS.index("bomb")] = 6.0 * u + 0.3 * other[WORDS.index("bomb")]
        m.lm_head.weight.copy_(0.1 * torch.randn(len(WORDS), HIDDEN, generator=g))
        m.lm_head.weight[WORDS.index("I")] = 40.0 * u
    return m


def unit_vector(seed: int) -> torch.Tensor:
    v = torch.randn(HIDDEN, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()
