"""Token-level fits: streamed second moments, the primal gate fit, and where a fitted read-out fires."""

from __future__ import annotations

import pytest
import torch

import planted
from rosi import apply_edit, revert_edit
from rosi.direction.moments import Moments
from rosi.direction.tokens import read_mask
from rosi.edit.firing import Firing, measure_firing, record_reads, token_pushes
from rosi.edit.methods import EditForm
from rosi.edit.rank_one import benign_subspace, gate_read, gate_read_moments, subspace_of_second_moment
from rosi.errors import EditError
from rosi.model.chat import DECIDING, PAD, REPLY, SYSTEM, TEMPLATE, USER, ChatFormat, labelled_batch, segment_labels
from rosi.workflows.extract import extract
from rosi.workflows.options import ExtractOptions
from test_gate import classes, lookalike_loaded, lookalike_sets

# --- moments ---------------------------------------------------------------------------------


def test_streamed_moments_equal_the_batch_ones():
    rows = torch.randn(103, 17, dtype=torch.float64)
    streamed = Moments(dtype=torch.float64)
    for part in rows.split(10):
        streamed.add(part)
    whole = Moments.of(rows)
    assert streamed.count == whole.count == 103
    assert torch.allclose(streamed.second(), rows.T @ rows / 103)
    assert torch.allclose(streamed.mean(), rows.mean(0))
    assert torch.allclose(streamed.second(), whole.second())


def test_float32_moments_are_close_to_float64_ones():
    rows = torch.randn(500, 30, dtype=torch.float64) * 5 + 3
    m = Moments()
    for part in rows.split(64):
        m.add(part.float())
    assert torch.allclose(m.second(), rows.T @ rows / 500, rtol=1e-5, atol=1e-4)


def test_moments_refuse_rows_of_another_width_and_report_emptiness():
    m = Moments()
    m.add(torch.ones(2, 3))
    with pytest.raises(ValueError, match="width"):
        m.add(torch.ones(2, 4))
    with pytest.raises(ValueError, match="no rows"):
        Moments().mean()


# --- the primal fit --------------------------------------------------------------------------


@pytest.mark.parametrize("ridge", [0.0, 0.01, 0.3])
def test_primal_and_dual_gate_fits_agree(ridge):
    harmful, benign = classes(d=60, n_h=15, n_b=25)
    dual = gate_read(harmful, benign, ridge=ridge)
    primal = gate_read_moments([(Moments.of(harmful), 1.0), (Moments.of(benign), 0.0)], ridge=ridge)
    assert torch.allclose(primal, dual, rtol=1e-4, atol=1e-6)


def test_primal_and_dual_null_space_fits_agree():
    harmful, benign = classes(d=30, n_h=40, n_b=60)
    dual = gate_read(harmful, benign, ridge=0.05, null_space=0.8)
    primal = gate_read_moments([(Moments.of(harmful), 1.0), (Moments.of(benign), 0.0)], ridge=0.05, null_space=0.8)
    assert torch.allclose(primal, dual, rtol=1e-4, atol=1e-6)


def test_the_subspace_of_a_second_moment_is_the_rows_principal_subspace():
    rows = torch.randn(80, 12, dtype=torch.float64) @ torch.diag(torch.linspace(0.1, 3, 12, dtype=torch.float64))
    a, b = benign_subspace(rows, 0.9), subspace_of_second_moment(rows.T @ rows / 80, 0.9)
    assert a.shape == b.shape
    assert torch.allclose(a @ a.T, b @ b.T, atol=1e-8)


def test_a_benign_token_group_silences_the_read_out_where_the_one_position_fit_does_not():
    """Harmful and benign deciding rows differ by a harm feature; benign tokens elsewhere carry a
    'scary word' feature the deciding rows never show. The one-position fit leaves the scary
    feature free (and it correlates with harm on the deciding rows), the token group pins it."""
    g = torch.Generator().manual_seed(1)
    d = 24
    harm, scary = torch.zeros(d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64)
    harm[0], scary[1] = 1.0, 1.0
    noise = lambda n: 0.1 * torch.randn(n, d, generator=g, dtype=torch.float64)  # noqa: E731
    harmful = noise(40) + 2 * harm + 2 * scary  # harmful requests also use scary words
    benign_decide = noise(40)
    benign_tokens = noise(400) + 2 * scary  # look-alike words: scary, not harmful
    one = gate_read_moments([(Moments.of(harmful), 1.0), (Moments.of(benign_decide), 0.0)], ridge=0.01)
    tokens = gate_read_moments([(Moments.of(harmful), 1.0), (Moments.of(benign_decide), 0.0), (Moments.of(benign_tokens), 0.0)], ridge=0.01)
    assert float((benign_tokens @ one.double()).mean()) > 0.3
    assert abs(float((benign_tokens @ tokens.double()).mean())) < 0.05
    assert float((harmful @ tokens.double()).mean()) > 0.8


def test_the_primal_fit_refuses_groups_it_cannot_use():
    harmful, benign = classes()
    with pytest.raises(ValueError, match="harmful group"):
        gate_read_moments([(Moments.of(benign), 0.0)])
    with pytest.raises(ValueError, match="tell harmful"):
        gate_read_moments([(Moments.of(benign), 1.0), (Moments.of(benign), 0.0)], ridge=0.01)


# --- segments, read positions ----------------------------------------------------------------


def test_segment_labels_follow_the_template():
    tok = planted.lookalike_tokenizer()
    fmt = ChatFormat(tok)
    ids, labels = segment_labels(fmt, "how to kill a process", [7, 8])
    words = tok.convert_ids_to_tokens(ids)
    assert words == ["user", "how", "to", "kill", "a", "process", "</s>", "assistant", "Sure", "how"]
    assert labels == [SYSTEM, USER, USER, USER, USER, USER, TEMPLATE, DECIDING, REPLY, REPLY]


def test_labelled_batches_are_left_padded_and_read_masks_find_their_positions():
    fmt = ChatFormat(planted.lookalike_tokenizer())
    batch, labels = labelled_batch(fmt, ["kill weeds", "how to kill a process"], [[7], []])
    assert labels.shape == batch["input_ids"].shape == (2, 8)
    assert (labels[0, :2] == PAD).all() and (batch["attention_mask"][0, :2] == 0).all()
    assert labels[0, -1] == REPLY and labels[1, -1] == DECIDING
    decide = read_mask(labels, "decide", -1)
    assert decide.nonzero().tolist() == [[0, 6], [1, 7]]
    assert read_mask(labels, "decide", -2).nonzero().tolist() == [[0, 5], [1, 6]]
    assert read_mask(labels, "instruction", -1).nonzero().tolist() == [[0, 4], [1, 5]]
    assert read_mask(labels, "both", -1).sum() == 4


def test_token_level_options_are_checked():
    with pytest.raises(EditError, match="gate and surgical"):
        EditForm("scale", tokens=True)
    with pytest.raises(EditError, match="--fit-tokens"):
        EditForm("gate", read="instruction")
    with pytest.raises(EditError, match="read position"):
        EditForm("gate", tokens=True, read="everywhere")


# --- the firing probe ------------------------------------------------------------------------


def test_the_probe_push_is_what_the_edit_adds_along_the_direction():
    """Layer 0's attention output is the planted model's only writer with an input; editing it
    alone, its output changes by exactly ``(r . x_t) s_hat`` at every token, the probe's push."""
    loaded, _ = lookalike_loaded()
    form = EditForm("gate", "all", ridge=1e-3)
    extraction = extract(loaded, lookalike_sets(), ExtractOptions(form=form, layer=1, position=-1, progress=False))
    choice = extraction.choose_writers(loaded, form)
    assert choice.writers == ["model.layers.0.self_attn.o_proj.weight"]
    fmt = ChatFormat(loaded.tokenizer)
    prompts, replies = planted.LOOKALIKE_LA[:4], [[7, 8], [], [9], [7]]
    values, labels = token_pushes(loaded.model, fmt, record_reads(loaded.model, _record(loaded, extraction, choice)), prompts, replies)
    module = loaded.model.model.layers[0].self_attn.o_proj
    outputs = []
    handle = module.register_forward_hook(lambda m, a, out: outputs.append(out.detach().clone()))
    try:
        batch, lab = labelled_batch(fmt, prompts, replies)
        from rosi.model.hooks import forward

        forward(loaded.model.base_model, batch)
        record = apply_edit(
            loaded.model, extraction.direction, "gate", 2.0, writers=choice.writers, reads=choice.reads, keep_originals=True
        )
        forward(loaded.model.base_model, batch)
        revert_edit(loaded.model, record)
    finally:
        handle.remove()
    added = ((outputs[1] - outputs[0]) @ extraction.direction.unit)[lab != PAD]
    torch.testing.assert_close(values.float(), added, rtol=1e-4, atol=1e-4)
    assert (labels == lab[lab != PAD]).all()


def _record(loaded, extraction, choice):
    record = apply_edit(loaded.model, extraction.direction, "gate", 2.0, writers=choice.writers, reads=choice.reads, keep_originals=True)
    revert_edit(loaded.model, record)
    return record


def test_the_one_position_fit_fires_on_look_alike_words_and_the_token_level_fit_does_not():
    """The planted look-alike model: the scary word ("kill") is written on every token after it,
    the harm ("person") too. Fit at the deciding token only, the gate's read-out pushes the
    look-alikes' own words and the system tokens by about half a harmful request's deciding push;
    fit on every benign token, it stays near zero there and keeps its push on harm."""
    loaded, _ = lookalike_loaded()
    fmt = ChatFormat(loaded.tokenizer)
    sets = {"harmful": planted.HARMFUL_LA, "lookalike": planted.LOOKALIKE_LA, "harmless": planted.HARMLESS_LA}
    firing = {}
    for tokens in (False, True):
        form = EditForm("gate", "all", ridge=1e-3, tokens=tokens)
        extraction = extract(loaded, lookalike_sets(), ExtractOptions(form=form, layer=1, position=-1, progress=False))
        assert (extraction.moments is not None) == tokens
        firing[tokens] = measure_firing(loaded.model, fmt, _record(loaded, extraction, extraction.choose_writers(loaded, form)), sets)
    one, tok = firing[False], firing[True]
    assert one.relative("lookalike", "user", "p90") > 0.6 and one.relative("lookalike", "system") > 0.5
    assert abs(tok.relative("lookalike", "user", "p90")) < 0.35 and abs(tok.relative("lookalike", "system")) < 0.15
    for f in (one, tok):
        assert f.relative("harmful", "deciding") == pytest.approx(1.0)
        assert abs(f.relative("lookalike", "deciding")) < 0.15
    assert Firing.from_json(tok.to_json()) == tok
    assert "deciding" in tok.table()


def test_moments_keep_few_rows_as_rows_and_many_as_a_gram_matrix_with_the_same_result():
    rows = torch.randn(50, 40, dtype=torch.float64)
    few, many = Moments(dtype=torch.float64), Moments(dtype=torch.float64)
    few.add(rows[:10])
    assert few.gram is None and few.nbytes() < 40 * 40 * 8  # 10 rows of 40: kept as rows
    for part in rows.split(7):
        many.add(part)
    assert many.gram is not None and not many.rows
    torch.testing.assert_close(few.second(), rows[:10].T @ rows[:10] / 10)
    torch.testing.assert_close(many.second(), rows.T @ rows / 50)


def test_moments_add_up_to_the_moments_of_all_their_rows():
    rows = torch.randn(60, 20, dtype=torch.float64)
    a, b = Moments(dtype=torch.float64), Moments(dtype=torch.float64)
    a.add(rows[:5])  # kept as rows
    for part in rows[5:].split(20):
        b.add(part)  # a Gram matrix
    both = a + b
    assert both.count == 60 and a.count == 5 and b.count == 55
    torch.testing.assert_close(both.second(), rows.T @ rows / 60)
    torch.testing.assert_close(both.mean(), rows.mean(0))
    torch.testing.assert_close((a + Moments(dtype=torch.float64)).second(), a.second())
