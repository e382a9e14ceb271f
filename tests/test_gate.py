"""The conditional edit forms: ``gate`` (a read-out fit on single prompts) and ``surgical`` (gate
plus the ablation of the false-refusal direction, rank two): their math on tiny models, their
records and adapters, and what they do on the planted look-alike model."""

from __future__ import annotations

import pytest
import torch
import transformers as T

import planted
from conftest import save_tiny, tiny_model
from rosi import Direction, EditRecord, apply_edit, architecture_map, revert_edit
from rosi.direction.activations import collect_activations, collect_samples, layer_key
from rosi.direction.score import last_logprobs, refusal_log_odds, refusal_token_ids
from rosi.edit.methods import EditForm
from rosi.edit.rank_one import benign_subspace, false_refusal_direction, gate_read
from rosi.errors import EditError, RosiError
from rosi.model.chat import ChatFormat
from rosi.model.loading import LoadedModel, ModelSource
from rosi.prompts import PromptSet, PromptSets
from rosi.workflows.extract import extract
from rosi.workflows.options import ExtractOptions


def classes(d=40, n_h=12, n_b=20, seed=0):
    """Harmful inputs = benign-like inputs plus a harm feature; d > n so an exact fit exists."""
    g = torch.Generator().manual_seed(seed)
    harm = torch.randn(d, generator=g)
    benign = torch.randn(n_b, d, generator=g) + 2.0
    harmful = torch.randn(n_h, d, generator=g) + 2.0 + harm
    return harmful, benign


# --- the fit ---------------------------------------------------------------------------------


def test_the_gate_read_is_one_on_harmful_and_zero_on_benign_inputs():
    harmful, benign = classes()
    u = gate_read(harmful, benign, ridge=0.0)
    torch.testing.assert_close(harmful @ u, torch.ones(len(harmful)), atol=1e-3, rtol=0)
    torch.testing.assert_close(benign @ u, torch.zeros(len(benign)), atol=1e-3, rtol=0)
    # more ridge: a shorter read-out, still separating the classes on average
    v = gate_read(harmful, benign, ridge=0.5)
    assert v.norm() < u.norm()
    assert (harmful @ v).mean() - (benign @ v).mean() > 0.1


def test_the_gate_read_solves_its_ridge_problem():
    """The dual solution equals the primal normal equations of the weighted ridge problem."""
    harmful, benign = classes(d=10, n_h=30, n_b=40)
    ridge = 0.1
    u = gate_read(harmful, benign, ridge=ridge).double()
    h, b = harmful.double(), benign.double()
    scale = ((h**2).sum(1).mean() + (b**2).sum(1).mean()) / 2
    a = h.T @ h / len(h) + b.T @ b / len(b) + ridge * scale * torch.eye(10, dtype=torch.float64)
    expected = torch.linalg.solve(a, h.mean(0))
    torch.testing.assert_close(u, expected, rtol=1e-4, atol=1e-6)


def test_the_null_space_gate_read_is_zero_on_the_benign_subspace():
    harmful, benign = classes(d=40, n_b=15)
    basis = benign_subspace(benign, 0.99)
    u = gate_read(harmful, benign, ridge=0.01, null_space=0.99)
    assert basis.shape[0] == 40 and 1 <= basis.shape[1] <= 15
    torch.testing.assert_close((basis.T @ u.double()), torch.zeros(basis.shape[1], dtype=torch.float64), atol=1e-6, rtol=0)
    assert (harmful @ u).mean() > 0.5


@pytest.mark.parametrize(
    "harmful,benign,match",
    [
        (torch.zeros(4, 8), torch.zeros(5, 8), "all zero"),
        (torch.ones(4, 8), torch.ones(5, 8), "does not tell"),
        (torch.full((4, 8), float("nan")), torch.ones(5, 8), "not finite"),
        (torch.ones(4, 8), torch.ones(5, 7), "one width"),
        (torch.ones(0, 8), torch.ones(5, 8), "needs harmful and benign"),
    ],
)
def test_degenerate_gate_inputs_are_refused(harmful, benign, match):
    with pytest.raises(ValueError, match=match):
        gate_read(harmful, benign)


def test_the_false_refusal_direction_is_unit_and_orthogonal_to_the_safety_direction():
    g = torch.Generator().manual_seed(3)
    s = torch.randn(16, generator=g)
    look, harmless = torch.randn(16, generator=g), torch.randn(16, generator=g)
    f = false_refusal_direction(look, harmless, s)
    assert abs(float(f.norm()) - 1) < 1e-6 and abs(float(f @ s / s.norm())) < 1e-6
    d = look - harmless
    assert float(f @ d) > 0  # it points from harmless to look-alike
    with pytest.raises(ValueError, match="no false-refusal direction"):
        false_refusal_direction(harmless + 2.0 * s, harmless, s)  # they differ only along s


# --- the edits -------------------------------------------------------------------------------


def _reads(model, seed=5):
    amap = architecture_map(model)
    params = dict(model.named_parameters())
    g = torch.Generator().manual_seed(seed)
    return {
        w.name: torch.randn(w.layout.as_out_in(params[w.name]).shape[-1], generator=g) for w in amap.writers if w.kind.value != "embedding"
    }


def _output(model, name, x):
    return model.get_submodule(name.rsplit(".", 1)[0])(x)


def test_the_surgical_edit_adds_along_s_removes_f_and_reverts(tmp_path):
    model = tiny_model("llama")
    reads = _reads(model)
    chosen = sorted(reads)[:4]
    g = torch.Generator().manual_seed(2)
    s_dir = Direction(torch.randn(32, generator=g) * 3, layer=1, position=-1)
    f_raw = torch.randn(32, generator=g)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = {n: torch.randn(3, reads[n].numel(), generator=g) for n in chosen}
    ref = {n: _output(model, n, x[n]).detach().double() for n in chosen}
    record = apply_edit(model, s_dir, "surgical", 1.5, writers=chosen, reads=reads, second=Direction(f_raw), keep_originals=True)
    assert record.rank == 2 and record.second is not None
    s = s_dir.unit.double()
    f = record.second.unit.double()
    assert abs(float(f @ s)) < 1e-6  # made orthogonal to s_hat
    for n in chosen:
        y = ref[n]
        expected = y + 1.5 * (x[n].double() @ reads[n].double())[:, None] * s - (y @ f)[:, None] * f
        torch.testing.assert_close(_output(model, n, x[n]).double(), expected, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if n not in chosen)
    revert_edit(model, record)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    # from the saved record: arithmetic revert of both terms
    record = apply_edit(model, s_dir, "surgical", 1.5, writers=chosen, reads=reads, second=Direction(f_raw))
    path = record.save(tmp_path / "edit.safetensors")
    loaded = EditRecord.load(path)
    assert loaded.rank == 2 and torch.equal(loaded.second.vector, record.second.vector)
    assert all(torch.equal(a.right2, b.right2) for a, b in zip(loaded.matrices, record.matrices, strict=True))
    revert_edit(model, loaded)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p, before[n], rtol=0, atol=1e-6)


def test_gate_edit_output_equals_its_formula():
    model = tiny_model("qwen2")
    reads = _reads(model)
    chosen = sorted(reads)[:3]
    direction = Direction(torch.randn(32, generator=torch.Generator().manual_seed(8)) * 2)
    x = {n: torch.randn(2, reads[n].numel(), generator=torch.Generator().manual_seed(1)) for n in chosen}
    ref = {n: _output(model, n, x[n]).detach().double() for n in chosen}
    apply_edit(model, direction, "gate", 2.0, writers=chosen, reads=reads)
    for n in chosen:
        expected = ref[n] + 2.0 * (x[n].double() @ reads[n].double())[:, None] * direction.unit.double()
        torch.testing.assert_close(_output(model, n, x[n]).double(), expected, rtol=1e-5, atol=1e-5)


def test_a_surgical_edit_needs_its_second_direction_and_rank_one_methods_refuse_one():
    model = tiny_model("llama")
    reads = _reads(model)
    d = Direction(torch.randn(32, generator=torch.Generator().manual_seed(1)))
    with pytest.raises(EditError, match="second="):
        apply_edit(model, d, "surgical", 1.0, reads=reads)
    with pytest.raises(EditError, match="rank one"):
        apply_edit(model, d, "gate", 1.0, reads=reads, second=Direction(torch.randn(32)))
    with pytest.raises(EditError, match="parallel"):
        apply_edit(model, d, "surgical", 1.0, reads=reads, second=Direction(2 * d.vector))


def test_a_surgical_edit_ships_as_a_rank_two_lora_that_peft_loads(tmp_path):
    from peft import PeftModel

    from rosi.export.lora import verify_adapter, write_lora

    base = save_tiny("llama", tmp_path / "base")
    reads = _reads(base)
    g = torch.Generator().manual_seed(4)
    record = apply_edit(
        base, Direction(torch.randn(32, generator=g)), "surgical", 1.5, reads=reads, second=Direction(torch.randn(32, generator=g))
    )
    write_lora(record, base.config, tmp_path / "lora", str(tmp_path / "base"))
    record.save(tmp_path / "lora" / "rosi_edit.safetensors")
    peft = PeftModel.from_pretrained(T.AutoModelForCausalLM.from_pretrained(tmp_path / "base"), tmp_path / "lora").eval()
    ids = torch.tensor([[1, 5, 9, 20, 3, 7]])
    with torch.no_grad():
        torch.testing.assert_close(peft(input_ids=ids).logits, base(input_ids=ids).logits, rtol=1e-4, atol=1e-4)
    assert verify_adapter(tmp_path / "lora").ok


def test_a_rank_two_edit_is_refused_by_single_factor_formats(tmp_path):
    from rosi.export.formats import Edited, save

    model = tiny_model("llama")
    reads = _reads(model)
    record = apply_edit(model, Direction(torch.randn(32)), "surgical", 1.0, reads=reads, second=Direction(torch.randn(32)))
    loaded = LoadedModel(model, None, ModelSource("tiny", "memory", "", "0" * 64))
    with pytest.raises(RosiError, match="rank-two"):
        save(Edited(loaded, record), tmp_path / "x.gguf", "gguf-lora", False)


# --- samples ---------------------------------------------------------------------------------


def test_samples_hold_single_prompts_whose_means_are_the_extraction_means():
    model = planted.model(planted.unit_vector(0))
    fmt = ChatFormat(planted.tokenizer())
    modules = architecture_map(model).measurable_modules(model)
    sets = {"harmful": planted.HARMFUL, "harmless": planted.HARMLESS, "lookalike": planted.HARMLESS[:3]}
    samples = collect_samples(model, fmt, sets, -2, modules, batch_size=4)
    means = collect_activations(model, fmt, planted.HARMFUL, 2, writers=modules, read_inputs=True, batch_size=3)
    for name in modules:
        assert samples.get("harmful", name).shape[0] == len(planted.HARMFUL)
        torch.testing.assert_close(samples.get("harmful", name).double().mean(0), means.inputs_at(-2)[name], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(samples.get("harmful", layer_key(1)).double().mean(0), means.layers[1, 0], rtol=1e-5, atol=1e-6)
    per_prompt = sum(t[0].numel() * 4 for t in samples.roles["harmful"].values())
    assert samples.nbytes() == per_prompt * (len(planted.HARMFUL) + len(planted.HARMLESS) + 3)
    with pytest.raises(ValueError, match="outside"):
        collect_samples(model, fmt, sets, -9, modules)


# --- the planted look-alike model ------------------------------------------------------------


def lookalike_loaded():
    model, u = planted.lookalike_model()
    tok = planted.lookalike_tokenizer()
    return LoadedModel(model, tok, ModelSource("planted-lookalike", "memory", "", "0" * 64)), u


def lookalike_sets() -> PromptSets:
    h, b, la = (
        PromptSet(tuple(x), name=n) for x, n in ((planted.HARMFUL_LA, "h"), (planted.HARMLESS_LA, "b"), (planted.LOOKALIKE_LA, "l"))
    )
    return PromptSets(h, b, h, b, la, la)


def _odds(loaded, prompts):
    fmt = ChatFormat(loaded.tokenizer)
    return refusal_log_odds(last_logprobs(loaded.model, fmt, prompts), refusal_token_ids(loaded.tokenizer)).mean().item()


def test_gate_raises_harmful_refusal_and_leaves_look_alikes_where_scale_does_not():
    loaded, _ = lookalike_loaded()
    prompts = lookalike_sets()
    extraction = extract(loaded, prompts, ExtractOptions(form=EditForm("gate", "all"), layer=1, position=-1, progress=False))
    assert extraction.samples is not None
    base_h, base_l = _odds(loaded, planted.HARMFUL_LA), _odds(loaded, planted.LOOKALIKE_LA)
    gains = {}
    for method, strength in (("scale", 2.0), ("gate", 2.0)):
        choice = extraction.choose_writers(loaded, EditForm(method, "all", ridge=1e-3))
        record = apply_edit(
            loaded.model, extraction.direction, method, strength, writers=choice.writers, reads=choice.reads, keep_originals=True
        )
        gains[method] = (_odds(loaded, planted.HARMFUL_LA) - base_h, _odds(loaded, planted.LOOKALIKE_LA) - base_l)
        revert_edit(loaded.model, record)
    gate_h, gate_l = gains["gate"]
    scale_h, scale_l = gains["scale"]
    assert gate_h > 3.0 and abs(gate_l) < 0.1 * gate_h  # harmful up, look-alikes nearly unchanged
    assert scale_h > 1.0 and scale_l > 0.2 * scale_h  # scale pushes the look-alikes too


def test_gate_without_look_alike_prompts_is_a_clear_error():
    loaded, _ = lookalike_loaded()
    p = lookalike_sets()
    prompts = PromptSets(p.harmful, p.harmless, p.val_harmful, p.val_harmless)
    with pytest.raises(RosiError, match="look-alike"):
        extract(loaded, prompts, ExtractOptions(form=EditForm("gate"), layer=1, position=-1, progress=False))
