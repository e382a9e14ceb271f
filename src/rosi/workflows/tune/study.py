"""The tune's journaled Optuna study: opened or resumed, its trials run on cheap scores, the front
confirmed on full replies, the results read back."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from rosi._fs import regular_file
from rosi.edit.apply import revert_edit
from rosi.edit.methods import METHODS
from rosi.errors import JournalError, RosiError, first_line
from rosi.model.loading import LoadedModel
from rosi.prompts import PromptSet, PromptSets
from rosi.workflows.extract import Extraction
from rosi.workflows.options import TuneOptions
from rosi.workflows.tune.measurement import Measure
from rosi.workflows.tune.pick import DIRECTIONS, Scores, TrialResult, confirm_order
from rosi.workflows.tune.space import Space, describe

JOURNAL_SUFFIX = ".rosi-tune.journal"
STUDY = "rosi-tune"
JOURNAL_FIX = "pass a journal an earlier `rosi tune` wrote, or a new path"


def journal_path(out: Path, journal: Path | None) -> Path:
    return journal if journal is not None else out.with_name(out.name + JOURNAL_SUFFIX)


def open_study(path: Path, settings: dict[str, Any], seed: int, enqueue: dict[str, dict[str, Any]]) -> Any:
    """The journaled study at ``path`` (created, or resumed when its settings match); the journal
    is checked first (:func:`check_journal`)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    check_journal(path, settings)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        storage = JournalStorage(JournalFileBackend(str(path)))
    except (OSError, ValueError, KeyError, TypeError) as e:  # changed since it was checked
        raise JournalError(f"the tune journal {path} cannot be read ({type(e).__name__}: {first_line(str(e))}); {JOURNAL_FIX}") from None
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=8, multivariate=False)
    directions: list[Any] = list(DIRECTIONS)
    study = optuna.create_study(study_name=STUDY, storage=storage, directions=directions, sampler=sampler, load_if_exists=True)
    stored = study.user_attrs.get("settings")
    if stored is None:
        study.set_user_attr("settings", settings)
        for name, params in enqueue.items():
            study.enqueue_trial(params, user_attrs={"reference": name})
    elif stored != settings:
        raise JournalError(
            f"the tune journal {path} was made with other settings ({', '.join(_changed(stored, settings))}); delete it or pass another --journal"
        )
    _requeue_interrupted(study)
    return study


def check_journal(path: Path, settings: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Check the tune journal at ``path`` before any long work: it is an Optuna journal (UTF-8 JSON
    lines of journal operations, the last one complete) that replays, holds no study but rosi's,
    whose directions and trials are a rosi tune's, and, with ``settings`` (all of a tune's, or
    those known so far), was made with the same ones. Returns the settings it was made with
    (None: no journal yet, or one without a tune in it); a :class:`~rosi.errors.JournalError`
    naming the file, what is wrong and the fix otherwise. Reads only: nothing is written."""
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        return None
    try:
        regular_file(path, "tune journal")
    except RosiError as e:
        raise JournalError(f"{e}; {JOURNAL_FIX}") from None
    study = _replay(path, _journal_logs(path))
    if study is None:
        return None
    storage, study_id, stored = study
    if settings is not None and stored is not None:
        given = json.loads(json.dumps(settings))
        changed = [k for k in given if stored.get(k) != given[k]]
        if changed:
            raise JournalError(
                f"the tune journal {path} was made with other settings ({', '.join(sorted(changed))}); delete it or pass another --journal"
            )
    _check_trials(path, storage, study_id)
    return stored


def _changed(stored: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(stored) | set(settings) if stored.get(k) != settings.get(k))


def _journal_logs(path: Path) -> list[dict[str, Any]]:
    """The operations of a journal file, each line checked to be one (Optuna reads them lazily,
    and a bad line stops a resumed tune half-way)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise JournalError(f"the tune journal {path} cannot be read ({e.strerror}); {JOURNAL_FIX}") from None
    *lines, tail = data.split(b"\n")
    logs = []
    ops = _operations()
    for number, line in enumerate(lines, start=1):
        try:
            log = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            raise JournalError(f"{path} is not UTF-8 text, so not an Optuna journal (line {number}); {JOURNAL_FIX}") from None
        except (ValueError, RecursionError) as e:
            raise JournalError(
                f"{path} is not an Optuna journal: line {number} is not JSON ({first_line(str(e))}); {JOURNAL_FIX}"
            ) from None
        op = log.get("op_code") if isinstance(log, dict) else None
        if not isinstance(op, int) or isinstance(op, bool) or op not in ops or not isinstance(log.get("worker_id"), str):
            raise JournalError(
                f"{path} is not an Optuna journal: line {number} is not a journal operation (op_code, worker_id); {JOURNAL_FIX}"
            )
        logs.append(log)
    if tail and not logs:
        raise JournalError(f"{path} is not an Optuna journal (not one line of JSON operations); {JOURNAL_FIX}")
    if tail:
        raise JournalError(
            f"the tune journal {path} ends in an incomplete line (a tune killed while writing it?); "
            "remove its last line to resume it, or pass another --journal"
        )
    return logs


def _operations() -> set[int]:
    """Optuna's journal operation codes (any integer where its private enum cannot be imported)."""
    try:
        from optuna.storages.journal._storage import JournalOperation
    except ImportError:  # pragma: no cover - another Optuna layout: the replay checks the codes
        return set(range(1 << 16))
    return {int(op) for op in JournalOperation}


def _replay(path: Path, logs: list[dict[str, Any]]) -> tuple[Any, int, dict[str, Any] | None] | None:
    """The journal's operations replayed in memory: its storage, the tune study's id and settings
    (None: no study in it yet)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import BaseJournalBackend

    class Logs(BaseJournalBackend):
        def read_logs(self, log_number_from: int) -> list[dict[str, Any]]:
            return logs[log_number_from:]

        def append_logs(self, new: list[dict[str, Any]]) -> None:
            raise JournalError(f"the tune journal {path} is being checked, not written")

    try:
        storage = JournalStorage(Logs())
        studies = storage.get_all_studies()
    except Exception as e:  # noqa: BLE001 - Optuna's replay of foreign operations raises many types
        raise JournalError(f"the tune journal {path} does not replay ({type(e).__name__}: {first_line(str(e))}); {JOURNAL_FIX}") from None
    names = [s.study_name for s in studies]
    if not studies:
        return None
    if names != [STUDY]:
        raise JournalError(f"the journal {path} holds Optuna studies {names[:3]}, not a rosi tune's alone; {JOURNAL_FIX}")
    study = studies[0]
    expected = [optuna.study.StudyDirection.MAXIMIZE if d == "maximize" else optuna.study.StudyDirection.MINIMIZE for d in DIRECTIONS]
    if list(study.directions) != expected:
        raise JournalError(f"the tune journal {path} has other objectives than a rosi tune's (written by another version?); {JOURNAL_FIX}")
    stored = study.user_attrs.get("settings")
    if stored is not None and not isinstance(stored, dict):
        raise JournalError(f"the tune journal {path}: its settings are {type(stored).__name__}, not an object; {JOURNAL_FIX}")
    return storage, storage.get_study_id_from_name(STUDY), stored


_SCORE_FIELDS = {f.name for f in fields(Scores)}
_REQUIRED_SCORES = ("harmful", "harmless", "lookalike", "kl")


def _check_trials(path: Path, storage: Any, study_id: int) -> None:
    """The journal's finished trials carry what a resumed tune reads back: their settings (a known
    form) and scores; its confirmations are scores too."""
    from optuna.trial import TrialState

    try:
        trials = storage.get_all_trials(study_id, deepcopy=False)
        attrs = storage.get_study_user_attrs(study_id)
    except Exception as e:  # noqa: BLE001 - as in _replay
        raise JournalError(f"the tune journal {path} does not replay ({type(e).__name__}: {first_line(str(e))}); {JOURNAL_FIX}") from None
    for t in trials:
        if t.state != TrialState.COMPLETE:
            continue
        params, cheap = t.user_attrs.get("params"), t.user_attrs.get("cheap")
        if not isinstance(params, dict) or params.get("form") not in METHODS:
            raise JournalError(f"the tune journal {path}: trial {t.number} has no settings of a known form; {JOURNAL_FIX}")
        if not _is_scores(cheap):
            raise JournalError(f"the tune journal {path}: trial {t.number} has no scores; {JOURNAL_FIX}")
    for key, value in attrs.items():
        if key.startswith("confirmed:") and not _is_scores(value):
            raise JournalError(f"the tune journal {path}: {key} is not scores; {JOURNAL_FIX}")


def _is_scores(value: object) -> bool:
    def number(x: object) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    def verdicts(x: object) -> bool:  # per set, each confirmation prompt's verdict
        return x is None or (isinstance(x, dict) and all(isinstance(v, list) and all(isinstance(b, bool) for b in v) for v in x.values()))

    return (
        isinstance(value, dict)
        and set(value) <= _SCORE_FIELDS
        and all(number(value.get(k)) for k in _REQUIRED_SCORES)
        and all(value.get(k) is None or number(value[k]) for k in _SCORE_FIELDS if k != "refused")
        and verdicts(value.get("refused"))
    )


def _requeue_interrupted(study: Any) -> None:
    """Trials a killed tune left running are failed and queued again with the same settings."""
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs=dict(t.user_attrs))


def known_settings(model: str, options: TuneOptions) -> dict[str, Any]:
    """What a journal must agree on that is known before the model loads (``model``: its spec)."""
    return {
        "model": model,
        "seed": options.seed,
        "forms": list(options.forms),
        "score": options.score,
        "layer_window": options.layer_window,
    }


def settings(
    loaded: LoadedModel, prompts: PromptSets, options: TuneOptions, extraction: Extraction, confirm_harmless: PromptSet | None = None
) -> dict[str, Any]:
    """What a journal must agree on to be resumed: :func:`known_settings`, the weights, the
    direction's place, the validation sets and (with the guard, which alone uses them) the extra
    harmless confirmation prompts."""
    sets = {"val_harmful": prompts.val_harmful, "val_harmless": prompts.val_harmless, "val_lookalike": prompts.val_lookalike}
    extra = None if confirm_harmless is None or options.guard is None else [len(confirm_harmless), confirm_harmless.name]
    return {
        **known_settings(loaded.source.spec, options),
        "guard": options.guard,  # how validation is split (ranking and confirmation parts, or neither)
        "weights": loaded.source.weights_sha256,
        "layer": extraction.direction.layer,
        "position": extraction.direction.position,
        **{k: [len(v), v.name] for k, v in sets.items() if v is not None},
        "confirm_harmless": extra,
        **({"rank_harmless": options.rank_harmless} if extra is not None and options.rank_harmless else {}),
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
