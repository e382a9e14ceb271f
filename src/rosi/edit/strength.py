"""How strongly to edit: a search up the method's grid on validation prompts.

The strength kept is the one with the most refusals on harmful validation prompts while refusals
on harmless ones rise by at most ``budget`` over the base model, measured by a
:class:`~rosi.measure.RefusalMeter` (any judge; the marker judge by default) on short greedy
replies (:data:`SEARCH_TOKENS` tokens: enough for "I'm sorry" or "I can't", at little more than
the cost of one forward pass over the prompts).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from rosi.direction.vector import Direction
from rosi.edit.apply import apply_edit, revert_edit
from rosi.edit.methods import EditForm, Method, method_of
from rosi.edit.scope import WriterChoice
from rosi.judges import SEARCH_TOKENS
from rosi.measure import RefusalMeter
from rosi.prompts import PromptSet

MAX_STEPS = 14  # strengths tried at most, halving below the grid, doubling above it and bisection included
MAX_DOUBLINGS = 4  # past the top of the grid while harmful refusal still rises: at most this many doublings
DOUBLING_GAIN = 0.05  # a doubled strength is kept only where it refuses at least this much more (not one prompt's noise)


@dataclass(frozen=True)
class StrengthStep:
    """Refusal rates (0..1) on the validation prompts at one strength (0: the base model)."""

    strength: float
    harmful: float | None  # None: not measured (harmless refusal was already over the budget)
    harmless: float


@dataclass(frozen=True)
class StrengthSearch:
    method: str
    strength: float
    chosen_by: str
    rows: tuple[StrengthStep, ...] = ()
    stopped_by: str = ""  # what ended the walk up: "budget", "complete", "no gain" or "step limit" (:func:`stop_reason`)

    @property
    def base(self) -> StrengthStep | None:
        """The base model's rates (the first row), when the search measured them."""
        return self.rows[0] if self.rows else None

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "strength": self.strength,
            "chosen_by": self.chosen_by,
            "stopped_by": self.stopped_by,
            "rows": [asdict(r) for r in self.rows],
        }


def choose_strength(
    meter: RefusalMeter,
    direction: Direction,
    form: Method | EditForm | str,
    val_harmful: PromptSet,
    val_harmless: PromptSet,
    *,
    budget: float,
    choice: WriterChoice | None = None,
    base: StrengthStep | None = None,
    progress: bool = True,
    grid: tuple[float, ...] | None = None,
    bisect: int = 0,
) -> StrengthSearch:
    """Walk up ``grid`` (default: the form's method's own) with the writers of ``choice`` (every
    writer without one), stopping past the budget; below the grid, halve the smallest strength
    while even it over-refuses; then try ``bisect`` midpoints between the best strength and the
    next one tried above it (a coarse grid's step can jump over the best strength).
    ``base`` gives the base model's rates when they are known already; ``meter`` measures the
    model it was made for, as it is while each strength is applied."""
    spec = method_of(form)
    grid = grid or spec.grid
    if base is None:
        base = _rates(meter, 0.0, val_harmful, val_harmless, limit=None)
        _say(progress, "rosi: base model", base)
    limit = base.harmless + budget

    def measure(strength: float) -> StrengthStep:
        record = apply_edit(
            meter.loaded.model,
            direction,
            spec,
            strength,
            writers=choice.writers if choice else None,
            reads=choice.reads if choice else None,
            second=choice.second if choice else None,
            keep_originals=True,
        )
        try:
            step = _rates(meter, strength, val_harmful, val_harmless, limit=limit)
        finally:
            revert_edit(meter.loaded.model, record)
        _say(progress, f"rosi: {spec.name} {strength:g}", step)
        return step

    rows, best = walk_grid(grid, measure, base, limit, bisect=bisect)
    stopped = stop_reason(rows, best)
    if best is None:
        return StrengthSearch(
            spec.name,
            rows[-1].strength,
            f"no strength kept harmless refusal within {budget:.0%} of base; the smallest tried",
            tuple(rows),
            stopped,
        )
    how = (
        f"max refusal in {SEARCH_TOKENS}-token replies to {len(val_harmful)} harmful validation prompts with harmless refusal at most "
        f"{budget:.0%} above base on {len(val_harmless)} ({len(rows) - 1} strengths tried; stopped by {STOPS[stopped]})"
    )
    return StrengthSearch(spec.name, best.strength, how, tuple(rows), stopped)


STOPS = {
    "budget": "the harmless budget",
    "complete": "complete harmful refusal",
    "no gain": "a stronger edit refusing no more harmful prompts",
    "step limit": "the step limit, harmful refusal still rising",
}


def stop_reason(rows: list[StrengthStep], best: StrengthStep | None) -> str:
    """What ended a walk (:func:`walk_grid`'s rows): a step past the harmless limit
    (``budget``), complete harmful refusal (``complete``), a stronger step refusing no more
    harmful prompts than the best (``no gain``), else the step limit with refusal still rising."""
    if any(r.harmful is None for r in rows[1:]):
        return "budget"
    if best is not None and (best.harmful or 0.0) >= 1.0:
        return "complete"
    if best is not None and any(r.strength > best.strength for r in rows[1:]):
        return "no gain"
    return "step limit"


def walk_grid(
    grid: tuple[float, ...], measure: Callable[[float], StrengthStep], base: StrengthStep, limit: float, *, bisect: int = 0
) -> tuple[list[StrengthStep], StrengthStep | None]:
    """Every step measured (the base first) and the best one with harmless refusal at most
    ``limit``, if any. The walk stops past the limit, and where harmful refusal is complete (no
    stronger edit can refuse more). Where the grid ends with harmful refusal still rising at its
    top, the walk goes on doubling the strength (at most :data:`MAX_DOUBLINGS` times) until the
    budget, complete refusal or a step that does not refuse :data:`DOUBLING_GAIN` more stops it:
    the evidence ends the search, not the grid. Then, while harmful refusal is incomplete, up to ``bisect``
    midpoints between the best strength and the next one measured above it (past the limit, or
    within it and refusing fewer harmful prompts): a midpoint that refuses more becomes the best,
    else the upper end."""
    rows = [base]
    best: StrengthStep | None = None
    for strength in grid:
        step = measure(strength)
        rows.append(step)
        if step.harmful is None:  # over the limit
            break
        if best is None or step.harmful > (best.harmful or 0.0):
            best = step
        if step.harmful >= 1.0:
            break
    strength = grid[-1]
    for _ in range(MAX_DOUBLINGS):  # the grid ended while harmful refusal still rose at its top: go higher
        if best is None or best is not rows[-1] or (best.harmful or 0.0) >= 1.0 or len(rows) >= MAX_STEPS:
            break
        strength *= 2
        step = measure(strength)
        rows.append(step)
        if step.harmful is not None and step.harmful >= (best.harmful or 0.0) + DOUBLING_GAIN:
            best = step
    strength = grid[0]
    while best is None and len(rows) < MAX_STEPS:  # even the smallest grid strength over-refuses: go lower
        strength /= 2
        step = measure(strength)
        rows.append(step)
        best = step if step.harmful is not None else None
    for _ in range(bisect):  # the best strength stays the lower end; the next one measured above it the upper
        if best is None or (best.harmful or 0.0) >= 1.0 or len(rows) >= MAX_STEPS:
            break
        above = [r.strength for r in rows[1:] if r.strength > best.strength]
        if not above:  # the grid ended at the best strength: nothing to bisect
            break
        step = measure((best.strength + min(above)) / 2)
        rows.append(step)
        if step.harmful is not None and step.harmful > (best.harmful or 0.0):
            best = step
    return rows, best


def _rates(meter: RefusalMeter, strength: float, harmful: PromptSet, harmless: PromptSet, *, limit: float | None) -> StrengthStep:
    """Harmless refusal first: past ``limit`` the harmful prompts are not worth generating for."""
    harmless_rate = meter.rate(harmless, SEARCH_TOKENS).value
    if limit is not None and harmless_rate > limit:
        return StrengthStep(strength, None, harmless_rate)
    return StrengthStep(strength, meter.rate(harmful, SEARCH_TOKENS).value, harmless_rate)


def _say(progress: bool, label: str, step: StrengthStep) -> None:
    if not progress:
        return
    harmful = "not measured (harmless over the budget)" if step.harmful is None else f"{step.harmful:.0%}"
    print(f"{label}: refusal in {SEARCH_TOKENS}-token replies: harmful {harmful}, harmless {step.harmless:.0%}", flush=True)
