"""Choosing which writers to edit: the read-out identity, the signals' arithmetic, the rule."""

import pytest
import torch

from conftest import tiny_model
from rosi import Direction, apply_edit
from rosi.edit.apply import revert_edit
from rosi.edit.methods import METHODS
from rosi.edit.record import EditRecord
from rosi.edit.scope import (
    WriterSignal,
    module_biases,
    probe_layer_range,
    probe_reads,
    probe_writers,
    select_writers,
    writer_signals,
)
from rosi.errors import EditError, RosiError
from rosi.model.architecture import architecture_map


@pytest.mark.parametrize("arch_name", ["qwen2", "gpt2", "qwen2_moe"])
@pytest.mark.parametrize("method,strength", [("scale", 0.7), ("rosi", 5.0), ("ablate", 1.0)])
def test_edit_adds_strength_times_readout_of_the_writer_output(arch_name, method, strength):
    """The identity the selection rests on: edited output = y + strength * (u . (y - b)) * s_hat."""
    model = tiny_model(arch_name)
    writers = architecture_map(model).select()
    modules = architecture_map(model).measurable_modules(model)
    assert modules and all(w.kind.value in ("attention", "mlp") for w in writers if w.name in modules)
    biases = module_biases(modules)
    d = Direction(torch.randn(32, generator=torch.Generator().manual_seed(1)))
    s_hat, u = d.unit.double(), METHODS[method].output_readout(d.unit).double()
    g = torch.Generator().manual_seed(3)
    inputs = {n: torch.randn(5, _in_features(m), generator=g) for n, m in modules.items()}
    before = {n: m(inputs[n]).detach().double() for n, m in modules.items()}
    apply_edit(model, d, method, strength)
    for name, m in modules.items():
        b = torch.zeros(32, dtype=torch.float64) if biases[name] is None else biases[name].detach().double()
        expected = before[name] + strength * ((before[name] - b) @ u)[:, None] * s_hat
        torch.testing.assert_close(m(inputs[name]).detach().double(), expected, rtol=1e-5, atol=1e-5, msg=name)


def _in_features(module: torch.nn.Module) -> int:
    return module.in_features if hasattr(module, "in_features") else module.weight.shape[0]  # GPT-2 Conv1D is [in, out]


def test_writer_signals_arithmetic_and_bias():
    model = tiny_model("qwen2")
    writers = architecture_map(model).select()[:2]
    u = torch.tensor([1.0, 2.0] + [0.0] * 30)
    mh = {writers[0].name: torch.tensor([1.0, 1.0] + [5.0] * 30), writers[1].name: torch.tensor([0.5, -1.0] + [0.0] * 30)}
    mb = {writers[0].name: torch.tensor([0.0, 0.5] + [9.0] * 30), writers[1].name: torch.tensor([1.0, 0.0] + [0.0] * 30)}
    bias = {writers[0].name: torch.tensor([1.0, 0.0] + [0.0] * 30), writers[1].name: None}
    got = writer_signals(writers + architecture_map(model).select()[2:3], mh, mb, u, bias)
    assert [(s.name, s.layer) for s in got] == [(w.name, w.layer) for w in writers]  # the unmeasured third is left out
    assert got[0].harmful == pytest.approx(2.0) and got[0].harmless == pytest.approx(0.0)  # (1-1) + 2*1; (0-1) + 2*0.5
    assert got[1].harmful == pytest.approx(-1.5) and got[1].harmless == pytest.approx(1.0) and got[1].gap == pytest.approx(-2.5)


def test_select_writers_rule():
    signals = [
        WriterSignal("clean", 0, 1.0, 0.0),  # kept: harmless 0
        WriterSignal("negative_harmless", 1, 0.5, -0.5),  # kept: pushes harmless away from refusal
        WriterSignal("small_harmless", 2, 1.0, 0.15),  # kept at 0.25: 0.15 <= 0.25 * 0.85
        WriterSignal("shared", 3, 1.0, 0.5),  # dropped: harmless as large as the gap
        WriterSignal("reversed", 4, -1.0, 0.0),  # dropped: larger on harmless prompts
        WriterSignal("flat", 5, 0.3, 0.3),  # dropped: no gap
    ]
    assert select_writers(signals) == ["clean", "negative_harmless", "small_harmless"]
    assert select_writers(signals, ratio=0.0) == ["clean", "negative_harmless"]
    assert select_writers(signals, ratio=1.0) == ["clean", "negative_harmless", "small_harmless", "shared"]
    with pytest.raises(RosiError, match="ratio"):
        select_writers(signals, ratio=-1)


def test_apply_edit_to_a_subset_records_it_and_reverts(tmp_path):
    model = tiny_model("llama")
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    writers = architecture_map(model).select()
    chosen = [writers[1].name, writers[4].name]
    record = apply_edit(model, Direction(torch.ones(32)), "scale", 1.0, writers=chosen)
    assert [m.name for m in record.matrices] == chosen and record.selected
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, original[n])}
    assert changed == set(chosen)
    loaded = EditRecord.load(record.save(tmp_path / "edit.safetensors"))
    assert loaded.selected and [m.name for m in loaded.matrices] == chosen
    revert_edit(model, loaded)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p, original[n], rtol=0, atol=1e-6)
    with pytest.raises(EditError, match="not a residual writer"):
        apply_edit(model, Direction(torch.ones(32)), "scale", 1.0, writers=["model.embed_tokens.weight"])


def test_probe_writers_are_the_measurable_writers_of_the_middle_layers():
    model = tiny_model("qwen2_moe")  # fused experts are not measurable: never probed
    amap = architecture_map(model)
    names = probe_writers(amap.select(), probe_layer_range(4, (0.25, 0.8)))
    layers = {w.name: w.layer for w in amap.writers}
    assert names and {layers[n] for n in names} == {1, 2}
    assert all(w.kind.value in ("attention", "mlp") for w in amap.writers if w.name in names)
    with pytest.raises(RosiError, match="select no layer"):
        probe_layer_range(4, (0.9, 0.95))


def test_probe_reads_share_the_gap_among_the_writers_that_separate():
    g = torch.Generator().manual_seed(4)
    h = {n: torch.randn(12, generator=g) for n in "abc"}
    b = {n: torch.randn(12, generator=g) for n in "abc"}
    b["c"] = 2 * h["c"]  # c's inputs do not separate: left out
    reads = probe_reads(["a", "b", "c"], h, b, gap=3.0)
    assert sorted(reads) == ["a", "b"]
    # summed over the kept writers, k = 1 adds the gap at the mean harmful input and 0 at the harmless one
    assert sum(float(reads[n] @ h[n]) for n in reads) == pytest.approx(3.0, rel=1e-5)
    assert sum(float(reads[n] @ b[n]) for n in reads) == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(RosiError, match="method scale"):
        probe_reads(["c"], h, b, gap=3.0)
