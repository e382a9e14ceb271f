"""Batched greedy generation from chat prompts."""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from rosi.chat import ChatFormat

DEFAULT_NEW_TOKENS = 64


@torch.no_grad()
def generate(
    model: nn.Module,
    fmt: ChatFormat,
    instructions: list[str] | tuple[str, ...],
    *,
    max_new_tokens: int = DEFAULT_NEW_TOKENS,
    batch_size: int = 32,
    progress: bool = False,
    desc: str = "generating",
) -> list[str]:
    """Greedy completions, left-padded batches; a row stops at its EOS token."""
    device = next(model.parameters()).device
    tok = fmt.tokenizer
    replies: list[str] = []
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
        replies.extend(tok.batch_decode(new, skip_special_tokens=True))
        bar.update(len(new))
    bar.close()
    return replies
