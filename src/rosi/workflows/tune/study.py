"""The tune's journaled Optuna study: opened or resumed, its trials run on cheap scores, the front
confirmed on full replies, the results read back."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from rosi.edit.apply import revert_edit
from rosi.errors import RosiError
from rosi.model.loading import LoadedModel
from rosi.prompts import PromptSets
from rosi.workflows.extract import Extraction
from rosi.workflows.options import TuneOptions
from rosi.workflows.tune.measurement import Measure
from rosi.workflows.tune.pick import DIRECTIONS, Scores, TrialResult, confirm_order
from rosi.workflows.tune.space import Space, describe

JOURNAL_SUFFIX = ".rosi-tune.journal"


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


def settings(loaded: LoadedModel, prompts: PromptSets, options: TuneOptions, extraction: Extraction) -> dict[str, Any]:
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


def run_trials(study: Any, space: Space, measure: Measure, base: Scores, options: TuneOptions) -> None:
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
        _say(options, f"rosi: trial {trial.number}: {describe(params)}: " + fmt(scores))
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


def count_pruned(study: Any) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)))


def read_results(study: Any) -> list[TrialResult]:
    from optuna.trial import TrialState

    out = []
    confirmations = study.user_attrs  # a finished trial cannot be updated: confirmations are the study's
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        confirmed = confirmations.get(confirmed_key(t.number))
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


def confirmed_key(number: int) -> str:
    return f"confirmed:{number}"


def confirm(
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
        study.set_user_attr(confirmed_key(t.number), asdict(scores))
        _say(options, f"rosi: confirmed trial {t.number}: {describe(t.params)}: {fmt(scores)}")


def fmt(s: Scores) -> str:
    return f"harmful {s.harmful:.0%}, harmless {s.harmless:.0%}, look-alike {s.lookalike:.0%}, KL {s.kl:.3f}"


def _say(options: TuneOptions, message: str) -> None:
    if options.extract.progress:
        print(message, flush=True)
