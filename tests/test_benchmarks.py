"""The benchmark scripts: one naming rule (``--name``, defaulting to the script's own name), every
result file records the commit and rosi version it measured, the model is an argument, every
committed result file can be written again under its name; and the prepared GPU benchmark runs
end to end (tiny shapes on the CPU), so it is ready for a CUDA machine."""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import rosi

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
NOT_BENCHMARKS = {"results_pages.py"}  # scripts in benchmarks/ that measure nothing (it writes the docs' pages)
MODEL_ID = re.compile(r"pypi:[a-z0-9][a-z0-9.-]*|(?i:qwen2\.5)")  # a model id typed into a script
SCRIPTS = sorted(p for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_") and p.name not in NOT_BENCHMARKS)


@pytest.fixture
def common(monkeypatch, tmp_path):
    """benchmarks/_common.py, writing into a temporary results folder."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import _common

    monkeypatch.setattr(_common, "RESULTS", tmp_path / "results")
    return _common


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=BENCHMARKS.parent, capture_output=True, text=True, timeout=60)
    except OSError:
        return None
    return done.stdout if done.returncode == 0 else None


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == name]


def test_a_written_result_records_its_name_commit_and_version(common, monkeypatch):
    monkeypatch.setattr(sys, "argv", [str(BENCHMARKS / "refusal_eval.py"), "out dir", "--name", "refusal_eval_x"])
    path = common.write_results("refusal_eval_x", {"rows": [1, 2]})
    assert path == common.RESULTS / "refusal_eval_x.json"
    data = json.loads(path.read_text())
    assert data["benchmark"] == "refusal_eval_x" and data["rows"] == [1, 2] and data["machine"]["python"]
    assert data["rosi_version"] == rosi.__version__
    head = _git("rev-parse", "HEAD")
    assert data["commit"] == (head.strip() if head else None)
    status = _git("status", "--porcelain", "--", "src")
    assert data["dirty"] == (bool(status.strip()) if status is not None else None)
    assert data["command"] == "python benchmarks/refusal_eval.py 'out dir' --name refusal_eval_x"
    assert list(data)[:7] == ["benchmark", "date", "command", "commit", "dirty", "rosi_version", "machine"]


def test_write_results_keeps_its_own_fields_and_names(common, tmp_path):
    with pytest.raises(ValueError, match="commit"):
        common.write_results("x", {"commit": "mine"})
    for bad in ("a/b", "x.json", "", "../x"):
        with pytest.raises(argparse.ArgumentTypeError):
            common.result_name(bad)
    path = common.write_results("x", {}, tmp_path / "elsewhere" / "y.json")  # gpu_pipeline's --out
    assert path == tmp_path / "elsewhere" / "y.json" and json.loads(path.read_text())["benchmark"] == "x"


def test_name_defaults_to_the_script_and_model_to_the_default_model(common):
    parser = argparse.ArgumentParser()
    common.add_name(parser, str(BENCHMARKS / "tune_eval.py"))
    common.add_model(parser, "--base")
    args = parser.parse_args([])
    assert args.name == "tune_eval" and args.model == common.DEFAULT_MODEL == "pypi:qwen2.5-coder-0.5b-instruct"
    args = parser.parse_args(["--name", "tune_eval_qwen1.5b", "--base", "pypi:qwen2.5-coder-1.5b-instruct"])
    assert args.name == "tune_eval_qwen1.5b" and args.model == "pypi:qwen2.5-coder-1.5b-instruct"
    with pytest.raises(SystemExit):
        parser.parse_args(["--name", "results/x.json"])


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_every_script_follows_the_naming_rule(script):
    """``add_name(parser, __file__)``, every result written through ``write_results(args.name, ...)``,
    no file written any other way, and no model id typed into the code (``--model`` instead)."""
    tree = ast.parse(script.read_text(encoding="utf-8"))
    names = _calls(tree, "add_name")
    assert len(names) == 1 and [ast.unparse(a) for a in names[0].args] == ["parser", "__file__"], (
        f"{script.name}: add_name(parser, __file__)"
    )
    writes = _calls(tree, "write_results")
    assert writes and all(ast.unparse(c.args[0]) == "args.name" for c in writes), f"{script.name}: write_results(args.name, ...)"
    assert "json.dump(" not in ast.unparse(tree), f"{script.name}: results go through write_results"
    docstrings = {id(n.body[0].value) for n in ast.walk(tree) if isinstance(n, (ast.Module, ast.FunctionDef)) and ast.get_docstring(n)}
    literals = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]
    typed = [s for s in literals if MODEL_ID.search(s)]
    assert not typed, f"{script.name}: model ids in the code {typed}; take them as --model (default _common.DEFAULT_MODEL)"


def test_every_committed_result_can_be_written_again_under_its_name():
    """A result file's name is its ``benchmark`` field, and a script writes it: its own name, or an
    explicit ``--name`` that starts with the script's name (as the recorded command says)."""
    stems = {p.stem for p in SCRIPTS}
    results = sorted((BENCHMARKS / "results").glob("*.json"))
    assert results
    for path in results:
        data = json.loads(path.read_text())
        name = path.stem
        assert data.get("benchmark") == name, f"{path.name}: benchmark field {data.get('benchmark')!r}"
        scripts = [s for s in stems if name == s or name.startswith(s + "_")]
        assert scripts, f"{path.name}: no benchmark script writes this name"
        if data.get("command"):
            argv = data["command"].split()
            assert argv[1] in {f"benchmarks/{s}.py" for s in scripts}, f"{path.name}: {data['command']}"
            assert name in stems or ("--name" in argv and argv[argv.index("--name") + 1] == name), f"{path.name}: {data['command']}"


def test_gpu_pipeline_benchmark_runs_on_the_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu_pipeline.py"), "--tiny", "--out", str(out)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["benchmark"] == "gpu_pipeline" and result["device"] == "cpu"
    assert result["rosi_version"] == rosi.__version__ and "commit" in result and "dirty" in result
    row = result["rows"][0]
    assert row["shape"] == "tiny" and row["extraction"]["prompts"] == 32
    assert row["edit"]["matrices"] == 8 and row["edit"]["bandwidth_gb_s"] > 0
    assert row["generation"]["dynamic_tokens_per_s"] > 0
    assert [p["name"] for p in row["run"]["phases"]][-1] == "save"


# ---- refusal, measured through rosi.measure --------------------------------------------------


@pytest.fixture
def planted_model(monkeypatch):
    """The planted model (it answers "I I I ..." to a bomb prompt, "bread" to others), with the
    marker judge taught that "I I I" refuses, so the verdicts are not all alike."""
    import transformers as T

    import planted
    from rosi.judges import markers
    from rosi.model.loading import LoadedModel, ModelSource

    monkeypatch.setattr(markers, "_MARKERS", ("i i i",))
    monkeypatch.syspath_prepend(str(BENCHMARKS))
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


def test_refusal_eval_measures_through_the_meter_what_it_measured_before(planted_model):
    import planted
    import refusal_eval
    from rosi.metrics import Rate
    from rosi.prompts import PromptSet

    sets = {
        "harmful": [("a", PromptSet(tuple(planted.HARMFUL[:3]))), ("b", PromptSet((*planted.HARMFUL[3:], *planted.HARMLESS[:3])))],
        "harmless": [("c", PromptSet(tuple(planted.HARMLESS)))],
    }
    row = refusal_eval.measure(planted_model, "base model", sets, 6, 4)
    for role, parts in sets.items():
        replies, flags = _before(planted_model, refusal_eval.instructions(parts), 6)
        rate = Rate(sum(flags), len(flags))
        expected = {"rate": rate.value, "k": rate.k, "n": rate.n, "wilson95": [round(x, 4) for x in rate.interval]}
        start = 0
        for source, p in parts if len(parts) > 1 else []:
            expected[source] = {"rate": sum(flags[start : start + len(p)]) / len(p), "n": len(p)}
            start += len(p)
        assert row[role] == expected
        assert [s["reply"] for s in row["samples"][role]] == replies[:4]
    assert row["harmful"]["k"] == 6 and row["harmful"]["a"]["rate"] == 1.0 and row["harmless"]["k"] == 0


def test_tune_eval_measures_through_the_meter_what_it_measured_before(planted_model):
    import torch

    import planted
    import tune_eval
    from rosi.judges.markers import is_partial
    from rosi.metrics import Rate
    from rosi.model.chat import ChatFormat
    from rosi.model.generation import next_token_logprobs

    sets = {"harmful": planted.HARMFUL, "harmless": [*planted.HARMLESS[:4], *planted.HARMFUL[:2]], "lookalike": planted.HARMLESS}
    row, logprobs = tune_eval.measure(planted_model, "base model", sets, 6, 4)
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
    again, _ = tune_eval.measure(planted_model, "again", sets, 6, 4, base_logprobs=logprobs)
    assert again["kl_harmless_first_token"] == pytest.approx(0.0, abs=1e-6)


def test_the_refusal_benchmarks_take_any_judge_and_leave_unjudged_prompts_out(planted_model):
    """A judge without a verdict on some prompts (a safety judge whose output did not parse): the
    rates count the judged prompts, the rows say how many were not judged, the paired
    differences pair only prompts judged in both rows."""
    import planted
    import refusal_eval
    import tune_eval
    from rosi.judges import Judge, Verdict
    from rosi.prompts import PromptSet

    class Unsure(Judge):
        name = "unsure"

        @classmethod
        def from_spec(cls, argument):
            return cls()

        def judge(self, prompts, replies):
            return [Verdict() if "cake" in p else Verdict(unsafe="bomb" not in p) for p in prompts]

    harmful = PromptSet(tuple(planted.HARMFUL))  # one names a cake: unjudged
    row = refusal_eval.measure(planted_model, "x", {"harmful": [("a", harmful), ("b", PromptSet(("make a cake",)))]}, 4, 4, Unsure())
    assert row["harmful"]["k"] == 5 and row["harmful"]["n"] == 5 and row["harmful"]["unjudged"] == 2
    assert row["harmful"]["a"] == {"rate": 1.0, "n": 5} and row["harmful"]["b"]["n"] == 0
    tuned, _ = tune_eval.measure(planted_model, "x", {"harmless": list(planted.HARMLESS)}, 4, 4, judge=Unsure())
    assert tuned["harmless"]["partial"] is None and tuned["harmless"]["refused"].count(None) == 2
    d = tune_eval.paired([True, None, False, True], [True, True, None, False])
    assert (d.n, d.a_only, d.b_only) == (2, 1, 0)


def test_the_judge_option_is_checked_as_the_arguments_are_parsed(common):
    parser = argparse.ArgumentParser()
    common.add_judge(parser)
    assert parser.parse_args([]).judge == "markers"
    with pytest.raises(SystemExit):
        parser.parse_args(["--judge", "oracle"])
    # the words the committed result files have for the marker judge, and another judge's spec
    assert common.judge_words("markers", 64) == "refusal markers, 64 new tokens, greedy"
    assert (
        common.judge_words("markers", 64, "no system prompt", partial=True)
        == "refusal markers (partial verdict beside), 64 new tokens, greedy, no system prompt"
    )
    assert common.judge_words("openai:http://h:8000/v1", 32) == "judge openai:http://h:8000/v1, 32 new tokens, greedy"


def test_the_results_page_shows_how_a_result_was_made_compactly(common, monkeypatch):
    """The fields every result records (command, commit, dirty, rosi_version) and its judge are
    shown under the file's heading, not as rows of its field table."""
    import results_pages

    monkeypatch.setattr(sys, "argv", [str(BENCHMARKS / "tune_eval.py"), "out", "--judge", "openai:http://h/v1", "--name", "tune_eval_x"])
    path = common.write_results("tune_eval_x", {"judge": "judge openai:http://h/v1, 64 new tokens, greedy", "judge_spec": "x", "speed": 2})
    data = json.loads(path.read_text())
    page = results_pages.render_results_page(common.RESULTS, path.parent)
    assert f"rosi {rosi.__version__}" in page and "Judge: judge openai:http://h/v1, 64 new tokens, greedy (`--judge x`)." in page
    assert "Command: `python benchmarks/tune_eval.py out --judge openai:http://h/v1 --name tune_eval_x`" in page
    if data["commit"]:
        assert f"at {data['commit'][:10]}" in page and ("src/ modified" in page) == data["dirty"]
    assert "| speed | 2 |" in page
    assert not any(f"| {k} |" in page for k in ("command", "commit", "dirty", "rosi_version", "judge", "judge_spec"))


def test_tune_stability_counts_the_picks_of_several_seeds(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import tune_stability

    def tune_output(seed, form, layer, harmful):
        folder = tmp_path / f"tuned-{seed}"
        folder.mkdir()
        figures = {"harmful": harmful, "harmless": 0.1, "lookalike": 0.4, "kl": 0.05}
        chosen = {"number": 7, "params": {"form": form, "layer": layer}, "reference": None, "confirmed": figures, "cheap": figures}
        report = {
            "options": {"seed": seed},
            "trials": [chosen],
            "chosen": 7,
            "chosen_by": "rule",
            "seconds": {"trials": 60.0 * (seed + 1), "confirm": 30.0},
        }
        (folder / "tune_report.json").write_text(json.dumps(report))
        return folder

    picks = [
        tune_stability.pick_of(tune_output(s, f, layer, h))
        for s, f, layer, h in ((0, "gate", 14, 0.9), (1, "gate", 14, 0.8), (2, "probe", 15, 1.0))
    ]
    summary = tune_stability.stability(picks)
    assert summary["most_common"] == {"form": "gate", "layer": 14, "tunes": 2} and summary["same_form_and_layer"] == 2 / 3
    assert summary["forms"] == {"gate": 2, "probe": 1}
    assert summary["spread"]["harmful"]["min"] == 0.8 and summary["spread"]["harmful"]["max"] == 1.0
    assert [p["seconds"] for p in picks] == [90.0, 150.0, 210.0] and summary["seconds"] == {"mean": 150.0, "max": 210.0}


def test_cheap_scores_rank_correlation_names_the_score_that_orders_trials_like_their_confirmation(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import cheap_scores

    assert cheap_scores.ranks([3.0, 1.0, 3.0, 2.0]) == [3.5, 1.0, 3.5, 2.0]
    assert cheap_scores.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert cheap_scores.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert cheap_scores.spearman([1, 2], [1, 2]) is None and cheap_scores.spearman([1, 1, 1], [1, 2, 3]) is None

    # four trials: the short replies' harmful refusal orders them as the confirmation does, the
    # first-token log-odds in reverse; one unconfirmed trial is left out
    confirmed = [0.5, 0.6, 0.7, 0.9]
    trials = [
        {
            "number": i,
            "cheap": {
                "harmful": c - 0.1,
                "harmful_log_odds": -c,
                "harmless": 0.1,
                "kl": 0.01 * i,
                "lookalike": 0.3,
                "lookalike_log_odds": 0.0,
            },
            "confirmed": {"harmful": c, "harmless": 0.1 + 0.01 * i, "lookalike": 0.3, "kl": 0.02 * i},
        }
        for i, c in enumerate(confirmed)
    ] + [{"number": 9, "cheap": {"harmful": 1.0}, "confirmed": None}]
    folder = tmp_path / "tuned"
    folder.mkdir()
    (folder / "tune_report.json").write_text(json.dumps({"trials": trials}))
    found = cheap_scores.confirmed_trials(folder)
    assert [t["number"] for t in found] == [0, 1, 2, 3]
    pooled = cheap_scores.correlations(found)
    assert pooled["harmful"]["harmful"] == {"spearman": pytest.approx(1.0), "n": 4}
    assert pooled["harmful"]["harmful_log_odds"]["spearman"] == pytest.approx(-1.0)
    assert pooled["harmless"]["kl"]["spearman"] == pytest.approx(1.0) and pooled["harmless"]["harmless"]["spearman"] is None
    assert cheap_scores.best(pooled) == {"harmful": "harmful", "harmless": "kl", "lookalike": None, "kl": "kl"}


def test_style_holdout_leaves_out_one_style_of_the_joined_training_set(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import style_holdout
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


def test_style_holdout_leaves_a_harmless_style_out_with_its_namesakes_and_names_each_sides_worst(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import style_holdout
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
    harmful = style_holdout.summary(rows, "harmful", min)
    assert harmful["worst_left_out"] == "a" and harmful["left_out_minus_seen"]["a"] == pytest.approx(-0.4)
    harmless = style_holdout.summary(rows, "harmless", max)
    assert harmless["worst_left_out"] == "d" and harmless["left_out_rate"] == {"c": 0.1, "d": 0.3}


def test_style_holdout_plan_measures_each_left_out_fit_on_its_own_style_when_asked(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import style_holdout

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


def test_tune_eval_plot_legend_names_a_trials_form(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import tune_eval

    assert tune_eval.legend({"label": "trial 7", "params": {"form": "surgical", "layer": 17}}) == "trial 7: surgical"
    assert tune_eval.legend({"label": "neurons (rosi run)", "record": "x.patch"}) == "neurons (rosi run)"


def test_harmless_rank_scores_trials_on_one_half_and_reads_their_verdicts_on_the_other(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import harmless_rank
    from rosi.prompts import PromptSet

    confirm = PromptSet([f"p{i}" for i in range(8)], ["a", "a", "a", "a", "b", "b", "b", "b"], name="c")
    rank, target = confirm.halves()
    where = harmless_rank.target_indices(confirm.instructions, target.instructions, head=3)
    # the verdicts list holds 3 validation prompts, then the confirmation set in order
    assert sorted(i - 3 for i in where) == sorted(confirm.instructions.index(t) for t in target.instructions)
    assert not set(rank.instructions) & {confirm.instructions[i - 3] for i in where}  # scored and judged apart
    refused = [True] * 3 + [i % 2 == 0 for i in range(8)]
    assert harmless_rank.target_rate(refused, where) == sum(refused[i] for i in where) / len(where)
    with pytest.raises(ValueError, match="repeats"):
        harmless_rank.target_indices(["x", "x"], ["x"], head=0)
    rows = [{name: float(i) for name, _ in harmless_rank.SCORES} | {"target": t} for i, t in enumerate([0.1, 0.2, 0.3])]
    assert all(v["spearman"] == pytest.approx(1.0) and v["n"] == 3 for v in harmless_rank.table(rows).values())
