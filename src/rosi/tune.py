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

import csv
import json
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from rosi import __version__
from rosi.direction.score import refusal_log_odds, refusal_token_ids
from rosi.direction.vector import Direction
from rosi.edit.apply import apply_edit, revert_edit
from rosi.edit.checkpoint import input_paths
from rosi.edit.methods import EditForm, get_method
from rosi.edit.scope import WriterChoice, false_refusal
from rosi.edit.strength import SEARCH_TOKENS
from rosi.errors import RosiError
from rosi.export.formats import Edited, check_format_output, save
from rosi.judges.markers import partial_rate, refusal_rate
from rosi.metrics import kl_divergence
from rosi.model.chat import ChatFormat
from rosi.model.generation import generate_with_logprobs, next_token_logprobs
from rosi.model.loading import LoadedModel
from rosi.options import TuneOptions
from rosi.pipeline import Extraction, extract, prompt_samples
from rosi.prompts import PromptSet, PromptSets

OBJECTIVES = ("harmful", "harmless_rise", "lookalike_rise", "kl")
DIRECTIONS = ("maximize", "minimize", "minimize", "minimize")
REFERENCES: dict[str, dict[str, Any]] = {  # enqueued first in every tune, at the selected layer: rosi run's default, the paper's form
    "default": {"form": "scale", "scale.scope": "selective", "scale.strength": 2.0},
    "paper": {"form": "rosi", "rosi.scope": "all", "rosi.strength": 25.0},
}


def references(layer: int) -> dict[str, dict[str, Any]]:
    """The reference trials at the selected ``layer`` (in every tune, whatever forms it searches)."""
    return {name: {**p, "layer": layer} for name, p in REFERENCES.items()}


def form_choices(forms: tuple[str, ...]) -> list[str]:
    """The ``form`` parameter's choices: the forms searched and the references' forms (queued
    trials fix the form of every trial; see :func:`_queue_forms`)."""
    return [*forms, *(str(p["form"]) for p in REFERENCES.values() if p["form"] not in forms)]


JOURNAL_SUFFIX = ".rosi-tune.journal"
RIDGES = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3)  # the fitted read-outs' ridge values searched (a grid: each fit is reused)


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

    def trial(self, number: int) -> TrialResult:
        return next(t for t in self.trials if t.number == number)

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


def describe(params: dict[str, Any]) -> str:
    """A trial's settings in one line, e.g. ``gate k=2.1, layer 14, middle, ridge 0.05``."""
    form = params["form"]
    spec = get_method(form)
    parts = [f"{form} {spec.symbol}={params[f'{form}.strength']:.3g}", f"layer {params['layer']}", params[f"{form}.scope"]]
    if spec.samples:
        parts.append(f"ridge {params[f'{form}.ridge']:.2g}")
        if params.get(f"{form}.null_space"):
            parts.append(f"null space {params[f'{form}.null_space']:g}")
    return ", ".join(parts)


def tune_prompts(prompts: PromptSets, hard_train: PromptSet | None, hard_val: PromptSet | None) -> PromptSets:
    """The run's sets with the harder harmful prompts added to extraction and validation."""
    prompts.need_lookalikes("rosi tune")
    return replace(
        prompts,
        harmful=prompts.harmful if hard_train is None else prompts.harmful + hard_train,
        val_harmful=prompts.val_harmful if hard_val is None else prompts.val_harmful + hard_val,
    )


class Measure:
    """Scores of the model in memory as it is now, on the validation sets (the base model's
    first-token distributions on harmless prompts kept for the KL).

    Cheap scores take the fast path: replies and first-token distributions from one generation
    pass, the prompts' shared prefix (the chat template's system turn) computed once. Confirmed
    scores take the plain path of ``rosi eval`` (no shared prefix), so they are the numbers an
    evaluation of the saved edit gives on the same prompts. Each path's KL is taken against the
    base model on the same path: the paths differ by rounding (in bfloat16, a KL of about 0.001),
    which would otherwise be counted as the edit's."""

    def __init__(self, loaded: LoadedModel, prompts: PromptSets, options: TuneOptions) -> None:
        self.loaded, self.options = loaded, options
        _, val_lookalike = prompts.need_lookalikes("rosi tune")
        self.sets = {"harmful": prompts.val_harmful, "harmless": prompts.val_harmless, "lookalike": val_lookalike}
        self.fmt = ChatFormat(loaded.tokenizer)
        self.ids = refusal_token_ids(loaded.tokenizer)
        # the plain generation path's first step is the forward pass's next-token distribution
        self.base_plain = self._logprobs("harmless")
        self.base_fast = self.base_plain if options.score == "first-token" else self._replies("harmless", 1, fast=True)[1]

    def _logprobs(self, role: str) -> torch.Tensor:
        return next_token_logprobs(self.loaded.model, self.fmt, self.sets[role].instructions, batch_size=self.options.batch_size)

    def _replies(self, role: str, tokens: int, *, fast: bool) -> tuple[list[str], torch.Tensor]:
        """Greedy replies and first-token log-probabilities, from one pass over the prompts
        (``fast``: their shared prefix computed once)."""
        return generate_with_logprobs(
            self.loaded.model,
            self.fmt,
            self.sets[role].instructions,
            max_new_tokens=tokens,
            batch_size=self.options.batch_size,
            share_prefix=fast,
        )

    def cheap(self) -> Scores:
        if self.options.score == "first-token":
            lp = {role: self._logprobs(role) for role in self.sets}
            odds = {role: refusal_log_odds(v, self.ids) for role, v in lp.items()}
            rates = {role: float((o > 0).float().mean()) for role, o in odds.items()}
        else:
            out = {role: self._replies(role, SEARCH_TOKENS, fast=True) for role in self.sets}
            lp = {role: v for role, (_, v) in out.items()}
            odds = {role: refusal_log_odds(v, self.ids) for role, v in lp.items()}
            rates = {role: refusal_rate(replies) for role, (replies, _) in out.items()}
        kl = float(kl_divergence(self.base_fast, lp["harmless"]).mean())
        return Scores(
            rates["harmful"], rates["harmless"], rates["lookalike"], kl, float(odds["harmful"].mean()), float(odds["lookalike"].mean())
        )

    def confirmed(self) -> Scores:
        out = {role: self._replies(role, self.options.new_tokens, fast=False) for role in self.sets}
        replies = {role: r for role, (r, _) in out.items()}
        kl = float(kl_divergence(self.base_plain, out["harmless"][1]).mean())
        return Scores(
            refusal_rate(replies["harmful"]),
            refusal_rate(replies["harmless"]),
            refusal_rate(replies["lookalike"]),
            kl,
            harmful_partial=partial_rate(replies["harmful"]),
            lookalike_partial=partial_rate(replies["lookalike"]),
        )


class Space:
    """The search space, and a trial's settings turned into an edit."""

    def __init__(self, loaded: LoadedModel, extraction: Extraction, options: TuneOptions) -> None:
        self.loaded, self.extraction, self.options = loaded, extraction, options
        selected = extraction.direction.layer
        assert selected is not None and extraction.direction.position is not None
        n = loaded.architecture.num_layers
        self.layers = sorted({selected + d for d in range(-options.layer_window, options.layer_window + 1) if 0 <= selected + d < n})
        self._choices: dict[tuple[Any, ...], WriterChoice] = {}
        self.measure_sets: dict[str, PromptSet] = {}
        self.records: dict[int, Any] = {}  # edit records of the confirmed trials (saved beside the chosen edit)

    def suggest(self, trial: Any) -> dict[str, Any]:
        form = trial.suggest_categorical("form", form_choices(self.options.forms))
        spec = get_method(form)
        params = {"form": form, "layer": trial.suggest_categorical("layer", self.layers)}
        scopes = ["middle", "all"] if spec.needs_reads else ["selective", "all"]
        params[f"{form}.scope"] = trial.suggest_categorical(f"{form}.scope", scopes)
        lo, hi = spec.grid[0] / 2, spec.grid[-1]
        params[f"{form}.strength"] = trial.suggest_float(f"{form}.strength", lo, hi, log=True)
        if spec.samples:
            params[f"{form}.ridge"] = trial.suggest_categorical(f"{form}.ridge", list(RIDGES))
            params[f"{form}.null_space"] = trial.suggest_categorical(f"{form}.null_space", [0.0, 0.9, 0.99])
        return params

    def direction(self, layer: int) -> Direction:
        base = self.extraction.direction
        assert base.position is not None
        vector = self.extraction.activations.direction_at(layer, base.position)
        return Direction(
            vector, layer=layer, position=base.position, model=base.model, metadata={**base.metadata, "tuned_layer": str(layer)}
        )

    def edit(self, params: dict[str, Any]) -> tuple[Direction, WriterChoice, float]:
        """The direction, writers (with read-outs) and strength of a trial's settings. Fitted
        read-outs depend on the layer only through their scale (the direction's length), so
        they are fit once per scope, ridge and null space and rescaled."""
        form = params["form"]
        spec = get_method(form)
        scope = "all" if params[f"{form}.scope"] == "all" else "selective"
        direction = self.direction(params["layer"])
        strength = float(params[f"{form}.strength"])
        if not spec.samples:
            key: tuple[Any, ...] = (form, params["layer"], scope)
            if key not in self._choices:
                self._choices[key] = replace(self.extraction, direction=direction).choose_writers(self.loaded, EditForm(form, scope))
            return direction, self._choices[key], strength
        ridge, null_space = float(params[f"{form}.ridge"]), params.get(f"{form}.null_space") or None
        key = ("fit", scope, ridge, null_space)
        if key not in self._choices:
            self._choices[key] = self.extraction.choose_writers(self.loaded, EditForm("gate", scope, ridge=ridge, null_space=null_space))
        fitted = self._choices[key]
        assert fitted.reads is not None and self.extraction.samples is not None
        ratio = float(direction.vector.norm() / self.extraction.direction.vector.norm())
        reads = {name: r * ratio for name, r in fitted.reads.items()}
        second = false_refusal(self.extraction.samples, direction) if spec.rank == 2 else None
        return direction, replace(fitted, reads=reads, second=second), strength

    def apply(self, params: dict[str, Any]) -> Any:
        direction, choice, strength = self.edit(params)
        return apply_edit(
            self.loaded.model,
            direction,
            params["form"],
            strength,
            writers=choice.writers,
            reads=choice.reads,
            second=choice.second,
            keep_originals=True,
        )


def journal_path(out: Path, journal: Path | None) -> Path:
    return journal if journal is not None else out.with_name(out.name + JOURNAL_SUFFIX)


def open_study(path: Path, settings: dict[str, Any], seed: int, enqueue: dict[str, dict[str, Any]]) -> Any:
    """The journaled study at ``path`` (created, or resumed when its settings match)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(path)))
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=8, multivariate=False)
    directions: list[Any] = list(DIRECTIONS)
    study = optuna.create_study(study_name="rosi-tune", storage=storage, directions=directions, sampler=sampler, load_if_exists=True)
    stored = study.user_attrs.get("settings")
    if stored is None:
        study.set_user_attr("settings", settings)
        for name, params in enqueue.items():
            study.enqueue_trial(params, user_attrs={"reference": name})
    elif stored != settings:
        changed = sorted(k for k in set(stored) | set(settings) if stored.get(k) != settings.get(k))
        raise RosiError(f"the tune journal {path} was made with other settings ({', '.join(changed)}); delete it or pass another --journal")
    _requeue_interrupted(study)
    return study


def _requeue_interrupted(study: Any) -> None:
    """Trials a killed tune left running are failed and queued again with the same settings."""
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs=dict(t.user_attrs))


def tune(
    loaded: LoadedModel,
    out: str | Path,
    prompts: PromptSets,
    options: TuneOptions | None = None,
    *,
    hard_train: PromptSet | None = None,
    hard_val: PromptSet | None = None,
) -> TuneReport:
    """Search, confirm, pick and save (see the module docstring); returns the report.

    The direction is extracted and selected from ``prompts`` exactly as ``rosi run`` does it
    (its default form), so the ``default`` reference trial is ``rosi run``'s own edit. The harder
    harmful prompts (``hard_train``, ``hard_val``) are added where the search needs variety: to
    the single prompts the read-outs are fit on, and to the validation prompts every trial is
    measured on."""
    options = options or TuneOptions()
    out = Path(out)
    check_format_output(out, options.format, options.overwrite, protect=input_paths(loaded.source))
    journal = journal_path(out, options.journal)
    started = time.perf_counter()
    seconds: dict[str, float] = {}

    def lap(name: str) -> None:
        seconds[name] = round(time.perf_counter() - started - sum(seconds.values()), 2)

    measured = tune_prompts(prompts, hard_train, hard_val)
    if options.layer is None or options.position is None:
        picked = extract(loaded, prompts, replace(options, form=EditForm())).direction
        options = replace(options, layer=picked.layer, position=picked.position)
        lap("select_as_rosi_run")
    extraction = extract(loaded, prompts, replace(options, form=EditForm("probe", "all")))  # pinned: every writer's means
    assert extraction.direction.position is not None
    fits = replace(options, form=EditForm("surgical", "all"))
    extraction = replace(
        extraction, samples=prompt_samples(loaded, ChatFormat(loaded.tokenizer), measured, extraction.direction.position, "all", fits)
    )
    lap("extract_and_samples")
    space = Space(loaded, extraction, options)
    _say(options, f"rosi: tuning at layers {space.layers}, position {extraction.direction.position}; journal {journal}")
    prompts = measured
    measure = Measure(loaded, prompts, options)
    space.measure_sets = measure.sets
    base_cheap = measure.cheap()
    base_confirmed = measure.confirmed() if options.confirm else base_cheap
    lap("base_model")
    settings = _settings(loaded, prompts, options, extraction)
    assert extraction.direction.layer is not None
    study = open_study(journal, settings, options.seed, references(extraction.direction.layer))
    _run_trials(study, space, measure, base_cheap, options)
    lap("trials")
    results = _results(study)
    front = _front(results, base_cheap)
    _confirm(study, results, front, space, measure, base_cheap, options)
    lap("confirm")
    results = _results(study)
    chosen, how = pick(results, base_confirmed, options, base_cheap)
    report = TuneReport(
        loaded.source.spec,
        _options_json(options),
        extraction.direction.info(),
        base_cheap,
        base_confirmed,
        results,
        front,
        chosen,
        how,
        seconds,
        extraction.samples.nbytes() / 2**20 if extraction.samples is not None else 0.0,
        _count_pruned(study),
    )
    _save(loaded, out, space, report, journal, options)
    lap("save")
    report.seconds = seconds
    return report


def _settings(loaded: LoadedModel, prompts: PromptSets, options: TuneOptions, extraction: Extraction) -> dict[str, Any]:
    """What a journal must agree on to be resumed."""
    sets = {"val_harmful": prompts.val_harmful, "val_harmless": prompts.val_harmless, "val_lookalike": prompts.val_lookalike}
    return {
        "model": loaded.source.spec,
        "weights": loaded.source.weights_sha256,
        "seed": options.seed,
        "forms": list(options.forms),
        "score": options.score,
        "layer": extraction.direction.layer,
        "position": extraction.direction.position,
        "layer_window": options.layer_window,
        **{k: [len(v), v.name] for k, v in sets.items() if v is not None},
    }


def _run_trials(study: Any, space: Space, measure: Measure, base: Scores, options: TuneOptions) -> None:
    import optuna
    from optuna.trial import TrialState

    done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    todo = max(0, options.trials - done)
    if done:
        _say(options, f"rosi: resuming: {done} trials done, {todo} to go")
    _queue_forms(study, options.forms, todo)

    def objective(trial: Any) -> tuple[float, float, float, float]:
        params = space.suggest(trial)
        trial.set_user_attr("params", params)
        try:
            record = space.apply(params)
        except RosiError as e:  # a setting that makes no edit (no writer separates the prompts there): pruned, said why
            trial.set_user_attr("error", str(e))
            _say(options, f"rosi: trial {trial.number}: {describe(params)}: no edit ({e})")
            raise optuna.TrialPruned(str(e)) from None
        try:
            scores = measure.cheap()
        finally:
            revert_edit(space.loaded.model, record)
        trial.set_user_attr("cheap", asdict(scores))
        trial.set_user_attr("params", params)
        _say(options, f"rosi: trial {trial.number}: {describe(params)}: " + _fmt(scores))
        return (scores.harmful, scores.harmless - base.harmless, scores.lookalike - base.lookalike, scores.kl)

    if todo:
        study.optimize(objective, n_trials=todo)


def _queue_forms(study: Any, forms: tuple[str, ...], todo: int) -> None:
    """Queue the next ``todo`` trials' forms so that every form searched gets an equal share of the
    study (the references counted in their form's share when it is searched; the sampler chooses
    every other setting). Left to the sampler,
    40 trials over five forms were too few for a form's good region to be found again when the
    prompts changed: the re-tune ran 4 ``gate`` trials, all at one layer (README, Tuning)."""
    from optuna.trial import TrialState

    counts = dict.fromkeys(forms, 0)
    waiting = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.WAITING)):
        form = t.system_attrs.get("fixed_params", t.params).get("form") if t.state == TrialState.WAITING else t.params.get("form")
        waiting += t.state == TrialState.WAITING
        if form in counts:
            counts[form] += 1
    for _ in range(max(0, todo - waiting)):
        form = min(forms, key=lambda f: counts[f])  # ties: the order of --forms
        counts[form] += 1
        study.enqueue_trial({"form": form})


def _count_pruned(study: Any) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)))


def _results(study: Any) -> list[TrialResult]:
    from optuna.trial import TrialState

    out = []
    confirmations = study.user_attrs  # a finished trial cannot be updated: confirmations are the study's
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        confirmed = confirmations.get(_confirmed_key(t.number))
        out.append(
            TrialResult(
                t.number,
                t.user_attrs["params"],
                Scores(**t.user_attrs["cheap"]),
                None if confirmed is None else Scores(**confirmed),
                t.user_attrs.get("reference"),
            )
        )
    return out


def pareto_front(points: dict[int, tuple[float, ...]], directions: tuple[str, ...] = DIRECTIONS) -> list[int]:
    """The keys of the non-dominated points (each coordinate maximised or minimised)."""
    signs = [1.0 if d == "maximize" else -1.0 for d in directions]

    def better(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
        return all(s * x >= s * y for s, x, y in zip(signs, a, b, strict=True)) and any(
            s * x > s * y for s, x, y in zip(signs, a, b, strict=True)
        )

    return sorted(k for k, p in points.items() if not any(better(q, p) for j, q in points.items() if j != k))


def _front(results: list[TrialResult], base: Scores) -> list[int]:
    return pareto_front({t.number: t.objectives(base) for t in results})


def _confirmed_key(number: int) -> str:
    return f"confirmed:{number}"


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
            return False, _violation(objectives, options), -objectives[0]
        if objectives[0] >= floor:  # those reaching the floor first, as the pick takes them
            return False, _violation(objectives, options), objectives[2]
        return True, _violation(objectives, options, floor), -objectives[0]

    return sorted((by_number[n] for n in front), key=rank)


def _confirm(
    study: Any, results: list[TrialResult], front: list[int], space: Space, measure: Measure, base: Scores, options: TuneOptions
) -> None:
    """Full replies for the references and the best front trials within the constraints (by cheap
    scores; the least violating ones when too few are within; with a harmful floor, those reaching
    it first, the least violating and then the least look-alike rise of them). Stored in the journal, so a
    resumed tune does not confirm a trial twice."""
    if options.confirm == 0:
        return
    ranked = confirm_order(results, front, base, options)
    chosen = [t for t in results if t.reference] + [t for t in ranked if not t.reference][: options.confirm]
    for t in chosen:
        if t.confirmed is not None:
            continue
        record = space.apply(t.params)
        try:
            scores = measure.confirmed()
        finally:
            revert_edit(space.loaded.model, record)
        space.records[t.number] = record
        study.set_user_attr(_confirmed_key(t.number), asdict(scores))
        _say(options, f"rosi: confirmed trial {t.number}: {describe(t.params)}: {_fmt(scores)}")


def _violation(objectives: tuple[float, ...], options: TuneOptions, floor: float | None = None) -> float:
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
    scores = f"{options.new_tokens}-token replies" if on_confirmed else f"{options.score} scores (no trial confirmed)"
    if floor is None:
        within = [t for t in pool if _violation(objectives(t), options) == 0]
        if within:
            best = max(within, key=lambda t: (objectives(t)[0], -objectives(t)[2], -objectives(t)[3]))
            return best.number, f"{floor_text}most harmful refusal in {scores} with {limits} ({len(within)} of {len(pool)} trials within)"
        best = min(pool, key=lambda t: (_violation(objectives(t), options), -objectives(t)[0]))
        return best.number, f"{floor_text}no trial met {limits} in {scores}: the least violating one"

    def gentlest(t: TrialResult) -> tuple[float, float, float, float, float]:  # least look-alike rise, then harmless rise, KL
        harmful, harmless, lookalike, kl = objectives(t)
        return _violation(objectives(t), options), lookalike, harmless, kl, -harmful

    reaching = [t for t in pool if objectives(t)[0] >= floor]
    within = [t for t in reaching if _violation(objectives(t), options) == 0]
    if within:
        best = min(within, key=gentlest)
        return best.number, f"least look-alike rise in {scores} with {floor_text}, {limits} ({len(within)} of {len(pool)} trials within)"
    if reaching:
        best = min(reaching, key=gentlest)
        return best.number, f"no trial with {floor_text} met {limits} in {scores}: of those with it, the least violating one"
    best = min(pool, key=lambda t: (_violation(objectives(t), options, floor), -objectives(t)[0]))
    return best.number, f"no trial reached {floor_text} in {scores}: the least violating one"


def _fmt(s: Scores) -> str:
    return f"harmful {s.harmful:.0%}, harmless {s.harmless:.0%}, look-alike {s.lookalike:.0%}, KL {s.kl:.3f}"


def _options_json(options: TuneOptions) -> dict[str, Any]:
    out = {k: v for k, v in asdict(options).items() if k not in ("form", "journal", "system_prompt")}
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
            trial_record.save(folder / "trials" / f"trial-{number:03d}.safetensors")
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
    edited = Edited(loaded, record, {"report": "tune_report.json"}, extras, rates, options.gguf_type)
    save(edited, out, options.format, options.overwrite)
    if journal.is_file() and options.journal is None:
        journal.unlink()  # rosi wrote it beside the output; the output folder holds its copy now


def _say(options: TuneOptions, message: str) -> None:
    if options.progress:
        print(message, flush=True)
