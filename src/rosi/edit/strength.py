"""How strongly to edit: a search up the method's grid on validation prompts.

The strength kept is the one with the most refusals on harmful validation prompts while refusals
on harmless ones rise by at most ``budget`` over the base model, judged by the marker judge on
short greedy replies (:data:`SEARCH_TOKENS` tokens: enough for "I'm sorry" or "I can't", at
little more than the cost of one forward pass over the prompts).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from rosi.direction.vector import Direction
from rosi.edit.apply import apply_edit, revert_edit
from rosi.edit.methods import get_method
from rosi.edit.scope import WriterChoice
from rosi.judges.markers import refusal_rate
from rosi.model.chat import ChatFormat
from rosi.model.generation import generate
from rosi.model.loading import LoadedModel
from rosi.prompts import PromptSet

SEARCH_TOKENS = 8  # reply length judged during the search
MAX_STEPS = 12  # strengths tried at most, halving below the grid included


@dataclass(frozen=True)
class StrengthStep:
    """Refusal rates (0..1) on the validation prompts at one strength (0: the base model)."""

    strength: float
    harmful: float
    harmless: float


@dataclass(frozen=True)
class StrengthSearch:
    method: str
    strength: float
    chosen_by: str
    rows: tuple[StrengthStep, ...] = ()

    @property
    def base(self) -> StrengthStep | None:
        """The base model's rates (the first row), when the search measured them."""
        return self.rows[0] if self.rows else None

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "strength": self.strength, "chosen_by": self.chosen_by, "rows": [asdict(r) for r in self.rows]}


def refusal_rate_of(
    loaded: LoadedModel, prompts: PromptSet | Sequence[str], *, new_tokens: int, batch_size: int, progress: bool = False, desc: str = ""
) -> tuple[float, list[str]]:
    """The marker judge's refusal rate on greedy replies of ``new_tokens`` tokens, and the replies."""
    instructions = prompts.instructions if isinstance(prompts, PromptSet) else prompts
    fmt = ChatFormat(loaded.tokenizer)
    replies = generate(loaded.model, fmt, instructions, max_new_tokens=new_tokens, batch_size=batch_size, progress=progress, desc=desc)
    return refusal_rate(replies), replies


def choose_strength(
    loaded: LoadedModel,
    direction: Direction,
    method: str,
    val_harmful: PromptSet,
    val_harmless: PromptSet,
    *,
    budget: float,
    choice: WriterChoice | None = None,
    base: StrengthStep | None = None,
    batch_size: int = 32,
    progress: bool = True,
) -> StrengthSearch:
    """Walk up ``method``'s grid with the writers of ``choice`` (every writer without one),
    stopping past the budget; below the grid, halve the smallest strength while even it
    over-refuses. ``base`` gives the base model's rates when they are known already."""
    grid = get_method(method).grid

    def measure(strength: float) -> StrengthStep:
        record = apply_edit(
            loaded.model,
            direction,
            method,
            strength,
            writers=choice.writers if choice else None,
            reads=choice.reads if choice else None,
            keep_originals=True,
        )
        try:
            step = _rates(loaded, strength, val_harmful, val_harmless, batch_size)
        finally:
            revert_edit(loaded.model, record)
        _say(progress, f"rosi: {method} {strength:g}", step)
        return step

    if base is None:
        base = _rates(loaded, 0.0, val_harmful, val_harmless, batch_size)
        _say(progress, "rosi: base model", base)
    rows, best = _walk(grid, measure, base, budget)
    if best is None:
        return StrengthSearch(
            method, rows[-1].strength, f"no strength kept harmless refusal within {budget:.0%} of base; the smallest tried", tuple(rows)
        )
    how = (
        f"max refusal in {SEARCH_TOKENS}-token replies to {len(val_harmful)} harmful validation prompts with harmless refusal at most "
        f"{budget:.0%} above base on {len(val_harmless)} ({len(rows) - 1} strengths tried)"
    )
    return StrengthSearch(method, best.strength, how, tuple(rows))


def _walk(grid: tuple[float, ...], measure: Any, base: StrengthStep, budget: float) -> tuple[list[StrengthStep], StrengthStep | None]:
    """Every step measured (the base first) and the best one within the budget, if any."""
    rows = [base]
    best: StrengthStep | None = None
    for strength in grid:
        step = measure(strength)
        rows.append(step)
        if step.harmless > base.harmless + budget:
            break
        if best is None or step.harmful > best.harmful:
            best = step
    strength = grid[0]
    while best is None and len(rows) < MAX_STEPS:  # even the smallest grid strength over-refuses: go lower
        strength /= 2
        step = measure(strength)
        rows.append(step)
        best = step if step.harmless <= base.harmless + budget else None
    return rows, best


def _rates(loaded: LoadedModel, strength: float, harmful: PromptSet, harmless: PromptSet, batch_size: int) -> StrengthStep:
    kw: dict[str, Any] = {"new_tokens": SEARCH_TOKENS, "batch_size": batch_size}
    return StrengthStep(strength, refusal_rate_of(loaded, harmful, **kw)[0], refusal_rate_of(loaded, harmless, **kw)[0])


def _say(progress: bool, label: str, step: StrengthStep) -> None:
    if progress:
        print(f"{label}: refusal in {SEARCH_TOKENS}-token replies: harmful {step.harmful:.0%}, harmless {step.harmless:.0%}", flush=True)
