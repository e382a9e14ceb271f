"""Edits applied to whole models: each module's output follows the formula; reverts are exact."""

import pytest
import torch

from conftest import POST_NORM_ARCHS, tiny_model
from rosi import Direction, EditRecord, apply_edit, architecture_map, revert_edit
from rosi.edit.apply import PostNormWarning
from rosi.errors import DirectionError, EditError
from rosi.model.writers import WriterKind

ALL_TARGETS = ("attention", "mlp", "embedding")


def random_direction(size=32, seed=1):
    return Direction(torch.randn(size, generator=torch.Generator().manual_seed(seed)) * 3, layer=1, position=-1, model="tiny")


def _extra(method, strength, W, x, s):
    """The formula's extra output for inputs x (rows), with W in [out, in] layout (float64)."""
    if method == "rosi":
        return strength * (x @ W.mean(dim=0))[:, None] * s
    coefficient = strength if method == "scale" else -strength
    return coefficient * ((x @ W.T) @ s)[:, None] * s


def _outputs(model, writer, x_or_ids, expert=None):
    """The writer module's own output (bias included) for these inputs."""
    module = model.get_submodule(writer.name.rsplit(".", 1)[0])
    if writer.kind is WriterKind.EXPERT:
        return torch.nn.functional.linear(x_or_ids, module.down_proj[expert])
    return module(x_or_ids)


@pytest.mark.parametrize("method,strength", [("rosi", 7.5), ("scale", 0.8), ("ablate", 1.0)])
def test_every_edited_module_follows_the_formula(arch, method, strength):
    model = tiny_model(arch)
    amap = architecture_map(model)
    params = dict(model.named_parameters())
    before = {w.name: params[w.name].detach().clone() for w in amap.writers}
    g = torch.Generator().manual_seed(2)
    inputs = {}
    for w in amap.writers:
        if w.kind is WriterKind.EMBEDDING:
            inputs[w.name] = torch.randint(0, 128, (6,), generator=g)
        else:
            in_dim = w.layout.as_out_in(params[w.name]).shape[-1]
            inputs[w.name] = torch.randn(6, in_dim, generator=g)
    experts = lambda w: range(params[w.name].shape[0]) if w.kind is WriterKind.EXPERT else [None]  # noqa: E731
    ref = {(w.name, e): _outputs(model, w, inputs[w.name], e).detach() for w in amap.writers for e in experts(w)}
    direction = random_direction()
    with pytest.warns(PostNormWarning) if arch in POST_NORM_ARCHS else _no_warning():
        record = apply_edit(model, direction, method, strength, targets=ALL_TARGETS, untie_embeddings=True)
    assert len(record.matrices) == len(amap.writers)
    s = direction.unit.double()
    for w in amap.writers:
        W_all = w.layout.as_out_in(before[w.name]).double()
        for e in experts(w):
            W = W_all if e is None else W_all[e]
            scale = 1.0
            if w.kind is WriterKind.EMBEDDING:
                x = torch.nn.functional.one_hot(inputs[w.name], 128).double()
                # Gemma multiplies embeddings by sqrt(hidden) inside the module.
                scale = float(getattr(model.get_input_embeddings(), "embed_scale", 1.0))
            else:
                x = inputs[w.name].double()
            expected = ref[(w.name, e)].double() + scale * _extra(method, strength, W, x, s)
            got = _outputs(model, w, inputs[w.name], e).double()
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5, msg=f"{w.name} expert {e}")


class _no_warning:
    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("error", PostNormWarning)

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def test_default_targets_leave_embedding_and_other_weights_alone():
    model = tiny_model("llama")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    record = apply_edit(model, random_direction(), "rosi", 5.0)
    edited = {m.name for m in record.matrices}
    assert len(edited) == 6 and all(("o_proj" in n) or ("down_proj" in n) for n in edited)
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) == (name not in edited), name


def test_layer_selection():
    model = tiny_model("qwen2")
    record = apply_edit(model, random_direction(), "rosi", 5.0, layers=(1,))
    assert {m.layer for m in record.matrices} == {1}
    with pytest.raises(EditError, match="out of range"):
        apply_edit(tiny_model("qwen2"), random_direction(), "rosi", 5.0, layers=(7,))


def test_revert_float32_is_bit_exact_with_originals(arch):
    model = tiny_model(arch)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    record = apply_edit(model, random_direction(), "rosi", 50.0, targets=ALL_TARGETS, untie_embeddings=True, keep_originals=True)
    revert_edit(model, record)
    after = dict(model.named_parameters())
    assert set(after) == set(before)
    for name, p in after.items():
        assert torch.equal(p, before[name]), name
    if architecture_map(model).tied_embeddings:
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_revert_from_a_saved_record_is_within_one_rounding_step(tmp_path, dtype):
    model = tiny_model("qwen2", dtype=dtype)
    before = {n: p.detach().float().clone() for n, p in model.named_parameters()}
    record = apply_edit(model, random_direction(), "rosi", 50.0)
    edited = {m.name: dict(model.named_parameters())[m.name].detach().float().clone() for m in record.matrices}
    record.save(tmp_path / "edit.safetensors")
    loaded = EditRecord.load(tmp_path / "edit.safetensors")
    assert loaded.summary() == record.summary()
    revert_edit(model, loaded)
    eps = torch.finfo(dtype).eps
    for name, p in model.named_parameters():
        got = p.detach().float()
        if name not in edited:
            assert torch.equal(got, before[name])
            continue
        bound = eps * torch.maximum(edited[name].abs(), before[name].abs())
        assert ((got - before[name]).abs() <= bound).all(), name
        assert not torch.equal(edited[name], before[name])


def test_edit_is_computed_in_float32_and_written_back_in_the_original_dtype():
    model = tiny_model("llama", dtype=torch.bfloat16)
    ref = tiny_model("llama", dtype=torch.bfloat16)
    direction = random_direction()
    apply_edit(model, direction, "rosi", 20.0)
    W = ref.model.layers[0].self_attn.o_proj.weight.float()
    expected = (W + 20.0 * torch.outer(direction.unit, W.mean(dim=0))).to(torch.bfloat16)
    got = model.model.layers[0].self_attn.o_proj.weight
    assert got.dtype == torch.bfloat16 and torch.equal(got, expected)


def test_tied_embedding_is_refused_unless_untied():
    model = tiny_model("gemma")
    with pytest.raises(EditError, match="tied to the output head.*untie"):
        apply_edit(model, random_direction(), "rosi", 1.0, targets=("embedding",))
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    head_before = model.get_output_embeddings().weight.detach().clone()
    record = apply_edit(model, random_direction(), "rosi", 1.0, targets=("embedding",), untie_embeddings=True)
    assert record.untied_embeddings and not model.config.tie_word_embeddings
    assert torch.equal(model.get_output_embeddings().weight, head_before)  # the head keeps the original
    assert not torch.equal(model.get_input_embeddings().weight, head_before)


@pytest.mark.parametrize(
    "method,strength,match",
    [
        ("rosi", -1.0, ">= 0"),
        ("scale", float("nan"), "finite"),
        ("rosi", float("inf"), "finite"),
        ("ablate", -0.5, ">= 0"),
        ("bogus", 1.0, "unknown method"),
    ],
)
def test_bad_strength_or_method(method, strength, match):
    with pytest.raises(EditError, match=match):
        apply_edit(tiny_model("llama"), random_direction(), method, strength)


def test_direction_of_the_wrong_size_is_refused():
    with pytest.raises(DirectionError, match="24 values but the model's hidden size is 32"):
        apply_edit(tiny_model("llama"), random_direction(size=24), "rosi", 1.0)


def test_unknown_target_is_refused():
    with pytest.raises(EditError, match="unknown edit target"):
        apply_edit(tiny_model("llama"), random_direction(), "rosi", 1.0, targets=("lm_head",))


def _reads(model, seed=5):
    amap = architecture_map(model)
    params = dict(model.named_parameters())
    g = torch.Generator().manual_seed(seed)
    return {
        w.name: torch.randn(w.layout.as_out_in(params[w.name]).shape[-1], generator=g)
        for w in amap.writers
        if w.kind in (WriterKind.ATTENTION, WriterKind.MLP)
    }


def test_probe_edit_adds_k_times_the_read_along_the_direction_and_reverts():
    model = tiny_model("llama")
    amap = architecture_map(model)
    params = dict(model.named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}
    reads = _reads(model)
    chosen = sorted(reads)[:3]
    direction = random_direction()
    x = {n: torch.randn(4, reads[n].numel(), generator=torch.Generator().manual_seed(9)) for n in chosen}
    ref = {n: _outputs(model, w, x[n]).detach().double() for w in amap.writers if (n := w.name) in chosen}
    record = apply_edit(model, direction, "probe", 1.5, writers=chosen, reads=reads, keep_originals=True)
    assert [m.name for m in record.matrices] == [w.name for w in amap.writers if w.name in chosen]
    s = direction.unit.double()
    for w in amap.writers:
        if w.name not in chosen:
            assert torch.equal(params[w.name], before[w.name])
            continue
        expected = ref[w.name] + 1.5 * (x[w.name].double() @ reads[w.name].double())[:, None] * s
        torch.testing.assert_close(_outputs(model, w, x[w.name]).double(), expected, rtol=1e-5, atol=1e-5)
    revert_edit(model, record)
    assert all(torch.equal(p, before[n]) for n, p in params.items())
    # without kept originals the saved record reverts arithmetically
    record = apply_edit(model, direction, "probe", 1.5, reads={n: reads[n] for n in chosen})
    assert len(record.matrices) == 3  # the writers default to those with a read-out
    revert_edit(model, record)
    for n, p in params.items():
        torch.testing.assert_close(p, before[n], rtol=0, atol=1e-6)


def test_probe_edit_needs_fitting_reads():
    model = tiny_model("llama")
    reads = _reads(model)
    name = sorted(reads)[0]
    with pytest.raises(EditError, match="reads="):
        apply_edit(model, random_direction(), "probe", 1.0)
    with pytest.raises(EditError, match="no read-out vector"):
        apply_edit(model, random_direction(), "probe", 1.0, writers=sorted(reads)[:2], reads={name: reads[name]})
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    bad = dict(reads)
    bad[sorted(reads)[-1]] = torch.ones(reads[sorted(reads)[-1]].numel() + 1)
    with pytest.raises(EditError, match="does not fit"):
        apply_edit(model, random_direction(), "probe", 1.0, reads=bad)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # nothing half-edited
