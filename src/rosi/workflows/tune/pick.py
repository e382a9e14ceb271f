"""Which trial to keep: the objectives, the Pareto front, the order trials are confirmed in and the
pick rule (pure functions of the trials' scores)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rosi.errors import RosiError
from rosi.metrics import PairedDifference
from rosi.workflows.options import TuneOptions

OBJECTIVES = ("harmful", "harmless_rise", "lookalike_rise", "kl")
DIRECTIONS = ("maximize", "minimize", "minimize", "minimize")


@dataclass(frozen=True)
class Scores:
    """Refusal on the three validation sets (0..1), and the mean first-token KL on harmless prompts."""

    harmful: float
    harmless: float
    lookalike: float
    kl: float
    harmful_log_odds: float | None = None
    lookalike_log_odds: float | None = None
    harmful_partial: float | None = None  # full replies only: refusal phrase, then help
    lookalike_partial: float | None = None
    # full replies only: each confirmation prompt's verdict per set, for paired comparisons
    refused: dict[str, list[bool]] | None = None


@dataclass(frozen=True)
class TrialResult:
    number: int
    params: dict[str, Any]
    cheap: Scores
    confirmed: Scores | None = None
    reference: str | None = None

    def objectives(self, base: Scores, confirmed: bool = False) -> tuple[float, float, float, float]:
        s = self.confirmed if confirmed and self.confirmed is not None else self.cheap
        return (s.harmful, s.harmless - base.harmless, s.lookalike - base.lookalike, s.kl)


def pareto_front(points: dict[int, tuple[float, ...]], directions: tuple[str, ...] = DIRECTIONS) -> list[int]:
    """The keys of the non-dominated points (each coordinate maximised or minimised)."""
    signs = [1.0 if d == "maximize" else -1.0 for d in directions]

    def better(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
        return all(s * x >= s * y for s, x, y in zip(signs, a, b, strict=True)) and any(
            s * x > s * y for s, x, y in zip(signs, a, b, strict=True)
        )

    return sorted(k for k, p in points.items() if not any(better(q, p) for j, q in points.items() if j != k))


def front(results: list[TrialResult], base: Scores) -> list[int]:
    """The trials on the cheap scores' Pareto front."""
    return pareto_front({t.number: t.objectives(base) for t in results})


def confirm_order(results: list[TrialResult], front: list[int], base: Scores, options: TuneOptions) -> list[TrialResult]:
    """The front's trials in the order they are worth confirming, on the cheap scores against
    ``base``: without a harmful floor the least violating first, then the most harmful; with one,
    those reaching it first (least violating, then least look-alike rise), as :func:`pick` takes
    them, then the rest (least violating, the floor included)."""
    by_number = {t.number: t for t in results}
    floor, _ = harmful_floor(results, options, confirmed=False)

    def rank(t: TrialResult) -> tuple[bool, float, float]:
        objectives = t.objectives(base)
        if floor is None:
            return False, violation(objectives, options), -objectives[0]
        if objectives[0] >= floor:  # those reaching the floor first, as the pick takes them
            return False, violation(objectives, options), objectives[2]
        return True, violation(objectives, options, floor), -objectives[0]

    return sorted((by_number[n] for n in front), key=rank)


def violation(objectives: tuple[float, ...], options: TuneOptions, floor: float | None = None) -> float:
    """How far a trial is outside the constraints (0: within all), the harmful ``floor`` one of them."""
    harmful, harmless, lookalike, kl = objectives
    short = 0.0 if floor is None else max(0.0, floor - harmful)
    return (
        short
        + max(0.0, harmless - options.max_harmless_rise)
        + max(0.0, lookalike - options.max_lookalike_rise)
        + max(0.0, kl - options.max_kl)
    )


def harmful_floor(results: list[TrialResult], options: TuneOptions, confirmed: bool) -> tuple[float | None, str]:
    """The harmful refusal the kept trial must reach (``options.min_harmful``: a share, or the named
    reference trial's own refusal on the same scores), and how to say it; ``None`` for no floor,
    also when the named reference is not among ``results`` (its form not searched: said so)."""
    spec = options.min_harmful
    if spec is None:
        return None, ""
    if not isinstance(spec, str):
        return float(spec), f"harmful refusal >= {spec:.0%}"
    ref = next((t for t in results if t.reference == spec), None)
    if ref is None:
        return None, f"no {spec} trial to match (its form is not searched), so no harmful floor; "
    s = ref.confirmed if confirmed and ref.confirmed is not None else ref.cheap
    return s.harmful, f"harmful refusal >= the {spec} edit's {s.harmful:.0%}"


def pick(results: list[TrialResult], base: Scores, options: TuneOptions, base_cheap: Scores | None = None) -> tuple[int, str]:
    """The confirmed trial to keep. With a harmful floor (:func:`harmful_floor`, by default rosi
    run's default edit's own refusal): of the trials reaching it, the one with the least look-alike
    rise (then harmless rise, KL) within the constraints, or the least violating one. Without a
    floor: the most harmful refusal within the constraints (ties: the lower look-alike rise, then
    KL). When none is within, the least violating one. Without
    confirmed trials (``confirm=0``) the same rule on the cheap scores (against ``base_cheap``)."""
    if not results:
        raise RosiError("no trial finished; run more trials (--trials)")
    confirmed = [t for t in results if t.confirmed is not None]
    on_confirmed = bool(confirmed)
    pool, against = (confirmed, base) if on_confirmed else (results, base_cheap or base)

    def objectives(t: TrialResult) -> tuple[float, float, float, float]:
        return t.objectives(against, on_confirmed)

    floor, floor_text = harmful_floor(pool, options, on_confirmed)
    limits = (
        f"harmless rise <= {options.max_harmless_rise:.0%}, look-alike rise <= {options.max_lookalike_rise:.0%}, KL <= {options.max_kl:g}"
    )
    scores = f"{options.measure.new_tokens}-token replies" if on_confirmed else f"{options.score} scores (no trial confirmed)"
    if floor is None:
        within = [t for t in pool if violation(objectives(t), options) == 0]
        if within:
            best = max(within, key=lambda t: (objectives(t)[0], -objectives(t)[2], -objectives(t)[3]))
            return best.number, f"{floor_text}most harmful refusal in {scores} with {limits} ({len(within)} of {len(pool)} trials within)"
        best = min(pool, key=lambda t: (violation(objectives(t), options), -objectives(t)[0]))
        return best.number, f"{floor_text}no trial met {limits} in {scores}: the least violating one"

    def gentlest(t: TrialResult) -> tuple[float, float, float, float, float]:  # least look-alike rise, then harmless rise, KL
        harmful, harmless, lookalike, kl = objectives(t)
        return violation(objectives(t), options), lookalike, harmless, kl, -harmful

    reaching = [t for t in pool if objectives(t)[0] >= floor]
    within = [t for t in reaching if violation(objectives(t), options) == 0]
    if within:
        best = min(within, key=gentlest)
        return best.number, f"least look-alike rise in {scores} with {floor_text}, {limits} ({len(within)} of {len(pool)} trials within)"
    if reaching:
        best = min(reaching, key=gentlest)
        return best.number, f"no trial with {floor_text} met {limits} in {scores}: of those with it, the least violating one"
    best = min(pool, key=lambda t: (violation(objectives(t), options, floor), -objectives(t)[0]))
    return best.number, f"no trial reached {floor_text} in {scores}: the least violating one"


GUARD_SETS = ("harmful", "harmless", "lookalike")


@dataclass(frozen=True)
class Guard:
    """A confirmed trial against a reference trial (rosi run's default edit), paired prompt by
    prompt on the confirmation prompts: each set's difference (trial minus reference) with its
    95% interval. It passes when the trial refuses fewer look-alikes with an interval that
    excludes zero, refuses at most ``margin`` fewer harmful prompts (point estimate), and its
    harmless rise's upper bound is at most ``margin``."""

    trial: int
    differences: dict[str, PairedDifference]
    margin: float

    @classmethod
    def of(cls, trial: TrialResult, reference: TrialResult, margin: float) -> Guard:
        a, b = reference.confirmed, trial.confirmed
        if a is None or b is None or a.refused is None or b.refused is None:
            raise RosiError(f"trial {trial.number} and the reference need per-prompt verdicts on the confirmation prompts")
        return cls(trial.number, {s: PairedDifference.of(a.refused[s], b.refused[s]) for s in GUARD_SETS}, margin)

    @property
    def passes(self) -> bool:
        d = self.differences
        return d["lookalike"].interval[1] < 0 and d["harmful"].difference >= -self.margin and d["harmless"].interval[1] <= self.margin

    def describe(self) -> str:
        def one(name: str) -> str:
            x = self.differences[name]
            lo, hi = x.interval
            return f"{name} {x.difference:+.1%} [{lo:+.1%}, {hi:+.1%}]"

        return ", ".join(one(s) for s in ("lookalike", "harmful", "harmless"))


def guarded_pick(results: list[TrialResult], margin: float, reference: str = "default") -> tuple[int, str, list[Guard]]:
    """The confirmed trial to keep when it beats the ``reference`` trial beyond noise (:class:`Guard`):
    of those that pass, the one with the largest look-alike drop; when none passes, the reference
    itself, said plainly. Returns the trial's number, why, and every candidate's comparison."""
    ref = next((t for t in results if t.reference == reference and t.confirmed is not None), None)
    if ref is None:
        raise RosiError(
            f"no confirmed {reference} trial to compare with; confirm at least one trial (--confirm 1 or more): the references are confirmed first"
        )
    guards = [Guard.of(t, ref, margin) for t in results if t.confirmed is not None and t.reference is None]
    passing = sorted((g for g in guards if g.passes), key=lambda g: g.differences["lookalike"].difference)
    if passing:
        best = passing[0]
        how = (
            f"refuses fewer look-alikes than the {reference} edit beyond noise, paired on the confirmation prompts "
            f"({best.describe()}; {len(passing)} of {len(guards)} confirmed trials qualified)"
        )
        return best.trial, how, guards
    how = (
        f"no confirmed trial refused fewer look-alikes than the {reference} edit beyond noise while keeping harmful refusal "
        f"within {margin:.0%} and harmless refusal's rise under {margin:.0%} ({len(guards)} compared): the {reference} edit is kept"
    )
    return ref.number, how, guards
