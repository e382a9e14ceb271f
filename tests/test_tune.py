"""rosi tune on the planted look-alike model: it finds the planted optimum (a gate edit), keeps
to the constraints, writes the front and its plot, and resumes an interrupted study."""

from __future__ import annotations

import csv
import json

import pytest

from rosi import EditRecord
from rosi.errors import RosiError
from rosi.prompts import PromptSet
from rosi.workflows.options import ExtractOptions, MeasureOptions, TuneOptions
from rosi.workflows.tune import Measure, Scores, TrialResult, confirm_order, pareto_front, pick, trial_record_path, tune
from test_gate import lookalike_loaded, lookalike_sets

FAST = {
    "score": "first-token",
    "confirm": 0,
    "guard": None,  # the rule on all validation prompts; the guarded pick has its own tests
    "layer_window": 0,
    "extract": ExtractOptions(layer=1, position=-1, progress=False, batch_size=8),
}


def test_pareto_front_keeps_the_non_dominated_points():
    points = {0: (0.9, 0.1, 0.1, 0.0), 1: (0.8, 0.2, 0.2, 0.1), 2: (0.5, 0.0, 0.0, 0.0), 3: (0.9, 0.1, 0.1, 0.0)}
    assert pareto_front(points) == [0, 2, 3]  # 1 is dominated by 0; equal points both stay


def test_pick_respects_the_constraints():
    base = Scores(0.5, 0.1, 0.2, 0.0)
    trials = [
        TrialResult(0, {"form": "scale"}, Scores(1.0, 0.3, 0.5, 0.01)),  # best harmful, far too much over-refusal
        TrialResult(1, {"form": "gate"}, Scores(0.9, 0.12, 0.25, 0.02)),
        TrialResult(2, {"form": "gate"}, Scores(0.8, 0.1, 0.2, 0.01)),
    ]
    options = TuneOptions(max_harmless_rise=0.05, max_lookalike_rise=0.1, max_kl=0.05)
    number, how = pick(trials, base, options, base)
    assert number == 1 and "2 of 3" in how
    number, how = pick(trials, base, TuneOptions(max_harmless_rise=0.0, max_lookalike_rise=0.0, max_kl=0.0), base)
    assert number == 2  # only the unchanged one is within
    number, how = pick(trials[:1], base, options, base)
    assert number == 0 and "least violating" in how


def test_pick_with_a_harmful_floor_keeps_the_least_over_refusal_among_trials_as_safe_as_the_default():
    base = Scores(0.5, 0.1, 0.2, 0.0)
    trials = [
        TrialResult(0, {"form": "scale"}, Scores(0.8, 0.2, 0.5, 0.1), reference="default"),
        TrialResult(1, {"form": "gate"}, Scores(0.9, 0.15, 0.4, 0.05)),
        TrialResult(2, {"form": "surgical"}, Scores(0.82, 0.12, 0.3, 0.02)),  # as safe as the default, least over-refusal
        TrialResult(3, {"form": "gate"}, Scores(0.7, 0.1, 0.2, 0.01)),  # gentlest, but below the floor
    ]
    loose = dict(max_harmless_rise=1.0, max_lookalike_rise=1.0, max_kl=1.0)
    number, how = pick(trials, base, TuneOptions(**loose), base)
    assert number == 2 and "the default edit's 80%" in how and "3 of 4" in how  # trial 3 is below the floor
    assert pick(trials, base, TuneOptions(**loose, min_harmful=None), base)[0] == 1  # the most harmful refusal
    assert pick(trials, base, TuneOptions(**loose, min_harmful=0.85), base)[0] == 1
    assert pick(trials, base, TuneOptions(**loose, min_harmful=0.65), base)[0] == 3
    number, how = pick(trials, base, TuneOptions(**loose, min_harmful="paper"), base)
    assert number == 1 and "no paper trial" in how  # said, not silently dropped
    # stricter: none reaching the floor is within; of those, the least violating
    number, how = pick(trials, base, TuneOptions(max_lookalike_rise=0.05), base)
    assert number == 2 and "least violating" in how
    number, how = pick(trials, base, TuneOptions(**loose, min_harmful=0.95), base)
    assert number == 1 and "no trial reached" in how
    with pytest.raises(RosiError, match="--min-harmful"):
        TuneOptions(min_harmful="base")
    with pytest.raises(RosiError, match="--min-harmful"):
        TuneOptions(min_harmful=1.5)


def test_the_front_is_confirmed_in_the_order_the_pick_takes_it():
    base = Scores(0.5, 0.1, 0.2, 0.0)
    trials = [
        TrialResult(0, {"form": "scale"}, Scores(0.8, 0.2, 0.5, 0.1), reference="default"),
        TrialResult(1, {"form": "gate"}, Scores(0.9, 0.15, 0.4, 0.05)),  # reaches the floor, within
        TrialResult(2, {"form": "surgical"}, Scores(0.85, 0.12, 0.3, 0.02)),  # reaches it, within, less look-alike rise
        TrialResult(3, {"form": "gate"}, Scores(0.78, 0.1, 0.25, 0.01)),  # just below the floor: after those reaching it
        TrialResult(4, {"form": "probe"}, Scores(1.0, 0.3, 0.6, 0.3)),  # reaches it, far outside the constraints
    ]
    front = [0, 1, 2, 3, 4]
    loose = dict(max_harmless_rise=0.5, max_lookalike_rise=0.5, max_kl=0.1)
    order = [t.number for t in confirm_order(trials, front, base, TuneOptions(**loose))]
    assert order == [2, 1, 0, 4, 3]
    order = [t.number for t in confirm_order(trials, front, base, TuneOptions(**loose, min_harmful=None))]
    assert order == [1, 2, 0, 3, 4]  # within first, the most harmful of them first
    assert [t.number for t in confirm_order(trials, [1, 3], base, TuneOptions(**loose))] == [1, 3]


def test_tune_finds_the_planted_gate_edit_and_writes_its_front(tmp_path):
    loaded, _ = lookalike_loaded()
    options = TuneOptions(trials=16, forms=("scale", "gate", "rosi"), max_lookalike_rise=0.0, max_harmless_rise=0.0, max_kl=1.0, **FAST)
    report = tune(loaded, tmp_path / "out", lookalike_sets(), options)
    chosen = report.trial(report.chosen)
    assert chosen.params["form"] == "gate"
    base = report.base_cheap
    assert chosen.cheap.harmful > base.harmful and chosen.cheap.lookalike <= base.lookalike and chosen.cheap.harmless <= base.harmless
    references = {t.reference: t for t in report.trials if t.reference}
    assert set(references) == {"default", "paper"}
    assert references["default"].params == {"form": "scale", "layer": 1, "scale.scope": "selective", "scale.strength": 2.0}
    out = tmp_path / "out"
    saved = json.loads((out / "tune_report.json").read_text())
    assert saved["chosen"] == report.chosen and len(saved["trials"]) == len(report.trials) >= 8  # the rest made no edit
    rows = list(csv.DictReader(open(out / "tune_front.csv")))
    assert len(rows) == len(report.trials) and any(r["on_front"] == "True" for r in rows)
    assert (out / "tune_front.png").stat().st_size > 1000
    assert (out / "tune_journal.log").is_file() and not (tmp_path / "out.rosi-tune.journal").exists()
    assert (out / "rosi_edit.safetensors").is_file()


def test_an_interrupted_tune_resumes_from_its_journal(tmp_path, monkeypatch):
    loaded, _ = lookalike_loaded()
    journal = tmp_path / "study.journal"
    options = TuneOptions(trials=6, forms=("scale", "gate"), journal=journal, **FAST)
    calls = {"n": 0}
    cheap = Measure.cheap

    def dies_on_the_fifth(self):
        calls["n"] += 1
        if calls["n"] == 5:  # the base model's scores are call 1: trials 0-2 finish, trial 3 is killed
            raise KeyboardInterrupt
        return cheap(self)

    monkeypatch.setattr(Measure, "cheap", dies_on_the_fifth)
    with pytest.raises(KeyboardInterrupt):
        tune(loaded, tmp_path / "out", lookalike_sets(), options)
    monkeypatch.setattr(Measure, "cheap", cheap)
    assert journal.is_file() and not (tmp_path / "out").exists()
    report = tune(loaded, tmp_path / "out", lookalike_sets(), options)
    assert len(report.trials) + report.pruned == 6
    assert forms_run(journal) == {
        "scale": 3,
        "gate": 2,
        "rosi": 1,
    }  # the paper reference, and every form its share (ties: --forms order), the killed trial's included
    again = tune(loaded, tmp_path / "again", lookalike_sets(), options)  # a finished journal: nothing left to run
    assert [t.params for t in again.trials] == [t.params for t in report.trials]
    with pytest.raises(RosiError, match="other settings"):
        tune(loaded, tmp_path / "third", lookalike_sets(), TuneOptions(trials=6, forms=("gate",), journal=journal, **FAST))


def test_the_references_are_measured_whatever_forms_are_searched(tmp_path):
    loaded, _ = lookalike_loaded()
    journal = tmp_path / "study.journal"
    report = tune(loaded, tmp_path / "out", lookalike_sets(), TuneOptions(trials=5, forms=("gate",), journal=journal, **FAST))
    assert {t.reference: t.params["form"] for t in report.trials if t.reference} == {"default": "scale", "paper": "rosi"}
    assert forms_run(journal) == {"scale": 1, "rosi": 1, "gate": 3}  # the rest of the trials: the form searched


def forms_run(journal) -> dict[str, int]:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from optuna.trial import TrialState

    study = optuna.load_study(study_name="rosi-tune", storage=JournalStorage(JournalFileBackend(str(journal))))
    counts: dict[str, int] = {}
    for t in study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)):
        counts[t.params["form"]] = counts.get(t.params["form"], 0) + 1
    return counts


def test_tune_options_are_checked():
    with pytest.raises(RosiError, match="strength grid"):
        TuneOptions(forms=("ablate",))
    with pytest.raises(RosiError, match="--max-kl"):
        TuneOptions(max_kl=-1)
    with pytest.raises(RosiError, match="score"):
        TuneOptions(score="vibes")


def test_the_front_is_confirmed_on_replies_once_and_the_pick_uses_it(tmp_path, monkeypatch):
    loaded, _ = lookalike_loaded()
    journal = tmp_path / "study.journal"
    fast = {**FAST, "confirm": 2}
    options = TuneOptions(trials=8, forms=("scale", "gate"), journal=journal, measure=MeasureOptions(new_tokens=4), **fast)
    report = tune(loaded, tmp_path / "out", lookalike_sets(), options)
    confirmed = [t for t in report.trials if t.confirmed is not None]
    assert {t.reference for t in confirmed} >= {"default"}  # the references are always confirmed
    assert 1 <= len([t for t in confirmed if not t.reference]) <= 2
    assert report.trial(report.chosen).confirmed is not None and "4-token replies" in report.chosen_by
    saved = json.loads((tmp_path / "out" / "tune_report.json").read_text())
    assert all(t["confirmed"] is not None for t in saved["trials"] if t["number"] in {c.number for c in confirmed})
    # each confirmed trial's edit record where the benchmarks read it from
    assert all(EditRecord.load(trial_record_path(tmp_path / "out", c.number)).method == c.params["form"] for c in confirmed)
    calls = {"n": 0}
    replies = Measure.confirmed

    def counted(self):
        calls["n"] += 1
        return replies(self)

    monkeypatch.setattr(Measure, "confirmed", counted)
    again = tune(loaded, tmp_path / "again", lookalike_sets(), options)  # resumed from the finished journal
    assert calls["n"] == 1  # the base model's replies only: the trials' confirmations come from the journal
    assert again.chosen == report.chosen


def test_the_tune_selects_its_direction_as_rosi_run_does_and_measures_on_the_harder_prompts(tmp_path):
    from dataclasses import replace

    from rosi.edit.methods import EditForm
    from rosi.prompts import PromptSet
    from rosi.workflows.extract import extract

    loaded, _ = lookalike_loaded()
    sets = lookalike_sets()
    fast = {**FAST, "extract": replace(FAST["extract"], layer=None, position=None)}
    options = TuneOptions(trials=2, forms=("scale",), **fast)
    run = extract(loaded, sets, replace(options.extract, form=EditForm())).direction  # what rosi run selects
    hard = PromptSet(sets.harmful.instructions[:3], name="hard")
    report = tune(loaded, tmp_path / "out", sets, options, hard_train=hard, hard_val=hard)
    assert (int(report.direction["layer"]), int(report.direction["position"])) == (run.layer, run.position)
    assert report.trial(0).reference == "default" and report.trial(0).params["layer"] == run.layer
    saved = json.loads((tmp_path / "out" / "tune_report.json").read_text())
    assert saved["options"]["layer"] == run.layer
    assert report.samples_mib > 0
    settings = json.loads((tmp_path / "out" / "tune_journal.log").read_text().splitlines()[1])["user_attr"]["settings"]
    assert settings["val_harmful"] == [len(sets.val_harmful) + 3, "h+hard"]


def test_the_base_model_scores_no_kl_on_either_measuring_path():
    """Cheap scores share the prompts' prefix, confirmed ones do not; each path's KL is taken
    against the base model on the same path, so an unchanged model's KL is exactly 0 on both."""
    import torch

    from conftest import tiny_model
    from rosi.model.chat import ChatFormat
    from rosi.model.generation import shared_prefix_batches

    loaded, _ = lookalike_loaded()
    loaded.tokenizer.chat_template = "how to bake bread how to make a cake " + loaded.tokenizer.chat_template  # a shared preamble
    loaded.model = tiny_model("llama")  # random, so the two paths round differently
    prompts = lookalike_sets()
    assert shared_prefix_batches(loaded.model, ChatFormat(loaded.tokenizer), list(prompts.val_harmful.instructions), 4, torch.device("cpu"))
    measure = Measure(loaded, prompts, TuneOptions(extract=ExtractOptions(batch_size=4), measure=MeasureOptions(new_tokens=4)))
    assert measure.cheap().kl == 0.0 and measure.confirmed().kl == 0.0


def _confirmed(number, reference=None, *, harmful, harmless, lookalike):
    refused = {"harmful": harmful, "harmless": harmless, "lookalike": lookalike}
    rates = {k: sum(v) / len(v) for k, v in refused.items()}
    scores = Scores(rates["harmful"], rates["harmless"], rates["lookalike"], 0.0, refused=refused)
    return TrialResult(number, {"form": "gate"}, scores, scores, reference)


def test_the_guarded_pick_keeps_the_default_when_every_advantage_is_noise():
    import random

    from rosi.workflows.tune.pick import guarded_pick

    rng = random.Random(0)
    n = 100
    default = [rng.random() < 0.5 for _ in range(n)]
    harmful, harmless = [True] * 90 + [False] * 10, [False] * 95 + [True] * 5
    results = [_confirmed(0, "default", harmful=harmful, harmless=harmless, lookalike=default)]
    for number in range(1, 9):  # each trial flips a few look-alike verdicts each way: advantages of noise alone
        flipped = list(default)
        for i in rng.sample(range(n), 6):
            flipped[i] = not flipped[i]
        results.append(_confirmed(number, harmful=harmful, harmless=harmless, lookalike=flipped))
    chosen, how, guards = guarded_pick(results, margin=0.03)
    assert chosen == 0 and "the default edit is kept" in how and len(guards) == 8
    assert not any(g.passes for g in guards)
    # a real advantage: 30 fewer look-alikes refused, the same harmful and harmless verdicts
    better = [False if i < 30 else x for i, x in enumerate(default)]
    assert sum(better) < sum(default) - 10
    results.append(_confirmed(9, harmful=harmful, harmless=harmless, lookalike=better))
    chosen, how, _ = guarded_pick(results, margin=0.03)
    assert chosen == 9 and "beyond noise" in how
    # the same advantage bought with harmful refusal beyond the margin does not qualify
    weaker = [False] * 10 + harmful[10:]
    results[-1] = _confirmed(9, harmful=weaker, harmless=harmless, lookalike=better)
    assert guarded_pick(results, margin=0.03)[0] == 0


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5, True])
def test_a_seed_outside_the_samplers_range_is_refused_when_the_options_are_made(seed):
    with pytest.raises(RosiError, match="--seed"):
        TuneOptions(seed=seed)


def test_a_guarded_tune_ranks_on_one_half_of_validation_and_picks_on_the_other(tmp_path):
    loaded, _ = lookalike_loaded()
    sets = lookalike_sets()
    options = TuneOptions(**{**FAST, "confirm": 2, "guard": 0.03}, trials=6, forms=("scale", "gate"), measure=MeasureOptions(new_tokens=4))
    extra = PromptSet(("how to bake a kite", "make soup"), name="extra")
    report = tune(loaded, tmp_path / "out", sets, options, confirm_harmless=extra)
    rank, confirm = sets.val_lookalike.halves()
    assert not set(rank.instructions) & set(confirm.instructions) and len(rank) + len(confirm) == len(sets.val_lookalike)
    confirmed = [t for t in report.trials if t.confirmed is not None]
    assert all(len(t.confirmed.refused["lookalike"]) == len(confirm) for t in confirmed)  # verdicts of the confirmation half
    harmless_confirm = len(sets.val_harmless.halves()[1]) + len(extra) - 1  # the extra prompts that do not rank confirm
    assert all(len(t.confirmed.refused["harmless"]) == harmless_confirm for t in confirmed)
    saved = json.loads((tmp_path / "out" / "tune_report.json").read_text())
    assert len(saved["guarded"]) == len([t for t in confirmed if not t.reference])
    chosen = report.trial(report.chosen)
    passing = [g["trial"] for g in saved["guarded"] if g["passes"]]
    if passing:  # the pick beat the default beyond noise on the confirmation half
        assert report.chosen in passing and "beyond noise" in report.chosen_by
    else:  # or the default edit is kept, and the report says so
        assert chosen.reference == "default" and "the default edit is kept" in report.chosen_by
    settings = json.loads((tmp_path / "out" / "tune_journal.log").read_text().splitlines()[1])["user_attr"]["settings"]
    assert settings["guard"] == 0.03 and settings["confirm_harmless"] == [2, "extra"] and settings["rank_harmless"] == 48


def test_the_broad_harmless_prompts_rank_on_one_half_and_confirm_on_the_other():
    from rosi.prompts import builtin
    from rosi.workflows.tune.measurement import split_broad

    broad = builtin("harmless_styles", "val")
    ranking, confirming = split_broad(broad, 48)
    assert ranking is not None and len(ranking) == 48 and len(confirming) == len(broad) - 48
    assert not set(ranking.instructions) & set(confirming.instructions)
    assert set(ranking.categories) == set(broad.categories)  # every style ranks
    assert split_broad(broad, 0) == (None, broad)
    with pytest.raises(RosiError, match="--rank-harmless"):
        TuneOptions(rank_harmless=-1)


def test_validation_halves_split_every_kind_evenly():
    from rosi.prompts import builtin

    val = builtin("lookalike", "val")
    rank, confirm = val.halves()
    assert len(rank) + len(confirm) == len(val) and not set(rank.instructions) & set(confirm.instructions)
    for kind in set(val.categories):
        assert abs(rank.categories.count(kind) - confirm.categories.count(kind)) <= 1
