"""Token-level evidence for fitting read-outs: every token an edit acts on, streamed into
second moments.

A rosi edit adds ``(r . x_t) s_hat`` at every token ``t`` (the system prompt, the user's words,
the template and every token of the reply), so a read-out fit only on one position per prompt is
unconstrained everywhere else. :func:`collect_token_moments` runs the harmful prompts, and the
harmless and look-alike prompts followed by the model's own replies (teacher-forced), and folds
each chosen writer's input into :class:`~rosi.direction.moments.Moments` per group:

- ``harmful``: the harmful prompts' rows at the read positions (target 1),
- ``benign_read``: the harmless and look-alike prompts' rows at the same positions (target 0),
- ``benign_tokens``: every other token of those prompts and of their replies (target 0).

The read positions (:data:`READS`): ``decide`` is the direction's own post-instruction position
(where the one-position fit reads), ``instruction`` the user's last token (where harmfulness is
represented, before the template: Zhao et al. 2025, "LLMs Encode Harmfulness and Refusal
Separately"), ``both`` the two. Nothing but the moments is kept: memory is ``in^2`` floats per
writer and group, however many tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from rosi.direction.moments import Moments
from rosi.model.chat import DECIDING, PAD, USER, ChatFormat, labelled_batch
from rosi.model.costs import count_forward
from rosi.model.hooks import device_of, forward, hooks
from rosi.model.writers import CausalLM

READS = ("decide", "instruction", "both")  # kept in step with rosi.edit.methods.READS (no torch there)
GROUPS = (("harmful", 1.0), ("benign_read", 0.0), ("benign_tokens", 0.0))
REPLY_TOKENS = 64  # new tokens of the benign prompts' own replies the fit sees (the length rosi judges)


@dataclass(frozen=True)
class TokenMoments:
    """Per writer (parameter name), the :class:`Moments` of each group of :data:`GROUPS`."""

    read: str
    position: int
    writers: dict[str, dict[str, Moments]]

    def groups(self, name: str) -> list[tuple[Moments, float]]:
        """The writer's groups with their targets, as :func:`rosi.edit.rank_one.gate_read_moments` takes them."""
        return [(self.writers[name][g], y) for g, y in GROUPS if self.writers[name][g].count > 0]

    def counts(self) -> dict[str, int]:
        first = next(iter(self.writers.values()))
        return {g: first[g].count for g, _ in GROUPS}

    def nbytes(self) -> int:
        return sum(m.nbytes() for groups in self.writers.values() for m in groups.values())

    def __add__(self, other: TokenMoments) -> TokenMoments:
        """The evidence of both (the same writers, read position and direction position)."""
        if (self.read, self.position, set(self.writers)) != (other.read, other.position, set(other.writers)):
            raise ValueError("token moments of different writers or read positions do not add up")
        return TokenMoments(
            self.read,
            self.position,
            {name: {g: self.writers[name][g] + other.writers[name][g] for g, _ in GROUPS} for name in self.writers},
        )


def read_mask(labels: torch.Tensor, read: str, position: int) -> torch.Tensor:
    """``[batch, length]`` bool: the read positions of each row of a :func:`labelled_batch`.
    ``position`` (negative) counts back from the first reply token, as the direction's does."""
    if read not in READS:
        raise ValueError(f"unknown read position {read!r}; choose one of {', '.join(READS)}")
    mask = torch.zeros_like(labels, dtype=torch.bool)
    rows = torch.arange(len(labels))
    if read in ("decide", "both"):
        decide = (labels == DECIDING).long().argmax(1)
        mask[rows, decide + 1 + position] = True
    if read in ("instruction", "both"):
        is_user = (labels == USER).long()
        last_user = labels.shape[1] - 1 - is_user.flip(1).argmax(1)
        mask[rows, last_user] = True
    return mask


@torch.no_grad()
def collect_token_moments(
    model: CausalLM,
    fmt: ChatFormat,
    harmful: Sequence[str],
    benign: Sequence[str],
    replies: Sequence[Sequence[int]],
    writers: Mapping[str, nn.Module],
    *,
    read: str = "decide",
    position: int = -1,
    batch_size: int = 16,
    progress: bool = False,
) -> TokenMoments:
    """The :class:`TokenMoments` of ``writers`` (parameter name -> module; their inputs) over the
    ``harmful`` prompts and the ``benign`` ones (harmless and look-alike) with their ``replies``."""
    if len(replies) != len(benign):
        raise ValueError(f"{len(benign)} benign prompts but {len(replies)} replies")
    moments = {name: {g: Moments() for g, _ in GROUPS} for name in writers}
    state: dict[str, torch.Tensor] = {}

    def keep(name: str):  # noqa: ANN202
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0]
            for group, mask in state.items():
                rows = x[mask.to(x.device)]
                if len(rows):
                    moments[name][group].add(rows)

        return hook

    device = device_of(model)
    jobs = [(harmful, None, "harmful"), (benign, replies, "benign")]
    total = sum(-(-len(texts) // batch_size) for texts, _, _ in jobs)
    bar = tqdm(total=total, desc="rosi: token moments", unit="batch", disable=not progress)
    with hooks([(m, keep(name)) for name, m in writers.items()], pre=True):
        for texts, answers, side in jobs:
            for start in range(0, len(texts), batch_size):
                chunk = texts[start : start + batch_size]
                batch, labels = labelled_batch(fmt, chunk, answers[start : start + batch_size] if answers is not None else None, device)
                at_read = read_mask(labels, read, position)
                if side == "harmful":
                    state = {"harmful": at_read}
                else:
                    state = {"benign_read": at_read, "benign_tokens": (labels != PAD) & ~at_read}
                forward(model.base_model, batch)
                count_forward()
                bar.update(1)
    bar.close()
    return TokenMoments(read, position, moments)
