"""Batched greedy generation from chat prompts."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from rosi.model.chat import ChatFormat, chat_messages
from rosi.model.endpoint import Endpoint
from rosi.model.hooks import device_of, forward
from rosi.model.meter import count_forward, count_generated
from rosi.model.writers import CausalLM


def generate(
    model: CausalLM,
    fmt: ChatFormat,
    instructions: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int = 32,
    progress: bool = False,
    desc: str = "generating",
) -> list[str]:
    """Greedy completions, left-padded batches; a row stops at its EOS token."""
    ids = generate_ids(model, fmt, instructions, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress, desc=desc)
    return list(fmt.tokenizer.batch_decode(ids, skip_special_tokens=True))


@torch.no_grad()
def generate_ids(
    model: CausalLM,
    fmt: ChatFormat,
    instructions: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int = 32,
    progress: bool = False,
    desc: str = "generating",
) -> list[list[int]]:
    """The new token ids of greedy completions (padding after a row's EOS included)."""
    device = device_of(model)
    tok = fmt.tokenizer
    replies: list[list[int]] = []
    bar = tqdm(total=len(instructions), desc=desc, unit="prompt", disable=not progress)
    for batch in fmt.batches(instructions, batch_size, device):
        out = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=tok.pad_token_id,
        )
        new = out[:, batch["input_ids"].shape[1] :]
        count_generated(int(new.numel()))
        replies.extend(new.tolist())
        bar.update(len(new))
    bar.close()
    return replies


@torch.no_grad()
def next_token_logprobs(
    model: nn.Module,
    fmt: ChatFormat,
    instructions: Sequence[str],
    *,
    batch_size: int = 32,
    progress: bool = False,
    desc: str = "next-token distributions",
) -> torch.Tensor:
    """Log-probabilities of the first reply token (prompts x vocabulary, float32, on the CPU)."""
    device = device_of(model)
    rows = []
    bar = tqdm(total=len(instructions), desc=desc, unit="prompt", disable=not progress)
    for batch in fmt.batches(instructions, batch_size, device):
        # left padding (with padding-proof positions): the last position is every row's last
        # prompt token; only its logits are computed
        logits = forward(model, batch, logits_to_keep=1).logits[:, -1, :]
        count_forward()
        rows.append(torch.log_softmax(logits.float(), dim=-1).cpu())
        bar.update(len(logits))
    bar.close()
    return torch.cat(rows)


class Generator:
    """Greedy replies to chat prompts, a batch at a time (the unit that evaluation caches)."""

    batch_size: int = 32

    def __call__(self, instructions: list[str], *, max_new_tokens: int) -> list[str]:
        raise NotImplementedError


class LocalGenerator(Generator):
    """In-process generation with transformers (the default backend)."""

    def __init__(self, model: nn.Module, fmt: ChatFormat, batch_size: int = 32) -> None:
        self.model, self.fmt, self.batch_size = model, fmt, batch_size

    def __call__(self, instructions: list[str], *, max_new_tokens: int) -> list[str]:
        return generate(self.model, self.fmt, instructions, max_new_tokens=max_new_tokens, batch_size=self.batch_size)


class ServerGenerator(Generator):
    """Generation by an OpenAI-compatible server (vLLM with tensor parallelism, ``transformers
    serve``, ...): greedy chat completions, ``batch_size`` requests in flight."""

    def __init__(self, endpoint: Endpoint, system_prompt: str | None = None, batch_size: int = 16) -> None:
        self.endpoint, self.system_prompt, self.batch_size = endpoint, system_prompt, batch_size

    def __call__(self, instructions: list[str], *, max_new_tokens: int) -> list[str]:
        conversations = [chat_messages(i, self.system_prompt) for i in instructions]
        return self.endpoint.chat_many(conversations, max_tokens=max_new_tokens, workers=self.batch_size)
