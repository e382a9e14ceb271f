"""Tests that read ../shared/data: skipped without it on a developer's machine, failed under CI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import conftest

ROOT = Path(__file__).resolve().parents[1]


def test_missing_data_fails_under_ci_and_skips_otherwise(tmp_path, monkeypatch):
    monkeypatch.setattr(conftest, "DATA", tmp_path / "data")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"\.\./shared/data/llamaguard3 is missing .*CI must run with \.\./shared beside"):
        conftest.require_data("llamaguard3")
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match=r"\.\./shared/data is missing"):
        conftest.require_data()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        conftest.require_data("llamaguard3")
    (tmp_path / "data" / "llamaguard3").mkdir(parents=True)
    monkeypatch.setenv("CI", "true")
    assert conftest.require_data("llamaguard3") == tmp_path / "data" / "llamaguard3"


@pytest.mark.slow
def test_a_data_test_fails_under_ci_without_the_data(tmp_path):
    """End to end: one real data test, run by pytest with the data folder pointed at nothing."""
    test = "tests/test_jailbreak.py::test_the_shared_template_files_load"
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTHONPATH")}
    env["ROSI_TEST_DATA"] = str(tmp_path / "missing")

    def pytest_run(extra_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", test]
        return subprocess.run(argv, cwd=ROOT, env={**env, **extra_env}, capture_output=True, text=True, timeout=300)

    ci = pytest_run({"CI": "true"})
    assert ci.returncode != 0, ci.stdout[-2000:]
    assert "../shared/data/jailbreak_templates is missing" in ci.stdout and "CI must run with ../shared beside" in ci.stdout
    local = pytest_run({})
    assert local.returncode == 0 and "1 skipped" in local.stdout, local.stdout[-2000:]
