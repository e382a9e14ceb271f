"""Batched greedy generation from chat prompts."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from copy import deepcopy
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from rosi.model.chat import ChatFormat, chat_messages, reply_ids
from rosi.model.costs import count_forward, count_generated
from rosi.model.endpoint import Endpoint
from rosi.model.hooks import CACHE_KWARG, device_of, forward, hooks
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
    share_prefix: bool = False,
) -> list[list[int]]:
    """The new token ids of greedy completions (padding after a row's EOS included).
    ``share_prefix``: as :func:`generate_with_logprobs` has it."""
    ids, _ = _greedy(model, fmt, instructions, max_new_tokens, batch_size, progress, desc, first_logprobs=False, share_prefix=share_prefix)
    return ids


def generate_replies(
    model: CausalLM,
    fmt: ChatFormat,
    instructions: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int = 32,
    progress: bool = False,
    desc: str = "rosi: replies",
) -> list[list[int]]:
    """Greedy reply ids, each cut at its end of sequence (:func:`rosi.model.chat.reply_ids`): the
    replies token-level fits and the firing probe teacher-force."""
    ids = generate_ids(model, fmt, instructions, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress, desc=desc)
    return [reply_ids(fmt, row) for row in ids]


def generate_with_logprobs(
    model: CausalLM,
    fmt: ChatFormat,
    instructions: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int = 32,
    progress: bool = False,
    desc: str = "generating",
    share_prefix: bool = False,
) -> tuple[list[str], torch.Tensor]:
    """Greedy completions and the log-probabilities of the first reply token (as
    :func:`next_token_logprobs` gives them) from one pass: the first generation step's logits
    are the next-token distribution, so scoring both costs one prefill, not two.

    ``share_prefix``: compute the tokens every prompt starts with (the chat template's system
    turn, most of a short prompt) once, not once a row (:func:`shared_prefix_length`). The same
    numbers up to rounding; for repeated measurement of one model's state (``rosi tune``)."""
    ids, logprobs = _greedy(
        model, fmt, instructions, max_new_tokens, batch_size, progress, desc, first_logprobs=True, share_prefix=share_prefix
    )
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
    share_prefix: bool = False,
) -> tuple[list[list[int]], torch.Tensor | None]:
    device = device_of(model)
    tok = fmt.tokenizer
    replies: list[list[int]] = []
    rows: list[torch.Tensor] = []
    bar = tqdm(total=len(instructions), desc=desc, unit="prompt", disable=not progress)

    def keep_first(module: nn.Module, args: Any, output: Any) -> None:
        # the first forward call of a generation is the prompt's: its last logits are the first
        # reply token's distribution (generate's own ``output_logits`` would keep every step's,
        # steps x rows x vocabulary floats: 3.7 GB for 64 tokens of 96 rows of a 150k vocabulary)
        if len(rows) == batches_done:
            rows.append(torch.log_softmax(output.logits[:, -1, :].float(), dim=-1).cpu())

    batches_done = 0
    for batch in prompt_batches(model, fmt, instructions, batch_size, device, share_prefix=share_prefix):
        with hooks([(model, keep_first)] if first_logprobs else []):
            new = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=tok.pad_token_id,
            )[:, batch["input_ids"].shape[1] :]
        batches_done += 1
        count_generated(int(new.numel()))
        replies.extend(new.tolist())
        bar.update(len(new))
    bar.close()
    return replies, (torch.cat(rows) if first_logprobs else None)


def shared_prefix_length(rows: Sequence[Sequence[int]], own: int = 1) -> int:
    """How many leading tokens all rows share, leaving every row at least ``own`` tokens of its own
    (one: the one whose logits give the first reply token)."""
    if not rows:
        return 0
    n = min(len(r) for r in rows) - own
    first = rows[0]
    for i in range(max(n, 0)):
        if any(r[i] != first[i] for r in rows):
            return i
    return max(n, 0)


_MIN_PREFIX = 4  # shorter shared prefixes take the plain path (a floor chosen by hand, not measured)


def shared_prefix_batches(
    model: CausalLM, fmt: ChatFormat, instructions: Sequence[str], batch_size: int, device: torch.device, own: int = 1
) -> Iterator[dict[str, Any]] | None:
    """Inputs for generation and for forward passes (:func:`rosi.model.hooks.forward`) whose
    shared prefix is computed once, by the model as it is now (edits included): each batch is the
    prefix, then left padding, then each row's own tokens (at least ``own``), with the prefix's
    key-value cache copied for every row (positions come from the attention mask, so a row's
    tokens keep the positions they have without the padding). None where the prompts share too
    little, or the model's cache cannot be copied per row."""
    encoded = fmt.encode(instructions)  # rendered and tokenized as every other path does it (pad token set)
    ids = [row[mask.bool()].tolist() for row, mask in zip(encoded["input_ids"], encoded["attention_mask"], strict=True)]
    pad_id = fmt.tokenizer.pad_token_id
    p = shared_prefix_length(ids, own)
    if p < _MIN_PREFIX:
        return None
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids[0][:p]], device=device), use_cache=True)  # one row: not counted as a batch
    cache = getattr(out, "cache", None) or out.past_key_values
    if not hasattr(cache, "batch_repeat_interleave"):
        return None

    def batches() -> Iterator[dict[str, Any]]:
        for start in range(0, len(ids), batch_size):
            rows = ids[start : start + batch_size]
            width = max(len(r) for r in rows) - p
            input_ids, mask = [], []
            for r in rows:
                pad = width - (len(r) - p)
                input_ids.append(r[:p] + [pad_id] * pad + r[p:])
                mask.append([1] * p + [0] * pad + [1] * (len(r) - p))
            copy = deepcopy(cache)
            copy.batch_repeat_interleave(len(rows))
            yield {
                "input_ids": torch.tensor(input_ids, device=device),
                "attention_mask": torch.tensor(mask, device=device),
                CACHE_KWARG: copy,
            }

    return batches()


def prompt_batches(
    model: CausalLM,
    fmt: ChatFormat,
    instructions: Sequence[str],
    batch_size: int,
    device: torch.device,
    *,
    share_prefix: bool = True,
    own: int = 1,
) -> Iterator[dict[str, Any]]:
    """The prompts' batches, for ``generate`` or :func:`rosi.model.hooks.forward`: with
    ``share_prefix``, :func:`shared_prefix_batches` (its prefix is computed here, by the model as
    it is now) where the prompts share enough; else plain left-padded ones."""
    shared = shared_prefix_batches(model, fmt, instructions, batch_size, device, own) if share_prefix else None
    return shared if shared is not None else fmt.batches(instructions, batch_size, device)


@torch.no_grad()
def next_token_logprobs(
    model: nn.Module,
    fmt: ChatFormat,
    instructions: Sequence[str],
    *,
    batch_size: int = 32,
    progress: bool = False,
    desc: str = "next-token distributions",
    share_prefix: bool = False,
) -> torch.Tensor:
    """Log-probabilities of the first reply token (prompts x vocabulary, float32, on the CPU).
    ``share_prefix``: the prompts' shared prefix is computed once per call, with the model as it
    is (edits included), then each batch runs its rows' own tokens only (equal up to rounding)."""
    device = device_of(model)
    rows = []
    bar = tqdm(total=len(instructions), desc=desc, unit="prompt", disable=not progress)
    for batch in prompt_batches(model, fmt, instructions, batch_size, device, share_prefix=share_prefix):
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
