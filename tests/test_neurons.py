"""The ``neurons`` form: a rank-one edit whose read-out uses only MLP neurons that fire on harmful
inputs and stay quiet on benign ones, each weight signed as its neuron's harmful activation."""

from __future__ import annotations

import pytest
import torch

import planted
from rosi import apply_edit, revert_edit
from rosi.direction.score import last_logprobs, refusal_log_odds, refusal_token_ids
from rosi.edit.methods import EditForm
from rosi.edit.rank_one import harm_neurons, neuron_read, nonnegative_least_squares
from rosi.model.chat import ChatFormat
from rosi.model.loading import LoadedModel, ModelSource
from rosi.prompts import PromptSet, PromptSets
from rosi.workflows.extract import extract
from rosi.workflows.options import ExtractOptions

LAYER = 1  # the planted neurons' layer, and the direction's


def test_nonnegative_least_squares_solves_the_constrained_problem():
    torch.manual_seed(0)
    x = torch.randn(30, 6, dtype=torch.float64)
    truth = torch.tensor([1.0, 0.0, 2.0, 0.0, 0.5, 0.0], dtype=torch.float64)
    y = x @ truth
    torch.testing.assert_close(nonnegative_least_squares(x, y, 0.0), truth, atol=1e-6, rtol=0)
    w = nonnegative_least_squares(x, x @ -truth, 0.0)  # the unconstrained optimum is negative: the bound holds
    assert (w >= 0).all()
    # the KKT conditions of min |xw - y|^2 + lam |w|^2, w >= 0: zero gradient where w > 0, non-negative where w = 0
    y = torch.randn(30, dtype=torch.float64)
    w = nonnegative_least_squares(x, y, 0.5)
    grad = x.T @ (x @ w - y) + 0.5 * w
    assert (grad[w > 1e-9].abs() < 1e-6).all() and (grad[w <= 1e-9] > -1e-6).all()


def _neurons(n_h=40, n_b=60, seed=0):
    """Activations of 8 neurons: 0 fires on harm only, 1 on harm and look-alikes (a scary word), 2
    is negative on harm only, 3-7 are noise."""
    g = torch.Generator().manual_seed(seed)
    h = 0.1 * torch.randn(n_h, 8, generator=g)
    b = 0.1 * torch.randn(n_b, 8, generator=g)
    h[:, 0] += 2.0
    h[:, 1] += 2.0
    b[n_b // 2 :, 1] += 2.0  # the look-alike half of the benign prompts
    h[:, 2] -= 1.5
    return h, b


def test_only_harm_only_neurons_are_read_each_with_its_harmful_sign():
    h, b = _neurons()
    index, sign = harm_neurons(h, b)
    assert set(index.tolist()) == {0, 2} and dict(zip(index.tolist(), sign.tolist(), strict=True)) == {0: 1.0, 2: -1.0}
    u = neuron_read(h, b)
    assert set(torch.nonzero(u).flatten().tolist()) <= {0, 2}  # zero on the shared and the noise neurons
    assert u[0] > 0 and u[2] <= 0  # each weight with its neuron's harmful sign
    assert float((h @ u).mean()) > 0.5 and abs(float((b @ u).mean())) < 0.1
    with pytest.raises(ValueError, match="no neuron fires"):
        neuron_read(b[:30], b[30:])  # look-alikes against harmless: no neuron that is quiet on the benign ones


def _planted_with_neurons():
    """The look-alike planted model with two MLP neurons at layer 1: neuron 0 reads the harm
    feature ``h``, neuron 1 the scary word ``a`` that harmful and look-alike prompts share. The
    down projection stays zero, so the base model is unchanged."""
    model, u = planted.lookalike_model()
    g = torch.Generator().manual_seed(7)
    basis, _ = torch.linalg.qr(torch.randn(planted.HIDDEN, 3, generator=g))
    _, a, harm = basis.T  # as planted.lookalike_model builds them
    mlp = model.model.layers[LAYER].mlp
    with torch.no_grad():
        mlp.gate_proj.weight[0] = 3.0 * harm
        mlp.up_proj.weight[0] = 3.0 * harm
        mlp.gate_proj.weight[1] = 3.0 * a
        mlp.up_proj.weight[1] = 3.0 * a
    loaded = LoadedModel(model, planted.lookalike_tokenizer(), ModelSource("planted-neurons", "memory", "", "0" * 64))
    h, b, la = (
        PromptSet(tuple(x), name=n) for x, n in ((planted.HARMFUL_LA, "h"), (planted.HARMLESS_LA, "b"), (planted.LOOKALIKE_LA, "l"))
    )
    return loaded, PromptSets(h, b, h, b, la, la)


def _odds(loaded, prompts):
    fmt = ChatFormat(loaded.tokenizer)
    return refusal_log_odds(last_logprobs(loaded.model, fmt, prompts), refusal_token_ids(loaded.tokenizer)).mean().item()


def test_the_neurons_edit_raises_harmful_refusal_and_leaves_look_alikes_where_scale_does_not():
    loaded, prompts = _planted_with_neurons()
    options = ExtractOptions(form=EditForm("neurons", "all"), layer=LAYER, position=-1, progress=False)
    extraction = extract(loaded, prompts, options)
    choice = extraction.choose_writers(loaded, EditForm("neurons", "all"))
    down = f"model.layers.{LAYER}.mlp.down_proj.weight"
    assert choice.writers == [down]  # the only MLP whose neurons separate harm; attention writers are never read
    assert "neurons read: 1-1 per writer" in choice.note
    read = choice.reads[down]
    assert torch.nonzero(read).flatten().tolist() == [0]  # the harm neuron, not the scary-word one
    base_h, base_l = _odds(loaded, planted.HARMFUL_LA), _odds(loaded, planted.LOOKALIKE_LA)
    gains = {}
    for method in ("scale", "neurons"):
        c = extraction.choose_writers(loaded, EditForm(method, "all"))
        before = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
        record = apply_edit(loaded.model, extraction.direction, method, 2.0, writers=c.writers, reads=c.reads, keep_originals=True)
        if method == "neurons":  # the edit is W + k s_hat u^T on the one writer, nothing else
            params = dict(loaded.model.named_parameters())
            expected = before[down] + 2.0 * torch.outer(extraction.direction.unit, read)
            torch.testing.assert_close(params[down], expected)
            assert all(torch.equal(params[n], before[n]) for n in before if n != down)
        gains[method] = (_odds(loaded, planted.HARMFUL_LA) - base_h, _odds(loaded, planted.LOOKALIKE_LA) - base_l)
        revert_edit(loaded.model, record)
        assert all(torch.equal(p, before[n]) for n, p in loaded.model.named_parameters())  # revert is exact
    neurons_h, neurons_l = gains["neurons"]
    scale_h, scale_l = gains["scale"]
    assert neurons_h > 1.0 and abs(neurons_l) < 0.05 * neurons_h  # harmful up, look-alikes unchanged
    assert scale_h > 1.0 and scale_l > 0.2 * scale_h  # scale pushes the look-alikes too
