"""Chat formatting from the tokenizer's own template, and the post-instruction tokens.

The post-instruction tokens are what the template appends after the user's text up to where
the assistant starts (for Qwen: ``<|im_end|>\\n<|im_start|>assistant\\n``). Directions are read
at these positions: they hold the model's decision of how to answer.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rosi.errors import RosiError

_MARK = "\u2063rosi-user-text\u2063"


class ChatTemplateError(RosiError):
    """The tokenizer has no usable chat template."""


def chat_messages(instruction: str, system_prompt: str | None = None) -> list[dict[str, str]]:
    """The conversation rosi sends: an optional system turn, then the user's instruction."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*system, {"role": "user", "content": instruction}]


@dataclass(frozen=True)
class ChatFormat:
    tokenizer: Any
    system_prompt: str | None = None

    def __post_init__(self) -> None:
        if self.tokenizer is None:
            raise ChatTemplateError(
                "the model has no tokenizer (no tokenizer files beside its weights), so rosi cannot format prompts; "
                "use a model folder with its tokenizer files"
            )
        if not getattr(self.tokenizer, "chat_template", None):
            raise ChatTemplateError(
                "the tokenizer has no chat template, so rosi cannot format prompts as the model expects; "
                "use an instruct/chat model, or pass a Jinja chat template (CLI: --chat-template FILE; library: load(..., chat_template=TEXT))"
            )

    def render(self, instruction: str) -> str:
        messages = chat_messages(instruction, self.system_prompt)
        return str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))

    def post_instruction_ids(self) -> list[int]:
        """Token ids that every prompt ends with after the user's text."""
        text = self.render(_MARK)
        suffix = text.split(_MARK, 1)[1]
        ids = self.tokenizer(suffix, add_special_tokens=False).input_ids
        if not ids:
            raise ChatTemplateError(
                "the chat template adds nothing after the user's text (no assistant turn); rosi needs a chat model's template"
            )
        return list(ids)

    def batches(
        self, instructions: Sequence[str], batch_size: int, device: torch.device | str = "cpu"
    ) -> Iterator[dict[str, torch.Tensor]]:
        """``encode`` over consecutive slices of ``batch_size`` prompts."""
        for start in range(0, len(instructions), batch_size):
            yield self.encode(instructions[start : start + batch_size], device)

    def encode(self, instructions: Sequence[str], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Left-padded batch of rendered prompts (so the last positions line up across rows)."""
        texts = [self.render(i) for i in instructions]
        tok = self.tokenizer
        side = tok.padding_side
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        try:
            batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        finally:
            tok.padding_side = side
        return {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}


def check_suffix(batch: dict[str, torch.Tensor], suffix: list[int]) -> None:
    """Every row must end with the post-instruction tokens (tokenization can merge across the seam)."""
    tail = batch["input_ids"][:, -len(suffix) :]
    expected = torch.tensor(suffix, device=tail.device)
    if not (tail == expected).all():
        raise ChatTemplateError(
            "the tokenized prompts do not end with the template's post-instruction tokens; the template cannot be split"
        )


# Where a token sits in a conversation, for measuring where an edit fires (0 is padding).
SEGMENTS = ("system", "user", "template", "deciding", "reply")
PAD, SYSTEM, USER, TEMPLATE, DECIDING, REPLY = range(6)


def segment_labels(fmt: ChatFormat, instruction: str, reply: Sequence[int] = ()) -> tuple[list[int], list[int]]:
    """The token ids of a rendered prompt followed by ``reply`` (teacher-forced reply ids, e.g.
    a greedy reply of the model), and a label per token: :data:`SYSTEM` for every token before
    the user's words (the system turn, the template's own default one where none is given, and the
    user turn's header), :data:`USER` for the user's words, :data:`TEMPLATE` for the
    post-instruction tokens but the last, :data:`DECIDING` for the last prompt token (where the
    first reply token is decided) and :data:`REPLY` for the reply's tokens. Raises
    :class:`ChatTemplateError` where the template's parts do not tokenize on their own."""
    tok = fmt.tokenizer
    ids = list(tok(fmt.render(instruction), add_special_tokens=False).input_ids)
    head = fmt.render(_MARK).split(_MARK, 1)[0]
    head_ids = list(tok(head, add_special_tokens=False).input_ids)
    suffix = fmt.post_instruction_ids()
    # the head's tokens as they stand in the prompt: a token the tokenizer merges across the seam
    # with the user's first characters counts as the user's
    n_head = next((i for i, (a, b) in enumerate(zip(ids, head_ids, strict=False)) if a != b), min(len(ids), len(head_ids)))
    n_user = len(ids) - n_head - len(suffix)
    if ids[len(ids) - len(suffix) :] != suffix or n_user < 1:
        raise ChatTemplateError("the tokenized prompt does not split into the template's head, the user's words and its tail")
    labels = [SYSTEM] * n_head + [USER] * n_user + [TEMPLATE] * (len(suffix) - 1) + [DECIDING]
    return ids + list(reply), labels + [REPLY] * len(reply)


def labelled_batch(
    fmt: ChatFormat, instructions: Sequence[str], replies: Sequence[Sequence[int]] | None = None, device: torch.device | str = "cpu"
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """A left-padded batch of :func:`segment_labels` rows (prompt, then the reply where given)
    and its ``[batch, length]`` labels (:data:`PAD` on padding)."""
    rows = [segment_labels(fmt, text, replies[i] if replies is not None else ()) for i, text in enumerate(instructions)]
    width = max(len(ids) for ids, _ in rows)
    pad_id = next((t for t in (fmt.tokenizer.pad_token_id, fmt.tokenizer.eos_token_id) if t is not None), 0)  # masked anyway
    input_ids = torch.full((len(rows), width), int(pad_id), dtype=torch.long)
    labels = torch.full((len(rows), width), PAD, dtype=torch.long)
    for i, (ids, lab) in enumerate(rows):
        input_ids[i, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        labels[i, width - len(lab) :] = torch.tensor(lab, dtype=torch.long)
    batch = {"input_ids": input_ids.to(device), "attention_mask": (labels != PAD).long().to(device)}
    return batch, labels


def reply_ids(fmt: ChatFormat, ids: Sequence[int]) -> list[int]:
    """A generated row's reply tokens up to (not including) its first end-of-sequence or padding token."""
    tok = fmt.tokenizer
    stop = {t for t in (tok.eos_token_id, tok.pad_token_id) if t is not None}
    out: list[int] = []
    for t in ids:
        if t in stop:
            break
        out.append(int(t))
    return out
