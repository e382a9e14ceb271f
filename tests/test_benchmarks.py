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
MODEL_ID = re.compile(r"pypi:[a-z0-9][a-z0-9.-]*|(?i:qwen2\.5)")  # a model id typed into a script
SCRIPTS = sorted(p for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_"))


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


MAX_SCRIPT_LINES = 150
REPORTS = ("tune_report.json", "rosi_report.json", "rosi.json", "eval_results.json")  # read them with their from_json / read_manifest


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_every_script_is_a_thin_driver_over_the_library(script):
    """Under 150 lines, importing no other benchmark (only the shared ``_common`` helpers), and
    reading no report rosi writes as raw JSON: what a result row needs is a library call."""
    text = script.read_text(encoding="utf-8")
    assert len(text.splitlines()) < MAX_SCRIPT_LINES, f"{script.name}: {len(text.splitlines())} lines; move what a user needs into rosi"
    tree = ast.parse(text)
    others = {p.stem for p in BENCHMARKS.glob("*.py")} - {"_common"}
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    }
    assert not imported & others, f"{script.name} imports the benchmarks {sorted(imported & others)}; call the library"
    named = [r for r in REPORTS if r in text]
    assert not named, f"{script.name} names {named}; read reports with TuneReport.load, RunReport.load or read_manifest"


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
