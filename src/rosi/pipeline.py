"""ROSI end to end: :func:`extract` the direction, then :func:`run` chooses the writers and the
strength, injects, measures and saves.

The stages live in their folders (:mod:`rosi.direction`, :mod:`rosi.edit`); this module only
sequences them and writes what they return.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rosi import __version__
from rosi._fs import atomic_file
from rosi.direction.activations import ActivationPair, PromptSamples, collect_activations, collect_samples
from rosi.direction.selection import Selection, select_direction
from rosi.direction.vector import Direction
from rosi.edit.apply import apply_edit, check_strength, revert_edit
from rosi.edit.checkpoint import input_paths
from rosi.edit.methods import EditForm, get_method
from rosi.edit.record import EditRecord
from rosi.edit.scope import WriterChoice, choose_writers, probe_layer_range, probe_writers
from rosi.edit.strength import SEARCH_TOKENS, StrengthSearch, StrengthStep, base_step, choose_strength, refusal_rate_of
from rosi.edit.trial import EditTrial
from rosi.errors import RosiError
from rosi.export.formats import FORMATS, Edited, check_format_output, save
from rosi.judges.markers import refusal_rate
from rosi.model.chat import ChatFormat
from rosi.model.generation import generate_ids
from rosi.model.loading import LoadedModel
from rosi.model.meter import Phase, PhaseClock, phase_table
from rosi.options import ExtractOptions, RunOptions
from rosi.prompts import PromptSets

PAPER_METHOD = "rosi"  # the comparison row: the paper's form on every writer


@dataclass(frozen=True)
class Extraction:
    direction: Direction
    selection: Selection | None  # None when the layer and position were pinned
    seconds: float
    # Mean activations of both extraction sets (layers, and the measurable writers' outputs and,
    # for read-out methods, inputs), for choosing which writers to edit.
    activations: ActivationPair
    # Single prompts at the direction's position, for methods fit on them (gate, surgical).
    samples: PromptSamples | None = None

    def choose_writers(self, loaded: LoadedModel, form: EditForm) -> WriterChoice:
        """The writers ``form`` edits for this direction."""
        return choose_writers(loaded.model, loaded.architecture, self.direction, self.activations, form, self.samples)


def extract(loaded: LoadedModel, prompts: PromptSets, options: ExtractOptions | None = None) -> Extraction:
    """Difference of means at every (layer, post-instruction position) of the extraction prompts;
    select one on the validation prompts, or take the pinned ``options.layer``/``position``.

    With a system prompt the candidates are read with it in front of both sets. Selection scores
    them, and the writers are measured, with it too when ``options.score_with_system_prompt``,
    otherwise without it (in a second pass over the extraction prompts)."""
    options = options or ExtractOptions()
    started = time.perf_counter()
    fmt = ChatFormat(loaded.tokenizer, options.system_prompt)
    plain = fmt if options.score_with_system_prompt or not options.system_prompt else ChatFormat(loaded.tokenizer)
    n_pos = len(fmt.post_instruction_ids())
    _check_pin(loaded, options, n_pos)
    if plain is fmt:
        activations = candidates = extraction_activations(loaded, fmt, prompts, n_pos, options)
    else:
        candidates = extraction_activations(loaded, fmt, prompts, n_pos, options, writers=False)
        activations = extraction_activations(loaded, plain, prompts, n_pos, options)
    selection = None
    layer, position = options.layer, options.position
    if layer is None or position is None:
        trial = EditTrial(loaded.model, loaded.architecture, activations, options.form)
        selection = select_direction(
            loaded.model,
            plain,
            candidates.differences(),
            prompts.val_harmful.instructions,
            prompts.val_harmless.instructions,
            trial=trial,
            batch_size=options.batch_size,
            progress=options.progress,
        )
        layer, position = selection.layer, selection.position
    selected_by = "pinned" if selection is None else selection.selected_by
    metadata = direction_metadata(loaded, prompts, fmt, position, selected_by, options.system_prompt)
    if options.system_prompt:
        metadata["scored_with_system_prompt"] = str(plain is fmt).lower()
    direction = Direction(
        candidates.direction_at(layer, position), layer=layer, position=position, model=loaded.source.spec, metadata=metadata
    )
    samples = None
    if options.form.spec.samples:
        samples = prompt_samples(loaded, plain, prompts, position, options.form.scope, options)
    return Extraction(direction, selection, round(time.perf_counter() - started, 2), activations, samples)


def prompt_samples(
    loaded: LoadedModel, fmt: ChatFormat, prompts: PromptSets, position: int, scope: str, options: ExtractOptions
) -> PromptSamples:
    """Single prompts' activations at ``position`` for the methods fit on them: the extraction
    sets and the look-alike prompts, with the inputs of the writers ``scope`` edits (the middle
    layers', or all)."""
    lookalike, _ = prompts.need_lookalikes(f"method {options.form.method!r}")
    arch = loaded.architecture
    modules = arch.measurable_modules(loaded.model)
    if scope != "all":
        keep = set(probe_writers(arch.select(), probe_layer_range(arch.num_layers)))
        modules = {name: m for name, m in modules.items() if name in keep}
    sets = {"harmful": prompts.harmful.instructions, "harmless": prompts.harmless.instructions, "lookalike": lookalike.instructions}
    samples = collect_samples(loaded.model, fmt, sets, position, modules, batch_size=options.batch_size, progress=options.progress)
    _say(
        options,
        f"rosi: kept {sum(len(v) for v in sets.values())} prompts' activations at {len(modules)} writers ({samples.nbytes() / 2**20:.0f} MiB)",
    )
    return samples


def _check_pin(loaded: LoadedModel, options: ExtractOptions, n_pos: int) -> None:
    if get_method(options.form.method).effect_strength is None:
        raise RosiError(f"rosi selects directions for the methods rosi run offers, not {options.form.method!r}")
    n_layers = loaded.architecture.num_layers
    if options.layer is not None and not 0 <= options.layer < n_layers:
        raise RosiError(f"--layer {options.layer} is out of range: the model has layers 0..{n_layers - 1}")
    if options.position is not None and not -n_pos <= options.position < 0:
        raise RosiError(f"--position {options.position} is out of range: post-instruction positions are -{n_pos}..-1")


def extraction_activations(
    loaded: LoadedModel, fmt: ChatFormat, prompts: PromptSets, n_pos: int, options: ExtractOptions, writers: bool = True
) -> ActivationPair:
    """Both extraction sets' means: every layer, and (with ``writers``) the measurable writers
    (their inputs too for read-out methods)."""
    modules = loaded.architecture.measurable_modules(loaded.model) if writers else {}
    read_inputs = writers and options.form.spec.needs_reads
    kw: dict[str, Any] = {"writers": modules, "read_inputs": read_inputs, "batch_size": options.batch_size, "progress": options.progress}
    return ActivationPair(
        collect_activations(loaded.model, fmt, prompts.harmful.instructions, n_pos, desc="rosi: harmful activations", **kw),
        collect_activations(loaded.model, fmt, prompts.harmless.instructions, n_pos, desc="rosi: harmless activations", **kw),
    )


def direction_metadata(
    loaded: LoadedModel, prompts: PromptSets, fmt: ChatFormat, position: int, selected_by: str, system_prompt: str | None
) -> dict[str, str]:
    """What a direction file records of its extraction (counts, sets, token, how it was chosen)."""
    metadata = {
        "n_harmful": str(len(prompts.harmful)),
        "n_harmless": str(len(prompts.harmless)),
        "harmful": prompts.harmful.name,
        "harmless": prompts.harmless.name,
        "token": loaded.tokenizer.decode([fmt.post_instruction_ids()[position]]),
        "selected_by": selected_by,
        "rosi_version": __version__,
    }
    if system_prompt:
        metadata["system_prompt"] = system_prompt
    return metadata


@dataclass(frozen=True)
class Rates:
    """Refusal on the validation prompts (marker judge on greedy replies), for one model."""

    label: str
    harmful: float
    harmless: float
    n_harmful: int
    n_harmless: int


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
    phases: list[Phase] = field(default_factory=list)  # seconds, passes, tokens and peak memory per phase

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "method": self.method,
            "strength": self.strength,
            "direction": self.direction,
            "writers": {m: c.to_json() for m, c in self.writers.items()},
            "rates": [asdict(r) for r in self.rates],
            "strength_searches": [s.to_json() for s in self.strength_searches],
            "selection_cost": self.selection_cost,
            "seconds": self.seconds,
            "new_tokens": self.new_tokens,
            "phases": [p.to_json() for p in self.phases],
        }

    def phase_table(self) -> str:
        return phase_table(self.phases)

    def table(self) -> str:
        lines = [f"{'':44} {'harmful refused':>16} {'harmless refused':>17}"]
        for r in self.rates:
            lines.append(f"{r.label:44} {r.harmful:>9.0%} (n={r.n_harmful:<3}) {r.harmless:>9.0%} (n={r.n_harmless:<3})")
        return "\n".join(lines)


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
    if not options.form.spec.searchable:
        raise RosiError(f"rosi run supports the methods with a strength search, not {options.form.method!r}")
    if options.strength is not None:
        check_strength(options.form.method, options.strength)
    out = Path(out)
    check_format_output(out, options.format, options.overwrite, protect=input_paths(loaded.source))
    clock = PhaseClock()
    extraction = extractor() if extractor is not None else extract(loaded, prompts, options)
    clock.done("extract_and_select")
    direction = extraction.direction
    _say(options, f"rosi: direction at layer {direction.layer}, position {direction.position} ({direction.metadata['token']!r})")
    forms = [options.form] + ([EditForm(PAPER_METHOD, "all")] if options.compare_paper and options.form.method != PAPER_METHOD else [])
    choices = {f.method: extraction.choose_writers(loaded, f) for f in forms}
    chosen = choices[options.form.method]
    if chosen.writers is not None:
        _say(options, f"rosi: {options.form.method} edits {len(chosen.writers)} writers ({chosen.note})")
    base_rates, base_step = _base(loaded, prompts, options)
    clock.done("base_model")
    searches = _search_strengths(loaded, direction, choices, prompts, options, base_step)
    strengths = {s.method: s.strength for s in searches}
    clock.done("strength_search")
    rates, record = _measure(loaded, direction, choices, strengths, prompts, options, base_rates)
    clock.done("evaluation")
    report = RunReport(
        model=loaded.source.spec,
        method=options.form.method,
        strength=strengths[options.form.method],
        direction=direction.info(),
        writers=choices,
        rates=rates,
        strength_searches=searches,
        selection_cost=extraction.selection.cost.to_json() if extraction.selection else None,
        seconds={p.name: p.seconds for p in clock.phases},
        new_tokens=options.new_tokens,
        phases=list(clock.phases),
    )
    _save(loaded, out, record, report, extraction, options)
    report.phases.append(clock.done("save"))
    return report


def _base(loaded: LoadedModel, prompts: PromptSets, options: RunOptions) -> tuple[Rates, StrengthStep]:
    """The base model's replies, generated once: its measured rates, and (from their first tokens)
    its rates in the strength search."""
    fmt = ChatFormat(loaded.tokenizer)
    kw: dict[str, Any] = {"max_new_tokens": options.new_tokens, "batch_size": options.batch_size, "progress": options.progress}
    harmful = generate_ids(loaded.model, fmt, prompts.val_harmful.instructions, desc="rosi: base model, harmful", **kw)
    harmless = generate_ids(loaded.model, fmt, prompts.val_harmless.instructions, desc="rosi: base model, harmless", **kw)

    def rate(ids: list[list[int]]) -> float:
        return refusal_rate(loaded.tokenizer.batch_decode(ids, skip_special_tokens=True))

    rates = Rates("base model", rate(harmful), rate(harmless), len(harmful), len(harmless))
    step = base_step(harmful, harmless, loaded.tokenizer) if options.new_tokens >= SEARCH_TOKENS else None
    if step is None:  # replies shorter than the search's: measure the search's own
        step = base_step(
            generate_ids(loaded.model, fmt, prompts.val_harmful.instructions, max_new_tokens=SEARCH_TOKENS, batch_size=options.batch_size),
            generate_ids(loaded.model, fmt, prompts.val_harmless.instructions, max_new_tokens=SEARCH_TOKENS, batch_size=options.batch_size),
            loaded.tokenizer,
        )
    _say(options, f"rosi: base model: refusal in {SEARCH_TOKENS}-token replies: harmful {step.harmful:.0%}, harmless {step.harmless:.0%}")
    return rates, step


def _search_strengths(
    loaded: LoadedModel,
    direction: Direction,
    choices: dict[str, WriterChoice],
    prompts: PromptSets,
    options: RunOptions,
    base: StrengthStep,
) -> list[StrengthSearch]:
    """The chosen method's strength (given, or searched) and the comparison's, from the same base."""
    searches = []
    for method, choice in choices.items():
        if method == options.form.method and options.strength is not None:
            searches.append(StrengthSearch(method, options.strength, "given"))
            continue
        search = choose_strength(
            loaded,
            direction,
            method,
            prompts.val_harmful,
            prompts.val_harmless,
            budget=options.budget,
            choice=choice,
            base=base,
            batch_size=options.batch_size,
            progress=options.progress,
            grid=options.grid if method == options.form.method else None,
            bisect=options.bisect if method == options.form.method else 0,
        )
        searches.append(search)
    return searches


def _measure(
    loaded: LoadedModel,
    direction: Direction,
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
    for method in reversed(list(choices)):  # the chosen method last, so that it stays applied
        choice = choices[method]
        paper = method != options.form.method
        record = apply_edit(
            loaded.model,
            direction,
            method,
            strengths[method],
            writers=choice.writers,
            reads=choice.reads,
            second=choice.second,
            keep_originals=paper,
        )
        label = f"{method} {get_method(method).symbol}={strengths[method]:g}, {len(record.matrices)} writers" + (
            " (paper's form)" if paper else ""
        )
        rates.insert(1, _rates(loaded, label, prompts, options))
        if paper:
            revert_edit(loaded.model, record)
    assert record is not None  # choices holds at least the chosen method
    return rates, record


def _rates(loaded: LoadedModel, label: str, prompts: PromptSets, options: RunOptions) -> Rates:
    kw: dict[str, Any] = {"new_tokens": options.new_tokens, "batch_size": options.batch_size, "progress": options.progress}
    harmful = refusal_rate_of(loaded, prompts.val_harmful, desc=f"rosi: {label}, harmful", **kw)[0]
    harmless = refusal_rate_of(loaded, prompts.val_harmless, desc=f"rosi: {label}, harmless", **kw)[0]
    return Rates(label, harmful, harmless, len(prompts.val_harmful), len(prompts.val_harmless))


def _save(loaded: LoadedModel, out: Path, record: EditRecord, report: RunReport, extraction: Extraction, options: RunOptions) -> None:
    def extras(folder: Path) -> None:
        extraction.direction.save(folder / "direction.safetensors")
        (folder / "rosi_report.json").write_text(json.dumps(report.to_json(), indent=2) + "\n")
        if extraction.selection is not None:
            (folder / "direction_scores.json").write_text(json.dumps(extraction.selection.table(), indent=2) + "\n")

    edited = Edited(loaded, record, {"report": "rosi_report.json"}, extras, [asdict(r) for r in report.rates], options.gguf_type)
    save(edited, out, options.format, options.overwrite)
    if FORMATS[options.format].kind == "file":  # a single file: the report goes beside it
        with atomic_file(out.with_name(out.name + ".report.json")) as tmp:
            tmp.write_text(json.dumps(report.to_json(), indent=2) + "\n")


def _say(options: ExtractOptions, message: str) -> None:
    if options.progress:
        print(message, flush=True)
