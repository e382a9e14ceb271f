"""tools/results_pages.py: the docs' generated parts (the results page with its index of every
experiment, the README's headline table, the methods table) from benchmarks/results/."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import rosi
from test_docs import pages

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def common(monkeypatch, tmp_path):
    """benchmarks/_common.py, writing into a temporary results folder."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import _common

    monkeypatch.setattr(_common, "RESULTS", tmp_path / "results")
    return _common


def test_an_unknown_result_file_renders(tmp_path):
    results = tmp_path / "results"
    (results / "odd_run").mkdir(parents=True)
    (results / "mystery.json").write_text(
        json.dumps({"benchmark": "mystery", "date": "2030-01-01", "speed": 1.5, "nested": {"ok": True, "items": [1, 2]}, "rows": [3, {}]})
    )
    (results / "odd_run" / "report.json").write_text(json.dumps([1, 2, 3]))
    (results / "broken.json").write_text("{not json")
    (results / "rates.json").write_text(json.dumps({"rows": [{"label": "a", "x": {"rate": 0.5, "k": 1, "n": 2}}]}))
    (results / "odd_tune.json").write_text(json.dumps({"trials": [{"confirmed": {"kl": "x"}}], "chosen": 0, "base": "?"}))
    page = pages.render_results_page(results, tmp_path)
    assert "### mystery.json" in page and "| speed | 1.5 |" in page and "| nested.ok | True |" in page
    assert "### odd_run/report.json" in page and "### broken.json" in page
    assert "| a | 50.0% (1/2) |" in page and "### odd_tune.json" in page


def test_a_missing_headline_file_is_named_not_fatal(tmp_path):
    table = pages.headline_table(tmp_path, tmp_path)
    assert table.count("not measured") == len(pages.HEADLINE)


def test_check_names_a_stale_page(tmp_path, monkeypatch, capsys):
    stale = tmp_path / "results.md"
    stale.write_text("old\n")
    monkeypatch.setattr(pages, "expected", lambda: {stale: "new\n"})
    monkeypatch.setattr(pages, "ROOT", tmp_path)
    assert pages.main(["--check"]) == 1
    assert "results.md is stale" in capsys.readouterr().err
    assert stale.read_text() == "old\n"
    assert pages.main([]) == 0 and stale.read_text() == "new\n"


def test_the_results_page_shows_how_a_result_was_made_compactly(common, monkeypatch):
    """The fields every result records (command, commit, dirty, rosi_version) and its judge are
    shown under the file's heading, not as rows of its field table."""
    monkeypatch.setattr(sys, "argv", [str(BENCHMARKS / "tune_eval.py"), "out", "--judge", "openai:http://h/v1", "--name", "tune_eval_x"])
    path = common.write_results("tune_eval_x", {"judge": "judge openai:http://h/v1, 64 new tokens, greedy", "judge_spec": "x", "speed": 2})
    data = json.loads(path.read_text())
    page = pages.render_results_page(common.RESULTS, path.parent)
    assert f"rosi {rosi.__version__}" in page and "Judge: judge openai:http://h/v1, 64 new tokens, greedy (`--judge x`)." in page
    assert "Command: `python benchmarks/tune_eval.py out --judge openai:http://h/v1 --name tune_eval_x`" in page
    if data["commit"]:
        assert f"at {data['commit'][:10]}" in page and ("src/ modified" in page) == data["dirty"]
    assert "| speed | 2 |" in page
    assert not any(f"| {k} |" in page for k in ("command", "commit", "dirty", "rosi_version", "judge", "judge_spec"))


def test_the_index_lists_every_experiment_with_its_date_commit_and_one_line(tmp_path):
    results = tmp_path / "benchmarks" / "results"
    (results / "tune_x").mkdir(parents=True)
    (tmp_path / "benchmarks" / "tune_eval.py").write_text('"""Held-out refusal of a tune\'s trials.\n\nMore."""\n')
    (results / "tune_eval_x.json").write_text(json.dumps({"benchmark": "tune_eval_x", "date": "2030-01-02", "commit": "0123456789abcdef"}))
    (results / "tune_eval_y.json").write_text(json.dumps({"benchmark": "tune_eval_y"}))
    (results / "tune_x" / "NOTES.md").write_text("# A tune that tried x\n\nIt measured [tune_eval_y.json](../tune_eval_y.json).\n")
    page = pages.render_results_page(results, tmp_path / "docs")
    index = page[page.index("## Index") :].split("\n## ")[0]
    what = "Held-out refusal of a tune's trials"
    assert f"| [tune_eval_x.json](../benchmarks/results/tune_eval_x.json) | 2030-01-02 | `0123456789` | {what} | – |" in index
    assert (
        f"| [tune_eval_y.json](../benchmarks/results/tune_eval_y.json) | – | – | {what} | [tune_x](../benchmarks/results/tune_x/NOTES.md) |"
        in index
    )
    assert "| [tune_x/](../benchmarks/results/tune_x/NOTES.md) | – | – | A tune that tried x | – |" in index


def test_the_committed_index_names_every_result_file():
    page = (pages.DOCS / "results.md").read_text(encoding="utf-8")
    index = page[page.index("## Index") :].split("\n## ")[0]
    missing = [p.name for p in sorted(pages.RESULTS.glob("*.json")) if f"[{p.name}](" not in index]
    assert not missing, f"docs/results.md's index lacks {missing}; run `make docs`"


def test_the_cost_table_shows_each_run_limits_file_and_names_a_missing_one(tmp_path):
    data = {
        "model": "m",
        "cpu": "Some CPU",
        "native_bf16": False,
        "dtype": "float32",
        "run_s": 250.4,
        "machine": {"threads": 2},
        "phases": [
            {"phase": "extract_and_select", "seconds": 90.2, "times_the_limit": 0.95},
            {"phase": "save", "seconds": 7.0, "times_the_limit": None},
        ],
        "memory": {"peak_rss_gb": 4.1, "times_the_weights": 1.63},
    }
    (tmp_path / "a.json").write_text(json.dumps(data))
    text = pages.cost_table(tmp_path, tmp_path, ("a.json", "gone.json"))
    assert (
        "| m | Some CPU, 2 threads, no native bf16 | float32 | 250 s | extract_and_select 90 s (0.95x), save 7 s | 4.10 GB (1.63x the weights) |"
        in text
    )
    assert "not measured: `gone.json` is missing or unreadable" in text


def test_the_demo_estimate_is_the_measured_run_in_the_dtype_used_here(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS.parent / "tools"))
    import demo_estimate

    assert demo_estimate.estimate(tmp_path, bf16=True) is None  # nothing measured: nothing said
    (tmp_path / "run_limits_qwen0.5b_float32.json").write_text(json.dumps({"run_s": 271.6, "cpu": "Some CPU", "machine": {"threads": 2}}))
    line = demo_estimate.estimate(tmp_path, bf16=False)
    assert line is not None and "float32" in line and "272 s measured" in line and "5 minutes" in line and "2-core Some CPU" in line
    assert demo_estimate.estimate(tmp_path, bf16=True) is None
    (tmp_path / "run_limits_qwen0.5b_bfloat16.json").write_text("{broken")
    assert demo_estimate.estimate(tmp_path, bf16=True) is None
