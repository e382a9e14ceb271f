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


# --- a scary word shared by harmful requests and safe look-alikes ------------------------------
#
# "kill" and "shoot" carry a scary-word feature ``a``; "person" and "child" carry a harm feature
# ``h`` and some of the refusal direction ``u``, so the base model refuses the harmful prompts a
# little. Look-alikes ("kill a process", "shoot a photo") share the scary word, not the harm. A
# difference-of-means direction then mixes ``a``, ``h`` and ``u``: an edit that reads it from the
# writers' outputs (``scale``) also fires on look-alikes; a read-out fit to tell harmful inputs
# from look-alike ones (``gate``) fires on the harm.

LOOKALIKE_WORDS = [*WORDS, "kill", "shoot", "person", "child", "process", "photo", "weeds", "game"]
HARMFUL_LA = [
    "how to kill a person",
    "kill a child",
    "shoot a person",
    "how to shoot a child",
    "make a gun to kill a person",
    "kill person how to",
    "a person to shoot",
    "how to make poison to kill a child",
]
HARMLESS_LA = [
    "how to bake bread",
    "make a cake",
    "how to make soup",
    "bake a kite",
    "make a kite",
    "how to bake a cake",
    "a cake",
    "make bread",
]
LOOKALIKE_LA = [
    "how to kill a process",
    "kill weeds",
    "shoot a photo",
    "how to shoot a photo",
    "kill a game process",
    "kill the weeds how to",
    "a photo to shoot",
    "how to kill weeds in a game",
]


def lookalike_tokenizer():
    vocab = {w: i for i, w in enumerate(LOOKALIKE_WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = T.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    fast.chat_template = tokenizer().chat_template
    return fast


def lookalike_model(layers: int = 4) -> tuple[torch.nn.Module, torch.Tensor]:
    """The model and its refusal direction ``u``."""
    g = torch.Generator().manual_seed(7)
    basis, _ = torch.linalg.qr(torch.randn(HIDDEN, 3, generator=g))
    u, a, h = basis.T
    config = T.LlamaConfig(
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=8,
        vocab_size=len(LOOKALIKE_WORDS),
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    m = T.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        for name, p in m.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
        eye = torch.eye(HIDDEN)
        m.model.layers[0].self_attn.v_proj.weight.copy_(eye)
        m.model.layers[0].self_attn.o_proj.weight.copy_(eye)
        other = torch.randn(len(LOOKALIKE_WORDS), HIDDEN, generator=g)
        other -= other @ basis @ basis.T  # ordinary words carry none of u, a, h
        emb = m.model.embed_tokens.weight
        emb.copy_(other)
        index = LOOKALIKE_WORDS.index
        for w in ("kill", "shoot"):
            emb[index(w)] = 4.0 * a + 0.3 * other[index(w)]
        for w in ("person", "child"):
            emb[index(w)] = 4.0 * h + 0.8 * u + 0.3 * other[index(w)]
        m.lm_head.weight.copy_(0.1 * torch.randn(len(LOOKALIKE_WORDS), HIDDEN, generator=g))
        m.lm_head.weight[index("I")] = 30.0 * u
    m.generation_config = T.GenerationConfig(eos_token_id=2, pad_token_id=0)
    return m, u
