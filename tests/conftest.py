"""Tiny random-config models for every supported architecture (no downloads, milliseconds)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import transformers as T

_COMMON = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=128,
    head_dim=8,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)

CONFIGS = {
    "llama": lambda: T.LlamaConfig(**_COMMON),
    "mistral": lambda: T.MistralConfig(**_COMMON),
    "qwen2": lambda: T.Qwen2Config(**_COMMON),
    "qwen3": lambda: T.Qwen3Config(**_COMMON),
    "gemma": lambda: T.GemmaConfig(**_COMMON),
    "gemma2": lambda: T.Gemma2Config(**_COMMON),
    "gemma3_text": lambda: T.Gemma3TextConfig(**_COMMON),
    "phi3": lambda: T.Phi3Config(**_COMMON),
    "olmo2": lambda: T.Olmo2Config(**_COMMON),
    "mixtral": lambda: T.MixtralConfig(**_COMMON, num_local_experts=4, num_experts_per_tok=2),
    "qwen2_moe": lambda: T.Qwen2MoeConfig(
        **_COMMON, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, shared_expert_intermediate_size=48
    ),
    "qwen3_moe": lambda: T.Qwen3MoeConfig(**_COMMON, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16),
    "gpt2": lambda: T.GPT2Config(n_embd=32, n_layer=3, n_head=4, vocab_size=128, bos_token_id=1, eos_token_id=2),
}
ARCHS = sorted(CONFIGS)
# The public datasets beside the repository (../shared/data), for tests of the evaluation suites.
# ROSI_TEST_DATA points the tests at another folder (read by the tests only, e.g. to check what a
# run without the data does).
DATA = Path(os.environ.get("ROSI_TEST_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
# A test that reads ../shared/data: ``@needs_data``, or ``@needs_data("llamaguard3")`` for one of
# its folders. Without the data it is skipped, except under CI (CI=true), where it fails: a CI run
# must not pass while testing less.
needs_data = pytest.mark.needs_data
POST_NORM_ARCHS = {"gemma2", "gemma3_text", "olmo2"}


def require_data(*parts: str) -> Path:
    """The folder ``DATA/parts``; when it is missing, fail the test under CI (CI=true), else skip it."""
    path = DATA.joinpath(*parts)
    if path.is_dir():
        return path
    shown = "/".join(("../shared/data", *parts))
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{shown} is missing ({path}): CI must run with ../shared beside the repository", pytrace=False)
    pytest.skip(f"{shown} is missing ({path}): ../shared is not beside the repository")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "needs_data(*folders): reads ../shared/data (or a folder of it): skipped without it, failed under CI=true"
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("needs_data"):
        require_data(*mark.args)


def tiny_model(arch: str, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = T.AutoModelForCausalLM.from_config(CONFIGS[arch]())
    # Random init leaves norms at 1 and biases at 0; perturb everything so no term hides.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model.to(dtype).eval()


@pytest.fixture(params=ARCHS)
def arch(request: pytest.FixtureRequest) -> str:
    return request.param


def save_tokenizer(folder: Path) -> Path:
    """A small real tokenizer (word-level, with a chat template), saved to ``folder``."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["<pad>", "<s>", "</s>", "<unk>", "hello", "world", "user", "assistant"])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = T.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    fast.chat_template = (
        "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}{% if add_generation_prompt %}assistant {% endif %}"
    )
    fast.save_pretrained(folder)
    return folder


@pytest.fixture
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory):
    """A small real tokenizer (word-level, with a chat template), saved to a folder."""
    return save_tokenizer(tmp_path_factory.mktemp("tok"))


def snapshot(root: Path) -> dict[str, str]:
    """Every path below ``root``: its kind, and a file's sha256 (what a refused command must leave as it was)."""
    import hashlib

    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink() or not (p.is_file() or p.is_dir()):
            out[rel] = "special"
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def save_tiny(arch: str, folder, dtype: torch.dtype = torch.float32, tokenizer_dir=None) -> torch.nn.Module:
    """Write a tiny model (and optionally a tokenizer) as a standard safetensors checkpoint."""
    model = tiny_model(arch, dtype)
    model.save_pretrained(folder)
    if tokenizer_dir is not None:
        T.AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(folder)
    return model
