"""ROSI end to end: :func:`~rosi.workflows.extract.extract` the direction, then :func:`run`
chooses the writers and the strength, injects, measures and saves.

The stages live in their folders (:mod:`rosi.direction`, :mod:`rosi.edit`, :mod:`rosi.measure`,
:mod:`rosi.export`); this module only sequences them and writes what they return.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rosi._fs import atomic_file
from rosi.direction.vector import Direction
from rosi.edit.apply import apply_edit, check_strength, revert_edit
from rosi.edit.methods import METHODS, EditForm
from rosi.edit.record import EditRecord
from rosi.edit.scope import WriterChoice, WriterSignal
from rosi.edit.strength import SEARCH_TOKENS, StrengthSearch, StrengthStep, choose_strength
from rosi.errors import RosiError
from rosi.export.checkpoint import input_paths
from rosi.export.formats import FORMATS, Edited, check_format_output, check_format_source, save
from rosi.measure import RefusalMeter, RefusalRate, judge_of
from rosi.model.chat import ChatFormat
from rosi.model.context import check_fits
from rosi.model.costs import Phase, PhaseClock, phase_table
from rosi.model.loading import LoadedModel
from rosi.prompts import PromptSets
from rosi.workflows.extract import Extraction, extract
from rosi.workflows.options import ExtractOptions, RunOptions

REPORT_FILE = "rosi_report.json"  # what run and realign write beside the edit
PAPER_METHOD = METHODS["rosi"]  # the comparison row: the paper's form on every writer


@dataclass(frozen=True)
class Rates:
    """Refusal on the validation prompts, for one model: per set (``harmful``, ``harmless``, and
    ``lookalike`` where measured) the meter's :class:`~rosi.measure.RefusalRate`."""

    label: str
    measured: dict[str, RefusalRate]

    @property
    def harmful(self) -> float:
        return self.measured["harmful"].value

    @property
    def harmless(self) -> float:
        return self.measured["harmless"].value

    @property
    def n_harmful(self) -> int:
        return self.measured["harmful"].n

    @property
    def n_harmless(self) -> int:
        return self.measured["harmless"].n

    @property
    def lookalike(self) -> RefusalRate | None:
        """Refusal of the look-alike validation prompts (safe requests that sound harmful), where measured."""
        return self.measured.get("lookalike")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"label": self.label}
        for role, rate in self.measured.items():
            out[role], out[f"n_{role}"] = rate.value, rate.n
        out["verdicts"] = {role: rate.to_json() for role, rate in self.measured.items()}
        return out


@dataclass(frozen=True)
class RunReport:
    model: str
    method: str
    strength: float
    direction: dict[str, str]
    writers: dict[str, WriterChoice]
    rates: list[Rates]
    strength_searches: list[StrengthSearch]
    selection_cost: dict[str, Any] | None
    seconds: dict[str, float]
    new_tokens: int
    phases: list[Phase] = field(default_factory=list)  # seconds, passes, tokens and the peak memory so far per phase

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "method": self.method,
            "strength": self.strength,
            "direction": self.direction,
            "writers": {m: c.to_json() for m, c in self.writers.items()},
            "rates": [r.to_json() for r in self.rates],
            "strength_searches": [s.to_json() for s in self.strength_searches],
            "selection_cost": self.selection_cost,
            "seconds": self.seconds,
            "new_tokens": self.new_tokens,
            "phases": [p.to_json() for p in self.phases],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunReport:
        """The inverse of :meth:`to_json` (what ``rosi_report.json`` holds, for ``rosi run`` and
        ``rosi realign``). The JSON keeps each rate's share of partial replies, not which replies
        were partial: they come back as that many partial verdicts, in no particular order."""
        return cls(
            model=data["model"],
            method=data["method"],
            strength=data["strength"],
            direction=data["direction"],
            writers={m: _writer_choice(c) for m, c in data["writers"].items()},
            rates=[Rates(r["label"], {role: _refusal_rate(v) for role, v in r["verdicts"].items()}) for r in data["rates"]],
            strength_searches=[
                StrengthSearch(s["method"], s["strength"], s["chosen_by"], tuple(StrengthStep(**row) for row in s["rows"]), s["stopped_by"])
                for s in data["strength_searches"]
            ],
            selection_cost=data["selection_cost"],
            seconds=data["seconds"],
            new_tokens=data["new_tokens"],
            phases=[Phase.from_json(p) for p in data.get("phases", [])],
        )

    @classmethod
    def load(cls, folder: str | Path) -> RunReport:
        """The report of a `rosi run` or `rosi realign` output folder (its ``rosi_report.json``)."""
        path = Path(folder) / REPORT_FILE
        try:
            return cls.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise RosiError(f"{path}: not a rosi run report this rosi can read ({type(e).__name__}: {e})") from None

    @property
    def search(self) -> dict[str, StrengthSearch]:
        """Each strength search by the method it searched."""
        return {s.method: s for s in self.strength_searches}

    def phase_table(self) -> str:
        return phase_table(self.phases)

    def table(self) -> str:
        looks = all(r.lookalike is not None for r in self.rates)
        lines = [f"{'':44} {'harmful refused':>16} {'harmless refused':>17}" + (f" {'look-alikes refused':>20}" if looks else "")]
        for r in self.rates:
            line = f"{r.label:44} {r.harmful:>9.0%} (n={r.n_harmful:<3}) {r.harmless:>9.0%} (n={r.n_harmless:<3})"
            if looks and r.lookalike is not None:
                line += f" {r.lookalike.value:>12.0%} (n={r.lookalike.n:<3})"
            lines.append(line)
        if looks:
            lines.append("look-alikes: safe requests that only sound harmful (over-refusal); lower is better")
        return "\n".join(lines)


def _writer_choice(data: Mapping[str, Any]) -> WriterChoice:
    signals = tuple(WriterSignal(s["name"], s["layer"], s["harmful"], s["harmless"]) for s in data["signals"])
    return WriterChoice(data["scope"], data["ratio"], data["writers"], signals, data["note"])


def _refusal_rate(data: Mapping[str, Any]) -> RefusalRate:
    refused = tuple(data["refused"])
    share, n = data["partial"], len(refused)
    partial = None if share is None else tuple(i < round(share * n) for i in range(n))
    return RefusalRate(refused, partial, data["judge"], data["new_tokens"])


def run(
    loaded: LoadedModel,
    out: str | Path,
    prompts: PromptSets,
    options: RunOptions | None = None,
    extractor: Callable[[], Extraction] | None = None,
) -> RunReport:
    """Extract, select, inject and measure; save the edited checkpoint with its report to ``out``.
    ``extractor`` finds the direction another way than :func:`extract` (as :func:`realign` does)."""
    options = options or RunOptions()
    if not options.extract.form.spec.searchable:
        raise RosiError(f"rosi run supports the methods with a strength search, not {options.extract.form.method!r}")
    if options.strength.strength is not None:
        check_strength(options.extract.form, options.strength.strength)
    out = Path(out)
    check_format_output(out, options.output.format, options.output.overwrite, protect=input_paths(loaded.source))
    method = options.extract.form.method
    check_format_source(options.output.format, loaded.source.spec, [method], gguf_type=options.output.gguf_type)
    meter = RefusalMeter(
        loaded, judge_of(options.measure.judge), batch_size=options.measure.generation_batch, progress=options.extract.progress
    )
    check_prompts_fit(loaded, prompts, options.extract.system_prompt, options.measure.new_tokens)
    clock = PhaseClock()
    extraction = extractor() if extractor is not None else extract(loaded, prompts, options.extract)
    clock.done("extract_and_select")
    direction = extraction.direction
    _say(options.extract, f"rosi: direction at layer {direction.layer}, position {direction.position} ({direction.metadata['token']!r})")
    paper = EditForm(PAPER_METHOD.name, "all")
    forms = [options.extract.form] + ([paper] if options.strength.compare_paper and options.extract.form.spec is not PAPER_METHOD else [])
    choices = {f.method: extraction.choose_writers(loaded, f) for f in forms}
    chosen = choices[options.extract.form.method]
    if chosen.writers is not None:
        _say(options.extract, f"rosi: {options.extract.form.method} edits {len(chosen.writers)} writers ({chosen.note})")
    base_rates, base_step = _base(meter, prompts, options)
    clock.done("base_model")
    searches = _search_strengths(meter, direction, forms, choices, prompts, options, base_step)
    strengths = {s.method: s.strength for s in searches}
    clock.done("strength_search")
    rates, record = _measure(meter, direction, forms, choices, strengths, prompts, options, base_rates)
    clock.done("evaluation")
    report = RunReport(
        model=loaded.source.spec,
        method=options.extract.form.method,
        strength=strengths[options.extract.form.method],
        direction=direction.info(),
        writers=choices,
        rates=rates,
        strength_searches=searches,
        selection_cost=extraction.selection.cost.to_json() if extraction.selection else None,
        seconds={p.name: p.seconds for p in clock.phases},
        new_tokens=options.measure.new_tokens,
        phases=list(clock.phases),
    )
    _save(loaded, out, record, report, extraction, options)
    report.phases.append(clock.done("save"))
    return report


def check_prompts_fit(loaded: LoadedModel, prompts: PromptSets, system_prompt: str | None, new_tokens: int) -> None:
    """Every prompt of ``prompts`` fits ``loaded``'s context, checked before any forward pass
    (:func:`~rosi.model.context.check_fits`): each set as extraction and selection format it
    (under ``system_prompt``), the validation sets also with a ``new_tokens``-token reply."""
    formats = [ChatFormat(loaded.tokenizer, system_prompt)]
    formats += [ChatFormat(loaded.tokenizer)] if system_prompt else []
    sets = [(s, 0) for s in (prompts.harmful, prompts.harmless, prompts.lookalike)]
    sets += [(s, new_tokens) for s in (prompts.val_harmful, prompts.val_harmless, prompts.val_lookalike)]
    for found, reply in sets:
        if found is None:
            continue
        for fmt in formats:
            n = reply if fmt.system_prompt is None else 0
            check_fits(loaded.model, fmt, found.instructions, new_tokens=n, what=f"prompt set {found.name!r}", name=loaded.source.spec)


def _base(meter: RefusalMeter, prompts: PromptSets, options: RunOptions) -> tuple[Rates, StrengthStep]:
    """The base model's replies, generated once: its measured rates, and (from their first tokens)
    its rates in the strength search."""
    n = options.measure.new_tokens
    found = meter.rates_of(prompts.validation_sets(), (n, SEARCH_TOKENS), desc="rosi: base model")
    rates = Rates("base model", {role: at[n] for role, at in found.items()})
    step = StrengthStep(0.0, found["harmful"][SEARCH_TOKENS].value, found["harmless"][SEARCH_TOKENS].value)
    _say(
        options.extract,
        f"rosi: base model: refusal in {SEARCH_TOKENS}-token replies: harmful {step.harmful:.0%}, harmless {step.harmless:.0%}",
    )
    return rates, step


def _search_strengths(
    meter: RefusalMeter,
    direction: Direction,
    forms: list[EditForm],
    choices: dict[str, WriterChoice],
    prompts: PromptSets,
    options: RunOptions,
    base: StrengthStep,
) -> list[StrengthSearch]:
    """The chosen form's strength (given, or searched) and the comparison's, from the same base
    (``forms``: the chosen form first; ``choices``: their writers, by method name)."""
    searches = []
    for form in forms:
        chosen = form is options.extract.form
        if chosen and options.strength.strength is not None:
            searches.append(StrengthSearch(form.method, options.strength.strength, "given"))
            continue
        search = choose_strength(
            meter,
            direction,
            form,
            prompts.val_harmful,
            prompts.val_harmless,
            budget=options.strength.budget,
            choice=choices[form.method],
            base=base,
            progress=options.extract.progress,
            grid=options.strength.grid if chosen else None,
            bisect=options.strength.bisect if chosen else 0,
        )
        searches.append(search)
    return searches


def _measure(
    meter: RefusalMeter,
    direction: Direction,
    forms: list[EditForm],
    choices: dict[str, WriterChoice],
    strengths: dict[str, float],
    prompts: PromptSets,
    options: RunOptions,
    base: Rates,
) -> tuple[list[Rates], EditRecord]:
    """Refusal on the validation prompts: the base model (measured before), the chosen edit and
    the comparison. The chosen edit is applied last and stays applied; its record is returned."""
    rates = [base]
    record = None
    for form in reversed(forms):  # the chosen form last, so that it stays applied
        method, choice = form.method, choices[form.method]
        paper = form is not options.extract.form
        record = apply_edit(
            meter.loaded.model,
            direction,
            form,
            strengths[method],
            writers=choice.writers,
            reads=choice.reads,
            second=choice.second,
            keep_originals=paper,
        )
        label = f"{method} {form.spec.symbol}={strengths[method]:g}, {len(record.matrices)} writers" + (" (paper's form)" if paper else "")
        rates.insert(1, _rates(meter, label, prompts, options))
        if paper:
            revert_edit(meter.loaded.model, record)
    assert record is not None  # choices holds at least the chosen method
    return rates, record


def _rates(meter: RefusalMeter, label: str, prompts: PromptSets, options: RunOptions) -> Rates:
    n = options.measure.new_tokens
    found = meter.rates_of(prompts.validation_sets(), (n,), desc=f"rosi: {label}")
    return Rates(label, {role: at[n] for role, at in found.items()})


def _save(loaded: LoadedModel, out: Path, record: EditRecord, report: RunReport, extraction: Extraction, options: RunOptions) -> None:
    def extras(folder: Path) -> None:
        extraction.direction.save(folder / "direction.safetensors")
        (folder / REPORT_FILE).write_text(json.dumps(report.to_json(), indent=2) + "\n")
        if extraction.selection is not None:
            (folder / "direction_scores.json").write_text(json.dumps(extraction.selection.table(), indent=2) + "\n")

    edited = Edited(loaded, record, {"report": "rosi_report.json"}, extras, [r.to_json() for r in report.rates], options.output.gguf_type)
    save(edited, out, options.output.format, options.output.overwrite)
    if FORMATS[options.output.format].kind == "file":  # a single file: the report goes beside it
        with atomic_file(out.with_name(out.name + ".report.json")) as tmp:
            tmp.write_text(json.dumps(report.to_json(), indent=2) + "\n")


def _say(options: ExtractOptions, message: str) -> None:
    if options.progress:
        print(message, flush=True)
