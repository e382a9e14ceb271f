"""Crashes and full disks: a killed run leaves no half-written output, the next run cleans up
what it left (and only that) and succeeds; a full disk is one clear error and leaves nothing."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import transformers as T

from conftest import save_tiny
from rosi import Direction
from rosi.cli import main

pytestmark = pytest.mark.slow
SRC = Path(__file__).resolve().parents[1] / "src"
# Runs the CLI with save_pretrained made slow after it has written the weights, and says when it
# got there: a kill -9 then lands in the middle of writing the output.
SLOW_SAVE = """
import pathlib, sys, time
import transformers
original = transformers.PreTrainedModel.save_pretrained
def slow(self, *args, **kwargs):
    original(self, *args, **kwargs)
    pathlib.Path(sys.argv[1]).write_text("saving")
    time.sleep(120)
transformers.PreTrainedModel.save_pretrained = slow
from rosi.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _kill_when(proc: subprocess.Popen, ready, failure: str) -> None:
    """kill -9 the process as soon as ``ready()`` holds (it must, within two minutes)."""
    try:
        deadline = time.monotonic() + 120
        while not ready():
            assert proc.poll() is None and time.monotonic() < deadline, failure
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".rosi-tmp-" in p.name or ".rosi-old-" in p.name)


@pytest.fixture
def inputs(tmp_path, tokenizer_dir):
    model = tmp_path / "m"
    save_tiny("llama", model, tokenizer_dir=tokenizer_dir)
    direction = tmp_path / "d.safetensors"
    Direction(torch.randn(32, generator=torch.Generator().manual_seed(0)), layer=1, position=-1).save(direction)
    return model, direction


def _edit_args(model: Path, direction: Path, out: Path, *extra: str) -> list[str]:
    return ["edit", str(model), "--direction", str(direction), "--alpha", "2", "--out", str(out), *extra]


def _check_complete(out: Path, model: Path, direction: Path) -> None:
    """The output reloads with plain transformers and holds exactly the edit."""
    expected = T.AutoModelForCausalLM.from_pretrained(model)
    from rosi import apply_edit

    apply_edit(expected, Direction.load(direction), "rosi", 2.0)
    got = T.AutoModelForCausalLM.from_pretrained(out)
    for name, p in expected.state_dict().items():
        assert torch.equal(got.state_dict()[name], p), name
    assert (out / "rosi.json").is_file() and (out / "rosi_edit.safetensors").is_file()


def test_kill_during_save_leaves_no_output_and_the_next_run_cleans_up(inputs, tmp_path, capsys):
    model, direction = inputs
    out = tmp_path / "out"
    signal_file = tmp_path / "saving"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SAVE, str(signal_file), *_edit_args(model, direction, out)], env=_env())
    _kill_when(proc, signal_file.exists, "the edit did not reach its save")
    assert not out.exists()  # never a half-written output
    left = _leftovers(tmp_path)
    assert len(left) == 1 and (tmp_path / left[0] / ".rosi-partial").is_file()
    stranger = tmp_path / ".out.rosi-tmp-1-0123abcd"  # looks like rosi's, but holds no marker: not rosi's
    stranger.mkdir()
    capsys.readouterr()
    assert main(_edit_args(model, direction, out)) == 0
    assert "removed 1 temporary leftover" in capsys.readouterr().err
    _check_complete(out, model, direction)
    assert _leftovers(tmp_path) == [stranger.name]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kill_at_a_random_moment_then_rerun(inputs, tmp_path, seed):
    """kill -9 after a random delay, anywhere in the run; the rerun succeeds and nothing is left."""
    model, direction = inputs
    out = tmp_path / "out"
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "rosi.cli", *_edit_args(model, direction, out)], env=_env(), stderr=subprocess.DEVNULL)
    time.sleep(random.Random(seed).uniform(0.5, 6.0))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    if out.exists():  # the run finished before the kill: it must be complete
        _check_complete(out, model, direction)
    args = _edit_args(model, direction, out, *(["--overwrite"] if out.exists() else []))
    assert main(args) == 0
    _check_complete(out, model, direction)
    assert _leftovers(tmp_path) == [], time.monotonic() - started


def test_kill_during_eval_then_resume(inputs, tmp_path, capsys):
    """kill -9 in the middle of generation: the rerun resumes from the cache and completes."""
    model, _ = inputs
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(f'{{"instruction": "hello world {i}"}}\n' for i in range(40)))
    out = tmp_path / "ev"
    args = ["eval", str(model), "--out", str(out), "--harmful", str(prompts), "--harmless", str(prompts), "--contrast", str(prompts)]
    args += ["--utility", "none", "--max-new-tokens", "8", "--batch-size", "2", "--no-plots", "--device", "cpu"]
    proc = subprocess.Popen([sys.executable, "-m", "rosi.cli", *args], env=_env(), stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    cache = out / "generations.jsonl"
    _kill_when(proc, lambda: cache.exists() and cache.stat().st_size > 200, "generation did not start")
    assert not (out / "results.json").exists()
    assert main(args) == 0
    assert (out / "results.json").is_file() and (out / "report.md").is_file()
    assert _leftovers(out) == [] and _leftovers(tmp_path) == []


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (needs root and mount rights: skipped where they are not there)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_is_one_clear_error_and_leaves_nothing(inputs, small_disk, capsys):
    model, direction = inputs
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (1024 * 1024 - 64 * 1024))  # what is left is less than the checkpoint needs
    capsys.readouterr()
    code = main(_edit_args(model, direction, small_disk / "out"))
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("rosi: error:")]
    assert len(errors) == 1 and "disk is full" in errors[0], err[-1000:]
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]
