"""Tune the edit on both sides: :func:`tune`, the search behind ``rosi tune``.

A multi-objective search (Optuna, seeded, journaled so that an interrupted tune resumes) over the
edit form (by default ``probe``, ``gate`` and ``surgical``; ``scale`` and the paper's ``rosi`` can
be added), the direction's layer, the writer scope, the strength and, for the fitted read-outs, the
fit's regularisation. Every form searched gets an equal share of the trials (:func:`_queue_forms`). Every trial is measured on
validation prompts only, four objectives:

- harmful refusal (up),
- the rise of harmless refusal over the base model (down),
- the rise of look-alike refusal over the base model (down): safe prompts that sound harmful,
- the mean first-token KL(base || edited) on harmless prompts (down).

Trials use cheap scores (``score="replies"``, the default: the marker judge on
:data:`~rosi.edit.strength.SEARCH_TOKENS`-token replies; ``"first-token"``: a prompt counts as
refused when the refusal tokens' first-token log-odds is above 0, one forward pass per set, but
on Qwen2.5-Coder it does not track the replies' refusals). The mean log-odds of the harmful and
look-alike sets are recorded either way (a score that does not saturate). The Pareto front's trials
are then confirmed on full replies (``new_tokens``, the marker judge, with its partial verdict),
and the trial kept, on the confirmed figures, is by default the one that refuses at least as many
harmful prompts as rosi run's default edit (``min_harmful="default"``) with the least look-alike
rise within the user's constraints (``max_harmless_rise``, ``max_lookalike_rise``, ``max_kl``):
the same safety with less over-refusal. ``min_harmful=None`` keeps instead the most harmful
refusal within the constraints. It is saved
like ``rosi run``'s edit, with the front (``tune_front.csv``), its plot (``tune_front.png``) and
everything in ``tune_report.json``.

The direction is extracted and selected exactly as ``rosi run`` does it, so the reference points,
trials of the study like any other and enqueued first, are rosi run's own default edit (``scale``
beta 2 on the selected writers at the selected layer) and the paper's form (alpha 25 on every
writer). The layers searched are the selected one and ``layer_window`` either side.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rosi.edit.apply import revert_edit
from rosi.edit.methods import EditForm
from rosi.errors import RosiError
from rosi.export.checkpoint import input_paths
from rosi.export.formats import Edited, check_format_output, check_format_source, save
from rosi.measure import judge_of
from rosi.model.chat import ChatFormat
from rosi.model.context import check_fits
from rosi.model.loading import LoadedModel
from rosi.prompts import PromptSet, PromptSets
from rosi.workflows.extract import Extraction, extract, samples_for
from rosi.workflows.options import MAX_SEED, TuneOptions
from rosi.workflows.run import check_prompts_fit
from rosi.workflows.tune.measurement import Measure
from rosi.workflows.tune.pick import (
    DIRECTIONS,
    OBJECTIVES,
    Guard,
    Scores,
    TrialResult,
    confirm_order,
    front,
    guarded_pick,
    pareto_front,
    pick,
)
from rosi.workflows.tune.report import TuneReport, options_json, trial_record_path, write_front
from rosi.workflows.tune.space import REFERENCES, RIDGES, Space, describe, form_choices, references
from rosi.workflows.tune.study import (
    JOURNAL_SUFFIX,
    check_journal,
    confirm,
    count_pruned,
    journal_path,
    known_settings,
    open_study,
    read_results,
    run_trials,
    settings,
)

__all__ = [
    "DIRECTIONS",
    "MAX_SEED",
    "JOURNAL_SUFFIX",
    "OBJECTIVES",
    "REFERENCES",
    "RIDGES",
    "Measure",
    "Scores",
    "Space",
    "TrialResult",
    "TuneReport",
    "check_tune",
    "confirm_order",
    "describe",
    "form_choices",
    "pareto_front",
    "pick",
    "references",
    "trial_record_path",
    "tune",
    "tune_prompts",
]


def tune_prompts(prompts: PromptSets, hard_train: PromptSet | None, hard_val: PromptSet | None) -> PromptSets:
    """The run's sets with the harder harmful prompts added to extraction and validation."""
    prompts.need_lookalikes("rosi tune")
    return replace(
        prompts,
        harmful=prompts.harmful if hard_train is None else prompts.harmful + hard_train,
        val_harmful=prompts.val_harmful if hard_val is None else prompts.val_harmful + hard_val,
    )


@dataclass
class _Laps:
    """Seconds per phase of a tune."""

    started: float = field(default_factory=time.perf_counter)
    seconds: dict[str, float] = field(default_factory=dict)

    def __call__(self, name: str) -> None:
        self.seconds[name] = round(time.perf_counter() - self.started - sum(self.seconds.values()), 2)


def tune(
    loaded: LoadedModel,
    out: str | Path,
    prompts: PromptSets,
    options: TuneOptions | None = None,
    *,
    hard_train: PromptSet | None = None,
    hard_val: PromptSet | None = None,
    confirm_harmless: PromptSet | None = None,
) -> TuneReport:
    """Search, confirm, pick and save (see the module docstring); returns the report.

    The direction is extracted and selected from ``prompts`` exactly as ``rosi run`` does it
    (its default form), so the ``default`` reference trial is ``rosi run``'s own edit. The harder
    harmful prompts (``hard_train``, ``hard_val``) are added where the search needs variety: to
    the single prompts the read-outs are fit on, and to the validation prompts every trial is
    measured on. ``confirm_harmless`` (with the guard) is added to the confirmation part of the
    harmless validation prompts only: it never ranks, and it gives the guard's harmless bound the
    breadth and the resolution a few dozen prompts cannot."""
    options = options or TuneOptions()
    out = Path(out)
    journal = check_tune(loaded.source.spec, input_paths(loaded.source), out, options)
    existed = journal.exists()
    new_folders = [p for p in (journal.parent, *journal.parent.parents) if not p.exists()]  # made for the journal
    opened: list[Any] = []  # the study, once open_study has made or resumed the journal
    try:
        return _tune(loaded, out, prompts, options, journal, opened, (hard_train, hard_val, confirm_harmless))
    except BaseException:
        if not existed:
            _drop_journal(journal, opened, new_folders)
        raise


def check_tune(model: str, protect: tuple[Path, ...], out: Path, options: TuneOptions) -> Path:
    """Everything a tune of ``model`` (its spec; ``protect``: its local files) can check before
    the model is loaded or anything extracted: the output, the format against the model and the
    forms, the seed, the journal's place and, when it exists, its contents. Returns the journal's path."""
    check_format_output(out, options.output.format, options.output.overwrite, protect=protect)
    check_format_source(options.output.format, model, options.forms, "--forms", options.output.gguf_type)
    journal = journal_path(out, options.journal)
    for p in (*protect, out):
        if journal.resolve().is_relative_to(Path(p).resolve()):
            raise RosiError(f"--journal {journal} lies in {p} (the {'output' if p == out else 'input'}); choose a journal path beside them")
    check_journal(
        journal, known_settings(model, options)
    )  # readable, a rosi tune's, made with these settings (the rest: when the study opens)
    return journal


def _drop_journal(journal: Path, opened: list[Any], new_folders: list[Path]) -> None:
    """Remove the journal a failed or interrupted tune made (and the folders made for it), unless
    a trial finished in it: then it is what the next tune resumes from."""
    from optuna.trial import TrialState

    if opened and opened[0].get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        return
    journal.unlink(missing_ok=True)
    lock = Path(f"{journal}.lock")  # Optuna's lock, a symbolic link, if it was interrupted holding it
    if lock.is_symlink():
        lock.unlink()
    for folder in new_folders:  # deepest first; only while empty
        try:
            folder.rmdir()
        except OSError:
            break


def _tune(
    loaded: LoadedModel,
    out: Path,
    prompts: PromptSets,
    options: TuneOptions,
    journal: Path,
    opened: list[Any],
    extra: tuple[PromptSet | None, PromptSet | None, PromptSet | None],
) -> TuneReport:
    judge = judge_of(options.measure.judge)
    lap = _Laps()
    hard_train, hard_val, confirm_harmless = extra
    _check_fit(loaded, prompts, extra, options)
    measured = tune_prompts(prompts, hard_train, hard_val)
    options, extraction = _extract(loaded, prompts, measured, options, lap)
    space = Space(loaded, extraction, options)
    _say(options, f"rosi: tuning at layers {space.layers}, position {extraction.direction.position}; journal {journal}")
    measure = Measure(loaded, measured, options, judge, confirm_harmless)
    space.measure_sets = measure.sets
    base_cheap = measure.cheap()
    base_confirmed = measure.confirmed() if options.confirm else base_cheap
    lap("base_model")
    assert extraction.direction.layer is not None
    journal.parent.mkdir(parents=True, exist_ok=True)
    agreed = settings(loaded, measured, options, extraction, confirm_harmless)
    study = open_study(journal, agreed, options.seed, references(extraction.direction.layer))
    opened.append(study)
    run_trials(study, space, measure, base_cheap, options)
    lap("trials")
    results = read_results(study)
    on_front = front(results, base_cheap)
    confirm(study, results, on_front, space, measure, base_cheap, options)
    lap("confirm")
    results = read_results(study)
    guards: list[Guard] = []
    if options.guard is None:
        chosen, how = pick(results, base_confirmed, options, base_cheap)
    else:
        chosen, how, guards = guarded_pick(results, options.guard)
    samples_mib = extraction.samples.nbytes() / 2**20 if extraction.samples is not None else 0.0
    report = TuneReport(
        loaded.source.spec,
        options_json(options),
        extraction.direction.info(),
        base_cheap,
        base_confirmed,
        results,
        on_front,
        chosen,
        how,
        lap.seconds,
        samples_mib,
        count_pruned(study),
        guards,
    )
    _save(loaded, out, space, report, journal, options)
    lap("save")
    report.seconds = lap.seconds
    return report


def _check_fit(loaded: LoadedModel, prompts: PromptSets, extra: tuple[PromptSet | None, ...], options: TuneOptions) -> None:
    """Every prompt the tune reads fits the model's context (:func:`~rosi.workflows.run.check_prompts_fit`)."""
    check_prompts_fit(loaded, prompts, options.extract.system_prompt, options.measure.new_tokens)
    fmt = ChatFormat(loaded.tokenizer)
    for found in (p for p in extra if p is not None):
        n = options.measure.new_tokens
        check_fits(loaded.model, fmt, found.instructions, new_tokens=n, what=f"prompt set {found.name!r}", name=loaded.source.spec)


def _extract(
    loaded: LoadedModel, prompts: PromptSets, measured: PromptSets, options: TuneOptions, lap: _Laps
) -> tuple[TuneOptions, Extraction]:
    """The direction rosi run selects (pinned in the returned options), every writer's means at it,
    and the single prompts' samples (``measured``: with the harder prompts) for the fitted forms."""
    if options.extract.layer is None or options.extract.position is None:
        picked = extract(loaded, prompts, replace(options.extract, form=EditForm())).direction
        options = replace(options, extract=replace(options.extract, layer=picked.layer, position=picked.position))
        lap("select_as_rosi_run")
    extraction = extract(loaded, prompts, replace(options.extract, form=EditForm("probe", "all")))  # pinned: every writer's means
    assert extraction.direction.position is not None
    fits = replace(options.extract, form=EditForm("surgical", "all"))
    samples = samples_for(loaded, ChatFormat(loaded.tokenizer), measured, extraction.direction.position, "all", fits)
    lap("extract_and_samples")
    return options, replace(extraction, samples=samples)


def _save(loaded: LoadedModel, out: Path, space: Space, report: TuneReport, journal: Path, options: TuneOptions) -> None:
    for t in report.trials:  # confirmed in an earlier, interrupted tune: make their records again
        if t.confirmed is not None and t.number not in space.records:
            space.records[t.number] = space.apply(t.params)
            revert_edit(loaded.model, space.records[t.number])
    chosen = report.trial(report.chosen)
    record = space.apply(chosen.params)
    record.originals = None
    direction = record.direction

    def extras(folder: Path) -> None:
        direction.save(folder / "direction.safetensors")
        (folder / "tune_report.json").write_text(json.dumps(report.to_json(), indent=2) + "\n")
        write_front(report, folder)
        (folder / "trials").mkdir()
        for number, trial_record in sorted(space.records.items()):
            trial_record.save(trial_record_path(folder, number))
        if journal.is_file():
            shutil.copyfile(journal, folder / "tune_journal.log")

    n_h, n_b = len(space.measure_sets["harmful"]), len(space.measure_sets["harmless"])
    confirmed = chosen.confirmed or chosen.cheap
    rates = [
        {
            "label": "base model",
            "harmful": report.base_confirmed.harmful,
            "harmless": report.base_confirmed.harmless,
            "n_harmful": n_h,
            "n_harmless": n_b,
        },
        {
            "label": describe(chosen.params),
            "harmful": confirmed.harmful,
            "harmless": confirmed.harmless,
            "n_harmful": n_h,
            "n_harmless": n_b,
        },
    ]
    edited = Edited(loaded, record, {"report": "tune_report.json"}, extras, rates, options.output.gguf_type)
    save(edited, out, options.output.format, options.output.overwrite)
    if journal.is_file() and options.journal is None:
        journal.unlink()  # rosi wrote it beside the output; the output folder holds its copy now


def _say(options: TuneOptions, message: str) -> None:
    if options.extract.progress:
        print(message, flush=True)
