"""What several tunes' reports say together, read back with :meth:`TuneReport.load`: how well each
cheap score ranks the confirmed trials as their full replies do (Spearman, per figure), and how
stable the pick is across seeds."""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass
from typing import Any

from rosi.errors import RosiError
from rosi.metrics import spearman
from rosi.workflows.tune.pick import TrialResult
from rosi.workflows.tune.report import TuneReport

# each confirmed figure, and the cheap scores that could predict it (higher score, more refusal / more change)
PREDICTORS = {
    "harmful": ("harmful", "harmful_log_odds"),
    "harmless": ("harmless", "kl"),
    "lookalike": ("lookalike", "lookalike_log_odds"),
    "kl": ("kl",),
}
FIGURES = ("harmful", "harmless", "lookalike", "kl")


def confirmed(report: TuneReport) -> list[TrialResult]:
    """The trials of a tune that were confirmed (full replies beside their cheap scores)."""
    return [t for t in report.trials if t.confirmed is not None]


def rho_text(rho: float | None) -> str:
    """A rank correlation as printed: signed, two decimals, a dash where none could be measured."""
    return "–" if rho is None else f"{rho:+.2f}"


def correlations(trials: list[TrialResult]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per confirmed figure and cheap score (:data:`PREDICTORS`): Spearman's rank correlation over
    the confirmed ``trials`` that have both, as ``{"spearman": rho, "n": n}`` (rho None where it
    cannot be measured)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for figure, scores in PREDICTORS.items():
        out[figure] = {}
        for score in scores:
            pairs = [
                (float(getattr(t.cheap, score)), float(getattr(t.confirmed, figure)))
                for t in trials
                if isinstance(getattr(t.cheap, score), (int, float)) and isinstance(getattr(t.confirmed, figure, None), (int, float))
            ]
            out[figure][score] = {"spearman": spearman([p[0] for p in pairs], [p[1] for p in pairs]), "n": len(pairs)}
    return out


def best(pooled: dict[str, dict[str, dict[str, Any]]]) -> dict[str, str | None]:
    """Per figure, the cheap score with the highest correlation (None where none could be measured)."""
    out: dict[str, str | None] = {}
    for figure, scores in pooled.items():
        known = {s: float(v["spearman"]) for s, v in scores.items() if v["spearman"] is not None}
        out[figure] = max(known, key=lambda s: known[s]) if known else None
    return out


@dataclass(frozen=True)
class Pick:
    """One tune's pick: its seed, the chosen trial's form, layer and settings, its confirmed
    figures (the cheap ones when it was not confirmed), why it was chosen and the tune's time."""

    folder: str
    seed: int | None
    form: str
    layer: int
    reference: str | None
    params: dict[str, Any]
    figures: dict[str, float]
    chosen_by: str
    seconds: float

    @classmethod
    def of(cls, report: TuneReport, folder: str) -> Pick:
        chosen = report.trial(report.chosen)
        scores = chosen.confirmed or chosen.cheap
        return cls(
            folder,
            report.options.get("seed"),
            chosen.params["form"],
            chosen.params["layer"],
            chosen.reference,
            chosen.params,
            {k: getattr(scores, k) for k in FIGURES},
            report.chosen_by,
            round(sum(float(v) for v in report.seconds.values()), 1),  # the tune's phases, as it timed them
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "folder": self.folder,
            "seed": self.seed,
            "form": self.form,
            "layer": self.layer,
            "reference": self.reference,
            "params": self.params,
            "figures": self.figures,
            "chosen_by": self.chosen_by,
            "seconds": self.seconds,
        }


def stability(picks: list[Pick]) -> dict[str, Any]:
    """The most common (form, layer) and form, how many tunes picked each, and each figure's
    mean, smallest and largest value over the picks."""
    if not picks:
        raise RosiError("give at least one rosi tune output folder")
    pairs = Counter((p.form, p.layer) for p in picks)
    forms = Counter(p.form for p in picks)
    (form, layer), same = pairs.most_common(1)[0]
    spread = {}
    for k in FIGURES:
        values = [float(p.figures[k]) for p in picks]
        spread[k] = {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}
    return {
        "tunes": len(picks),
        "most_common": {"form": form, "layer": layer, "tunes": same},
        "forms": dict(forms),
        "same_form_and_layer": same / len(picks),
        "same_form": forms.most_common(1)[0][1] / len(picks),
        "spread": spread,
        "seconds": {"mean": statistics.fmean(p.seconds for p in picks), "max": max(p.seconds for p in picks)},
    }
