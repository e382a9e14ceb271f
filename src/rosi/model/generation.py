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
    ids, _ = _greedy(model, fmt, instructions, max_new_tokens, batch_size, progress, desc, first_logprobs=False)
    return ids


def generate_with_logprobs(
    model: CausalLM,
    fmt: ChatFormat,
    instructions: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int = 32,
    progress: bool = False,
    desc: str = "generating",
) -> tuple[list[str], torch.Tensor]:
    """Greedy completions and the log-probabilities of the first reply token (as
    :func:`next_token_logprobs` gives them) from one pass: the first generation step's logits
    are the next-token distribution, so scoring both costs one prefill, not two."""
    ids, logprobs = _greedy(model, fmt, instructions, max_new_tokens, batch_size, progress, desc, first_logprobs=True)
    assert logprobs is not None
    return list(fmt.tokenizer.batch_decode(ids, skip_special_tokens=True)), logprobs


@torch.no_grad()
def _greedy(
    model: CausalLM,
    fmt: ChatFormat,
    instructions: Sequence[str],
    max_new_tokens: int,
    batch_size: int,
    progress: bool,
    desc: str,
    *,
    first_logprobs: bool,
) -> tuple[list[list[int]], torch.Tensor | None]:
    device = device_of(model)
    tok = fmt.tokenizer
    replies: list[list[int]] = []
    rows: list[torch.Tensor] = []
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
            # the raw (unprocessed) logits of each step; only the first is kept
            output_logits=first_logprobs,
            return_dict_in_generate=first_logprobs,
        )
        sequences = out.sequences if first_logprobs else out
        if first_logprobs:
            rows.append(torch.log_softmax(out.logits[0].float(), dim=-1).cpu())
        new = sequences[:, batch["input_ids"].shape[1] :]
        count_generated(int(new.numel()))
        replies.extend(new.tolist())
        bar.update(len(new))
    bar.close()
    return replies, (torch.cat(rows) if first_logprobs else None)


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
