"""A model's context and the check that prompts fit in it, made before any batch is built.

A prompt longer than the model's context would otherwise reach the forward pass, which tries to
allocate its attention over the whole prompt (a megabyte-long line asks for hundreds of
gigabytes) or indexes past the position table. Prompts are refused, never truncated: a cut
prompt is another prompt, and a figure measured on it would be about that one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rosi.errors import RosiError
from rosi.model.chat import ChatFormat

_SEAM = 8  # tokens the user text's seams with the template may add beyond one a byte
_LIMITS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


class ContextError(RosiError):
    """A prompt does not fit in the model's context."""


def context_length(model: Any) -> int | None:
    """The most tokens ``model`` reads at once, from its configuration (None: it does not say)."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    for name in _LIMITS:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def token_count(tokenizer: Any, text: str) -> int:
    """Tokens of ``text`` as it is fed to the model (already rendered: no special tokens added)."""
    return len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])


def check_fits(
    model: Any, fmt: ChatFormat, instructions: Sequence[str], *, new_tokens: int = 0, what: str = "prompts", name: str = "the model"
) -> None:
    """Refuse (:class:`ContextError`) the first of ``instructions`` whose rendered prompt and
    ``new_tokens`` reply tokens exceed ``model``'s context. Prompts whose UTF-8 length alone
    shows they fit (a token covers at least one byte) are not tokenized."""
    limit = context_length(model)
    if limit is None:
        return
    overhead = token_count(fmt.tokenizer, fmt.render("")) + _SEAM
    for i, text in enumerate(instructions):
        if len(text.encode()) + overhead + new_tokens <= limit:
            continue
        n = token_count(fmt.tokenizer, fmt.render(text))
        if n + new_tokens > limit:
            fit = f"with its {new_tokens}-token reply it does not fit" if new_tokens else "it does not fit"
            raise ContextError(
                f"{what}: prompt {i + 1} is {n} tokens long with the chat template; {fit} in {name}'s context of {limit} tokens; "
                "shorten or remove it"
            )
