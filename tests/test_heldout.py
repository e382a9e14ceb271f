"""The library calls behind the benchmarks' result rows: the held-out sets and their sampling
(rosi.eval.heldout), refusal by style and leave-one-style-out fits (rosi.eval.styles), a tune's
trials and edits read back from its output and the statistics over several tunes
(rosi.workflows.tune), rank correlations and paired comparisons (rosi.metrics), and every report
rosi writes read back with ``from_json``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"


@pytest.fixture
def planted_model(monkeypatch):
    """The planted model (it answers "I I I ..." to a bomb prompt, "bread" to others), with the
    marker judge taught that "I I I" refuses, so the verdicts are not all alike."""
    import transformers as T

    import planted
    from rosi.judges import markers
    from rosi.model.loading import LoadedModel, ModelSource

    monkeypatch.setattr(markers, "_MARKERS", ("i i i",))
    model = planted.model(planted.unit_vector(0))
    model.generation_config = T.GenerationConfig(eos_token_id=2, pad_token_id=0)
    return LoadedModel(model, planted.tokenizer(), ModelSource("planted", "memory", "", "0" * 64))


def _before(loaded, prompts: list[str], new_tokens: int) -> tuple[list[str], list[bool]]:
    """What the benchmarks did before the meter: generate, then the marker judge's functions."""
    from rosi.judges.markers import is_refusal
    from rosi.model.chat import ChatFormat
    from rosi.model.generation import generate

    replies = generate(loaded.model, ChatFormat(loaded.tokenizer), prompts, max_new_tokens=new_tokens, batch_size=4)
    return replies, [is_refusal(r) for r in replies]


def test_refusal_row_measures_through_the_meter_what_the_benchmarks_measured_before(planted_model):
    import planted
    from rosi.eval.heldout import instructions, refusal_row
    from rosi.metrics import Rate
    from rosi.prompts import PromptSet

    sets = {
        "harmful": [("a", PromptSet(tuple(planted.HARMFUL[:3]))), ("b", PromptSet((*planted.HARMFUL[3:], *planted.HARMLESS[:3])))],
        "harmless": [("c", PromptSet(tuple(planted.HARMLESS)))],
    }
    row = refusal_row(planted_model, "base model", sets, 6, 4)
    for role, parts in sets.items():
        replies, flags = _before(planted_model, instructions(parts), 6)
        rate = Rate(sum(flags), len(flags))
        expected = {"rate": rate.value, "k": rate.k, "n": rate.n, "wilson95": [round(x, 4) for x in rate.interval]}
        start = 0
        for source, p in parts if len(parts) > 1 else []:
            expected[source] = {"rate": sum(flags[start : start + len(p)]) / len(p), "n": len(p)}
            start += len(p)
        assert row[role] == expected
        assert [s["reply"] for s in row["samples"][role]] == replies[:4]
    assert row["harmful"]["k"] == 6 and row["harmful"]["a"]["rate"] == 1.0 and row["harmless"]["k"] == 0


def test_verdict_row_measures_through_the_meter_what_tune_eval_measured_before(planted_model):
    import torch

    import planted
    from rosi.eval.heldout import verdict_row
    from rosi.judges.markers import is_partial
    from rosi.metrics import Rate
    from rosi.model.chat import ChatFormat
    from rosi.model.generation import next_token_logprobs

    sets = {"harmful": planted.HARMFUL, "harmless": [*planted.HARMLESS[:4], *planted.HARMFUL[:2]], "lookalike": planted.HARMLESS}
    row, logprobs = verdict_row(planted_model, "base model", sets, 6, 4)
    for role, prompts in sets.items():
        replies, flags = _before(planted_model, prompts, 6)
        rate = Rate(sum(flags), len(flags))
        assert row[role] == {
            "rate": rate.value,
            "k": rate.k,
            "n": rate.n,
            "wilson95": [round(x, 4) for x in rate.interval],
            "partial": sum(map(is_partial, replies)) / len(replies),
            "refused": flags,
        }
        if role != "harmless":  # the harmless replies come with the first-token distributions, not kept
            assert [s["reply"] for s in row["samples"][role]] == replies[:3]
    assert row["harmless"]["refused"] == [False] * 4 + [True] * 2
    expected = next_token_logprobs(planted_model.model, ChatFormat(planted_model.tokenizer), sets["harmless"], batch_size=4)
    torch.testing.assert_close(logprobs, expected, atol=1e-5, rtol=1e-5)
    again, _ = verdict_row(planted_model, "again", sets, 6, 4, base_logprobs=logprobs)
    assert again["kl_harmless_first_token"] == pytest.approx(0.0, abs=1e-6)


def test_the_held_out_rows_take_any_judge_and_leave_unjudged_prompts_out(planted_model):
    """A judge without a verdict on some prompts (a safety judge whose output did not parse): the
    rates count the judged prompts, the rows say how many were not judged, the paired
    differences pair only prompts judged in both rows."""
    import planted
    from rosi.eval.heldout import refusal_row, verdict_row
    from rosi.judges import Judge, Verdict
    from rosi.metrics import PairedDifference
    from rosi.prompts import PromptSet

    class Unsure(Judge):
        name = "unsure"

        @classmethod
        def from_spec(cls, argument):
            return cls()

        def judge(self, prompts, replies):
            return [Verdict() if "cake" in p else Verdict(unsafe="bomb" not in p) for p in prompts]

    harmful = PromptSet(tuple(planted.HARMFUL))  # one names a cake: unjudged
    row = refusal_row(planted_model, "x", {"harmful": [("a", harmful), ("b", PromptSet(("make a cake",)))]}, 4, 4, Unsure())
    assert row["harmful"]["k"] == 5 and row["harmful"]["n"] == 5 and row["harmful"]["unjudged"] == 2
    assert row["harmful"]["a"] == {"rate": 1.0, "n": 5} and row["harmful"]["b"]["n"] == 0
    tuned, _ = verdict_row(planted_model, "x", {"harmless": list(planted.HARMLESS)}, 4, 4, judge=Unsure())
    assert tuned["harmless"]["partial"] is None and tuned["harmless"]["refused"].count(None) == 2
    d = PairedDifference.of_verdicts([True, None, False, True], [True, True, None, False])
    assert (d.n, d.a_only, d.b_only) == (2, 1, 0)


def _tune_report(trials, chosen, seed=0, seconds=None):
    from rosi.workflows.tune.pick import Scores
    from rosi.workflows.tune.report import TuneReport

    base = Scores(0.5, 0.1, 0.2, 0.0)
    return TuneReport("m", {"seed": seed}, {"layer": "14"}, base, base, trials, [t.number for t in trials], chosen, "rule", seconds or {})


def test_tune_stability_counts_the_picks_of_several_seeds(tmp_path):
    from rosi.workflows.tune.analysis import Pick, stability
    from rosi.workflows.tune.pick import Scores, TrialResult
    from rosi.workflows.tune.report import TuneReport

    def tune_output(seed, form, layer, harmful):
        folder = tmp_path / f"tuned-{seed}"
        folder.mkdir()
        figures = Scores(harmful, 0.1, 0.4, 0.05)
        chosen = TrialResult(7, {"form": form, "layer": layer}, figures, figures)
        report = _tune_report([chosen], 7, seed, {"trials": 60.0 * (seed + 1), "confirm": 30.0})
        (folder / "tune_report.json").write_text(json.dumps(report.to_json()))
        return folder

    picks = [
        Pick.of(TuneReport.load(folder), str(folder))
        for folder in (
            tune_output(s, f, layer, h) for s, f, layer, h in ((0, "gate", 14, 0.9), (1, "gate", 14, 0.8), (2, "probe", 15, 1.0))
        )
    ]
    summary = stability(picks)
    assert summary["most_common"] == {"form": "gate", "layer": 14, "tunes": 2} and summary["same_form_and_layer"] == 2 / 3
    assert summary["forms"] == {"gate": 2, "probe": 1}
    assert summary["spread"]["harmful"]["min"] == 0.8 and summary["spread"]["harmful"]["max"] == 1.0
    assert [p.seconds for p in picks] == [90.0, 150.0, 210.0] and summary["seconds"] == {"mean": 150.0, "max": 210.0}
    assert picks[0].to_json()["figures"] == {"harmful": 0.9, "harmless": 0.1, "lookalike": 0.4, "kl": 0.05}


def test_spearman_ranks_ties_by_their_mean_rank_and_needs_three_varied_pairs():
    from rosi.metrics import _ranks, spearman

    assert list(_ranks([3.0, 1.0, 3.0, 2.0])) == [3.5, 1.0, 3.5, 2.0]
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2], [1, 2]) is None and spearman([1, 1, 1], [1, 2, 3]) is None
    with pytest.raises(ValueError, match="paired"):
        spearman([1, 2, 3], [1, 2])
    scipy = pytest.importorskip("scipy.stats")
    x, y = [0.1, 0.4, 0.4, 0.2, 0.9, 0.3], [3, 1, 2, 2, 5, 0]
    assert spearman(x, y) == pytest.approx(scipy.spearmanr(x, y).statistic, abs=1e-12)


def test_cheap_scores_rank_correlation_names_the_score_that_orders_trials_like_their_confirmation():
    from rosi.workflows.tune.analysis import best, confirmed, correlations
    from rosi.workflows.tune.pick import Scores, TrialResult

    # four trials: the short replies' harmful refusal orders them as the confirmation does, the
    # first-token log-odds in reverse; one unconfirmed trial is left out
    trials = [
        TrialResult(
            i,
            {"form": "gate"},
            Scores(c - 0.1, 0.1, 0.3, 0.01 * i, harmful_log_odds=-c, lookalike_log_odds=0.0),
            Scores(c, 0.1 + 0.01 * i, 0.3, 0.02 * i),
        )
        for i, c in enumerate([0.5, 0.6, 0.7, 0.9])
    ] + [TrialResult(9, {"form": "gate"}, Scores(1.0, 0.1, 0.3, 0.0))]
    found = confirmed(_tune_report(trials, 0))
    assert [t.number for t in found] == [0, 1, 2, 3]
    pooled = correlations(found)
    assert pooled["harmful"]["harmful"] == {"spearman": pytest.approx(1.0), "n": 4}
    assert pooled["harmful"]["harmful_log_odds"]["spearman"] == pytest.approx(-1.0)
    assert pooled["harmless"]["kl"]["spearman"] == pytest.approx(1.0) and pooled["harmless"]["harmless"]["spearman"] is None
    assert best(pooled) == {"harmful": "harmful", "harmless": "kl", "lookalike": None, "kl": "kl"}


def test_styles_leaves_out_one_style_of_the_joined_training_set():
    from rosi.eval import styles as style_holdout
    from rosi.prompts import builtin, load_prompts

    joined = load_prompts("builtin:harmful+harmful_styles:train")
    styles = style_holdout.by_style(joined)
    assert list(styles) == ["fiction", "imperative", "multipart", "persuasive", "question"]
    assert sum(map(len, styles.values())) == len(joined) and len(styles["imperative"]) == len(builtin("harmful", "train"))
    without = style_holdout.leave_out(joined, "fiction")
    assert len(without) == len(joined) - len(styles["fiction"])
    assert not set(styles["fiction"]) & set(without.instructions)
    assert style_holdout.leave_out(joined, None) == joined
    with pytest.raises(ValueError, match="leaves no prompts"):
        style_holdout.leave_out(builtin("harmful", "train"), "imperative")
    with pytest.raises(ValueError, match="no prompts of style 'fiction'"):
        style_holdout.leave_out(builtin("harmful", "train"), "fiction")


def test_styles_leaves_a_harmless_style_out_with_its_namesakes_and_names_each_sides_worst():
    from rosi.eval import styles as style_holdout
    from rosi.prompts import builtin, load_prompts

    joined = load_prompts("builtin:harmless+harmless_styles:train")
    styles = list(style_holdout.by_style(builtin("harmless_styles", "train"), style_holdout.plain))
    assert len(styles) >= 8 and {"code", "maths", "advice", "multipart"} <= set(styles)
    without = style_holdout.leave_out(joined, "code", style_holdout.harmless_styles_of)
    gone = set(joined.instructions) - set(without.instructions)
    # rosi's own harmless "coding" prompts are the same style, so they leave with harmless_styles' "code"
    coding = {t for t, c in zip(joined.instructions, joined.categories or (), strict=True) if c in ("code", "coding")}
    assert gone == coding and {"code", "coding"} <= set(joined.categories or ())
    assert all(c not in ("code", "coding") for c in without.categories or ())
    assert style_holdout.leave_out(joined, "maths", style_holdout.harmless_styles_of).categories.count("advice_math") == 0  # type: ignore[union-attr]

    def row(side, left, **rates):
        return {
            "side": side,
            "left_out": left,
            **{f"{s} style {n}": {"rate": r} for s, n, r in (k.split("_") + [v] for k, v in rates.items())},
        }

    rows = [
        row(None, None, harmful_a=0.9, harmful_b=0.8, harmless_c=0.1, harmless_d=0.0),
        row("harmful", "a", harmful_a=0.5, harmful_b=0.8),
        row("harmful", "b", harmful_a=0.9, harmful_b=0.7),
        row("harmless", "c", harmless_c=0.1),
        row("harmless", "d", harmless_d=0.3),
    ]
    harmful = style_holdout.left_out_summary(rows, "harmful", min)
    assert harmful["worst_left_out"] == "a" and harmful["left_out_minus_seen"]["a"] == pytest.approx(-0.4)
    harmless = style_holdout.left_out_summary(rows, "harmless", max)
    assert harmless["worst_left_out"] == "d" and harmless["left_out_rate"] == {"c": 0.1, "d": 0.3}


def test_styles_plan_measures_each_left_out_fit_on_its_own_style_when_asked():
    from rosi.eval import styles as style_holdout

    sets = {
        "harmful": {"harmful style a": ["x"], "harmful style b": ["y"], "public": ["z"]},
        "harmless": {"harmless style c": ["w"]},
    }
    styles = {"harmful": ["a", "b"], "harmless": ["c"]}
    runs = style_holdout.plan(["harmful", "harmless"], styles, sets)
    assert [(side, left) for side, left, _ in runs] == [(None, None), ("harmful", "a"), ("harmful", "b"), ("harmless", "c")]
    assert set(runs[0][2]) == {"harmful style a", "harmful style b", "public", "harmless style c"}
    assert set(runs[1][2]) == {"harmful style a", "harmful style b", "public"} and set(runs[3][2]) == {"harmless style c"}
    short = style_holdout.plan(["harmful"], styles, sets, left_out_only=True)
    assert [set(m) for _, _, m in short] == [{"harmful style a", "harmful style b", "public"}, {"harmful style a"}, {"harmful style b"}]


def test_the_plot_legend_names_a_trials_form():
    from rosi.eval.heldout import legend

    assert legend({"label": "trial 7", "params": {"form": "surgical", "layer": 17}}) == "trial 7: surgical"
    assert legend({"label": "neurons (rosi run)", "record": "x.patch"}) == "neurons (rosi run)"


# ---- reports read back ----------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(RESULTS.glob("*/tune_report.json")), ids=lambda p: p.parent.name)
def test_a_committed_tune_report_reads_back_into_the_json_it_was(path):
    """Every committed tune report reads back; those of the current format give back the same JSON
    (the older ones lack fields that have defaults now)."""
    from rosi.workflows.tune.report import TuneReport

    data = json.loads(path.read_text())
    report = TuneReport.load(path.parent)
    again = report.to_json()
    if "guarded" in data and all("refused" in t["cheap"] for t in data["trials"]):
        assert again == data
    assert TuneReport.from_json(again).to_json() == again
    assert report.trial(report.chosen).params == next(t["params"] for t in data["trials"] if t["number"] == data["chosen"])


def test_a_tune_reports_edits_are_its_references_then_its_pick(tmp_path):
    from rosi.workflows.tune.pick import Scores, TrialResult
    from rosi.workflows.tune.report import TuneReport, record_edits, trial_record_path

    s = Scores(0.9, 0.1, 0.3, 0.01, refused={"harmful": [True, False]})
    trials = [
        TrialResult(0, {"form": "scale"}, s, s, "default"),
        TrialResult(3, {"form": "gate"}, s, None),
        TrialResult(5, {"form": "gate"}, s, s),
    ]
    report = _tune_report(trials, 5)
    (tmp_path / "tune_report.json").write_text(json.dumps(report.to_json()))
    edits = TuneReport.load(tmp_path).edits(tmp_path)
    assert [e.label for e in edits] == ["trial 0 (default)", "trial 5 (chosen)"]
    assert edits[1].record == trial_record_path(tmp_path, 5) and edits[1].about["validation"]["refused"] == {"harmful": [True, False]}
    assert [e.label for e in report.edits(tmp_path, [3, 5, 3])] == ["trial 3", "trial 5 (chosen)"]
    assert report.edits(tmp_path, [3])[0].about == {"params": {"form": "gate"}, "validation": None}
    assert record_edits(["run=x/edit.safetensors"]) == [("run", Path("x/edit.safetensors"), {"record": "x/edit.safetensors"})]


def test_a_folder_without_a_tune_report_is_named(tmp_path):
    from rosi.errors import RosiError
    from rosi.workflows.tune.report import TuneReport

    with pytest.raises(RosiError, match="not a rosi tune report"):
        TuneReport.load(tmp_path)
    (tmp_path / "tune_report.json").write_text('{"model": "m"}')
    with pytest.raises(RosiError, match="KeyError"):
        TuneReport.load(tmp_path)


def test_a_run_report_reads_back_into_the_json_it_was(tmp_path):
    from rosi.edit.scope import WriterChoice, WriterSignal
    from rosi.edit.strength import StrengthSearch, StrengthStep
    from rosi.errors import RosiError
    from rosi.measure import RefusalRate
    from rosi.model.costs import Phase
    from rosi.workflows.run import Rates, RunReport

    refused = (True, False, None, True)
    rates = [
        Rates("base model", {"harmful": RefusalRate(refused, (True, False, False, False), "markers", 64)}),
        Rates("edited", {"harmful": RefusalRate(refused, None, "llm", 64), "harmless": RefusalRate((False, False))}),
    ]
    choice = WriterChoice("selective", 0.25, ["model.layers.3.mlp.down_proj.weight"], (WriterSignal("w", 3, 0.5, 0.1),), "kept 1")
    search = StrengthSearch("scale", 2.0, "budget", (StrengthStep(0.0, 0.5, 0.1), StrengthStep(2.0, None, 0.3)), "budget")
    report = RunReport(
        "pypi:m",
        "scale",
        2.0,
        {"layer": "3"},
        {"scale": choice},
        rates,
        [search],
        None,
        {"extract": 1.5},
        64,
        [Phase("extract", 1.5, 3, 0, 12.0)],
    )
    data = json.loads(json.dumps(report.to_json()))
    again = RunReport.from_json(data)
    assert again.to_json() == data and again.search["scale"].strength == 2.0
    assert again.rates[0].measured["harmful"].partial_rate == pytest.approx(1 / 4)
    (tmp_path / "rosi_report.json").write_text(json.dumps(data))
    assert RunReport.load(tmp_path).to_json() == data
    (tmp_path / "rosi_report.json").write_text("[]")
    with pytest.raises(RosiError, match="not a rosi run report"):
        RunReport.load(tmp_path)


# ---- the held-out sets ----------------------------------------------------------------------


@pytest.mark.skipif(not DATA.is_dir(), reason="the public datasets are not beside the repository")
def test_the_held_out_sets_are_drawn_the_same_way_every_time():
    from rosi.eval.heldout import coconot_contrast, describe_sets, held_out, instructions, tune_sets

    sets = held_out(102, DATA)
    assert describe_sets(sets) == {
        "harmful": [{"source": "advbench", "n": 34}, {"source": "jailbreakbench", "n": 34}, {"source": "malicious_instruct", "n": 34}],
        "harmless": [{"source": "alpaca", "n": 102}],
        "contrast": [{"source": "jailbreakbench-benign", "n": 100}],
    }
    assert instructions(held_out(102, DATA)["harmful"]) == instructions(sets["harmful"])  # seeded
    assert len(held_out(10, DATA)["harmful"][2][1]) == 4  # the last source takes the remainder
    flat = tune_sets(102, DATA)
    assert list(flat) == ["harmful", "harmless", "jbb_benign", "coconot_contrast"] and flat["harmful"] == instructions(sets["harmful"])
    assert flat["coconot_contrast"] == list(coconot_contrast(102, DATA).instructions) and len(flat["coconot_contrast"]) == 100


def test_the_harmful_styles_come_one_part_per_style():
    from rosi.eval.styles import harmful_styles, style_sets

    parts = harmful_styles()
    assert [s for s, _ in parts] == ["fiction", "multipart", "persuasive", "question"] and all(len(p) for _, p in parts)
    styles, sets = style_sets({"public": ["x"]})
    assert styles["harmful"] == [s for s, _ in parts] and sets["harmful"]["public"] == ["x"]
    assert set(sets["harmless"]) == {f"harmless style {s}" for s in styles["harmless"]}


def test_training_without_a_style_mirrors_it_on_the_harmless_side_when_asked():
    from rosi.eval.styles import training_without
    from rosi.prompts import load_prompts
    from rosi.prompts.sets import PromptSets

    every = PromptSets(
        load_prompts("builtin:harmful+harmful_styles:train"),
        load_prompts("builtin:harmless+harmless_styles:train"),
        load_prompts("builtin:harmful:val"),
        load_prompts("builtin:harmless:val"),
    )
    assert training_without(every, None, None) is every
    alone = training_without(every, "harmful", "multipart")
    assert len(alone.harmful) < len(every.harmful) and alone.harmless == every.harmless
    mirrored = training_without(every, "harmful", "multipart", mirror=True)
    assert len(mirrored.harmless) < len(every.harmless) and "multipart" not in (mirrored.harmless.categories or ())
    assert training_without(every, "harmless", "code").harmful == every.harmful


def test_replies_written_are_read_back_by_row_and_set_in_order(tmp_path):
    from rosi.eval.heldout import read_replies, write_replies

    sets = {"harmful": ["a", "b"], "harmless": ["c"]}
    rows = [
        {"label": "base model", "_replies": {"harmful": ["ra", "rb"], "harmless": ["rc"]}},
        {"label": "edit", "_replies": {"harmful": ["ea", "eb"], "harmless": ["ec"]}},
    ]
    write_replies(tmp_path / "x.replies.jsonl", "m", rows, sets)
    back = read_replies(tmp_path / "x.replies.jsonl")
    assert list(back) == [("base model", "harmful"), ("base model", "harmless"), ("edit", "harmful"), ("edit", "harmless")]
    assert [(x["prompt"], x["reply"]) for x in back[("edit", "harmful")]] == [("a", "ea"), ("b", "eb")]
    assert back[("base model", "harmless")][0]["model"] == "m"
