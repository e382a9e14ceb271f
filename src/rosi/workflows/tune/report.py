"""What a tune reports: :class:`TuneReport` (``tune_report.json``, the printed table) and the front
(``tune_front.csv``, ``tune_front.png``)."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

from rosi._version import __version__
from rosi.errors import RosiError
from rosi.workflows.options import TuneOptions
from rosi.workflows.tune.pick import DIRECTIONS, OBJECTIVES, Guard, Scores, TrialResult
from rosi.workflows.tune.space import describe

REPORT_FILE = "tune_report.json"
GUARD_REFERENCE = "default"  # the reference trial a guarded pick compares with (:func:`~rosi.workflows.tune.pick.guarded_pick`'s default)


def trial_record_path(folder: Path, number: int) -> Path:
    """Where a tune's output folder keeps trial ``number``'s edit record (``trials/trial-NNN.safetensors``)."""
    return Path(folder) / "trials" / f"trial-{number:03d}.safetensors"


@dataclass
class TuneReport:
    model: str
    options: dict[str, Any]
    direction: dict[str, str]
    base_cheap: Scores
    base_confirmed: Scores
    trials: list[TrialResult]
    front: list[int]  # trial numbers on the cheap front
    chosen: int
    chosen_by: str
    seconds: dict[str, float] = field(default_factory=dict)
    samples_mib: float = 0.0
    pruned: int = 0  # trials whose settings made no edit
    guards: list[Guard] = field(default_factory=list)  # each confirmed trial against rosi run's default, when the pick is guarded

    def trial(self, number: int) -> TrialResult:
        return next(t for t in self.trials if t.number == number)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TuneReport:
        """The inverse of :meth:`to_json` (what ``tune_report.json`` holds). The guards are
        recomputed from the trials' per-prompt verdicts against the reference they were compared
        with (rosi run's default edit), as the tune computed them."""
        trials = [
            TrialResult(
                t["number"],
                t["params"],
                Scores(**t["cheap"]),
                None if t["confirmed"] is None else Scores(**t["confirmed"]),
                t["reference"],
            )
            for t in data["trials"]
        ]
        report = cls(
            model=data["model"],
            options=data["options"],
            direction=data["direction"],
            base_cheap=Scores(**data["base"]["cheap"]),
            base_confirmed=Scores(**data["base"]["confirmed"]),
            trials=trials,
            front=list(data["front"]),
            chosen=data["chosen"],
            chosen_by=data["chosen_by"],
            seconds=dict(data.get("seconds", {})),
            samples_mib=data.get("samples_mib", 0.0),
            pruned=data.get("pruned_trials", 0),
        )
        guarded = data.get("guarded", [])
        if guarded:
            reference = next(t for t in trials if t.reference == GUARD_REFERENCE and t.confirmed is not None)
            report.guards = [Guard.of(report.trial(g["trial"]), reference, g["margin"]) for g in guarded]
        return report

    @classmethod
    def load(cls, folder: str | Path) -> TuneReport:
        """The report of a `rosi tune` output folder (its ``tune_report.json``)."""
        path = Path(folder) / REPORT_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise RosiError(f"{path}: not a rosi tune report ({e}); give a folder written by rosi tune") from None
        try:
            return cls.from_json(data)
        except (KeyError, TypeError, StopIteration) as e:
            raise RosiError(f"{path}: not a rosi tune report this rosi can read ({type(e).__name__}: {e})") from None

    def edits(self, folder: str | Path, numbers: Sequence[int] | None = None) -> list[TrialEdit]:
        """The edits of trials ``numbers`` (default: the reference trials, then the chosen one),
        each with its label ("trial 7 (default) (chosen)"), the record the tune saved in ``folder``
        and what a results row adds about it: its ``params`` and confirmed ``validation`` figures."""
        if numbers is None:
            numbers = [t.number for t in self.trials if t.reference] + [self.chosen]
        edits = []
        for number in dict.fromkeys(numbers):
            t = self.trial(number)
            label = f"trial {number}" + (f" ({t.reference})" if t.reference else "") + (" (chosen)" if number == self.chosen else "")
            validation = None if t.confirmed is None else asdict(t.confirmed)
            edits.append(TrialEdit(label, trial_record_path(Path(folder), number), {"params": t.params, "validation": validation}))
        return edits

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "rosi_version": __version__,
            "options": self.options,
            "direction": self.direction,
            "objectives": dict(zip(OBJECTIVES, DIRECTIONS, strict=True)),
            "base": {"cheap": asdict(self.base_cheap), "confirmed": asdict(self.base_confirmed)},
            "trials": [
                {
                    "number": t.number,
                    "params": t.params,
                    "reference": t.reference,
                    "cheap": asdict(t.cheap),
                    "confirmed": None if t.confirmed is None else asdict(t.confirmed),
                    "on_front": t.number in self.front,
                }
                for t in self.trials
            ],
            "front": self.front,
            "chosen": self.chosen,
            "chosen_by": self.chosen_by,
            "seconds": self.seconds,
            "samples_mib": round(self.samples_mib, 1),
            "pruned_trials": self.pruned,
            "guarded": [guard_json(g) for g in self.guards],
        }

    def table(self) -> str:
        """The confirmed trials and the base model, as aligned text (what ``rosi tune`` prints)."""
        b = self.base_confirmed
        rows = [(t, describe(t.params) + (f" ({t.reference})" if t.reference else "")) for t in self.trials if t.confirmed is not None]
        width = max([10, *(len(label) for _, label in rows)])
        lines = [f"{'':{width}} {'harmful':>8} {'harmless':>9} {'look-alike':>11} {'KL':>7}"]
        lines.append(f"{'base model':{width}} {b.harmful:>8.0%} {b.harmless:>9.0%} {b.lookalike:>11.0%} {0.0:>7.3f}")
        for t, label in rows:
            s = t.confirmed
            assert s is not None
            chosen = "  <- chosen" if t.number == self.chosen else ""
            lines.append(f"{label:{width}} {s.harmful:>8.0%} {s.harmless:>9.0%} {s.lookalike:>11.0%} {s.kl:>7.3f}{chosen}")
        return "\n".join(lines)


class TrialEdit(NamedTuple):
    """An edit to measure: its row's label, its edit record file, and what its row records about it."""

    label: str
    record: Path
    about: dict[str, Any]


def record_edits(items: Sequence[str]) -> list[TrialEdit]:
    """Edits given as ``LABEL=FILE`` (an edit record file, e.g. the one `rosi run` saved)."""
    edits = []
    for item in items:
        label, _, file = item.partition("=")
        edits.append(TrialEdit(label, Path(file), {"record": file}))
    return edits


def guard_json(guard: Guard) -> dict[str, Any]:
    """A trial's paired comparison with the default edit: each set's difference, 95% interval,
    McNemar p-value and discordant prompts, and whether it passed."""
    sets = {}
    for name, d in guard.differences.items():
        lo, hi = d.interval
        sets[name] = {
            "difference": d.difference,
            "ci95": [round(lo, 4), round(hi, 4)],
            "p": d.p_value,
            "n": d.n,
            "fewer": d.a_only,
            "more": d.b_only,
        }
    return {"trial": guard.trial, "passes": guard.passes, "margin": guard.margin, **sets}


def options_json(options: TuneOptions) -> dict[str, Any]:
    """The options as the report records them: one flat table (the parts' fields side by side)."""
    parts = ("extract", "measure", "output")
    # a judge the CLI built is recorded by its spec (asdict would deep-copy it, model and all)
    measure = {f.name: getattr(options.measure, f.name) for f in fields(options.measure)} | {"judge": options.measure.judge_spec}
    out = {k: v for part in parts for k, v in (measure if part == "measure" else asdict(getattr(options, part))).items()}
    out.update({f.name: getattr(options, f.name) for f in fields(options) if f.name not in parts})
    out = {k: v for k, v in out.items() if k not in ("form", "journal", "system_prompt")}
    out["journal"] = None if options.journal is None else str(options.journal)
    return json.loads(json.dumps(out, default=str))


def write_front(report: TuneReport, folder: Path) -> None:
    """``tune_front.csv`` (every trial) and ``tune_front.png`` (harmful against look-alike
    refusal, one colour per form, the base model and the reference trials marked)."""
    base = report.base_cheap
    with open(folder / "tune_front.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "trial",
                "settings",
                "reference",
                "on_front",
                "harmful",
                "harmless_rise",
                "lookalike_rise",
                "kl",
                "confirmed_harmful",
                "confirmed_harmless_rise",
                "confirmed_lookalike_rise",
                "confirmed_kl",
            ]
        )
        for t in report.trials:
            cheap = t.objectives(base)
            conf = t.objectives(report.base_confirmed, True) if t.confirmed is not None else ("",) * 4
            writer.writerow([t.number, describe(t.params), t.reference or "", t.number in report.front, *_round(cheap), *_round(conf)])
    _plot(report, folder / "tune_front.png")


def _round(values: tuple[Any, ...]) -> list[Any]:
    return [round(v, 4) if isinstance(v, float) else v for v in values]


def _plot(report: TuneReport, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, confirmed in zip(axes, (False, True), strict=True):
        base = report.base_confirmed if confirmed else report.base_cheap
        forms = sorted({t.params["form"] for t in report.trials})
        colours = {form: plt.get_cmap("tab10")(i) for i, form in enumerate(forms)}
        for form in forms:
            pts = [t for t in report.trials if t.params["form"] == form and (not confirmed or t.confirmed is not None)]
            xs = [x for x in ((t.confirmed if confirmed else t.cheap) for t in pts) if x is not None]
            ax.scatter([x.lookalike for x in xs], [x.harmful for x in xs], color=colours[form], label=form, alpha=0.75, s=28)
        ax.scatter([base.lookalike], [base.harmful], marker="*", s=220, color="black", label="base model", zorder=5)
        for t in report.trials:
            point = t.confirmed if confirmed else t.cheap
            if point is not None and (t.reference or t.number == report.chosen):
                label = t.reference or "chosen"
                ax.scatter([point.lookalike], [point.harmful], facecolors="none", edgecolors="black", s=160, linewidths=1.5, zorder=6)
                ax.annotate(label, (point.lookalike, point.harmful), textcoords="offset points", xytext=(6, -10), fontsize=8)
        ax.set_xlabel("look-alike refusal (validation)")
        ax.set_ylabel("harmful refusal (validation)")
        ax.set_title("confirmed, full replies" if confirmed else f"all trials, {report.options.get('score')} scores")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
