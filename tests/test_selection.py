"""Selection recovers the direction that really controls refusal in a planted model."""

import pytest
import torch

import planted
from rosi.direction.activations import mean_activations
from rosi.direction.interventions import ablated, added
from rosi.direction.score import last_logprobs, refusal_log_odds, refusal_token_ids
from rosi.direction.selection import SelectionOptions, select_direction
from rosi.model.chat import ChatFormat


@pytest.fixture
def setup():
    u = planted.unit_vector(0)
    tok = planted.tokenizer()
    return u, planted.model(u), ChatFormat(tok), refusal_token_ids(tok)


def scores(model, fmt, prompts, ids):
    return refusal_log_odds(last_logprobs(model, fmt, prompts), ids)


def decoy_means(layers, n_pos):
    """Mean activations where every candidate difference is a different decoy direction."""
    harmless = torch.zeros(layers, n_pos, planted.HIDDEN, dtype=torch.float64)
    harmful = torch.stack([torch.stack([2 * planted.unit_vector(10 + 7 * layer + p) for p in range(n_pos)]) for layer in range(layers)])
    return harmful.double(), harmless


def test_the_planted_model_refuses_through_u(setup):
    u, model, fmt, ids = setup
    assert ids == [planted.WORDS.index("I")]
    assert (scores(model, fmt, planted.HARMFUL, ids) > 0).all()
    assert (scores(model, fmt, planted.HARMLESS, ids) < 0).all()
    with ablated(model, u):
        assert (scores(model, fmt, planted.HARMFUL, ids) < 0).all()
    with added(model, 1, 3 * u):
        assert (scores(model, fmt, planted.HARMLESS, ids) > 0).all()
    assert (scores(model, fmt, planted.HARMFUL, ids) > 0).all()  # hooks are gone


def test_difference_of_means_points_along_u(setup):
    u, model, fmt, _ = setup
    n_pos = len(fmt.post_instruction_ids())
    diff = mean_activations(model, fmt, planted.HARMFUL, n_pos) - mean_activations(model, fmt, planted.HARMLESS, n_pos)
    cos = (diff.float() @ u) / diff.float().norm(dim=-1)
    assert (cos[:, -1] > 0.6).all()  # the other words differ between the sets too


def test_selection_recovers_the_planted_candidate(setup):
    """Every candidate but one is a decoy direction; the real one must win, and a copy of it in
    the last 20% of layers must be dropped."""
    u, model, fmt, _ = setup
    n_pos = len(fmt.post_instruction_ids())
    harmful, harmless = decoy_means(4, n_pos)
    harmful[1, 0] = 2 * u  # the real direction, at layer 1, position -n_pos
    harmful[3, 1] = 2 * u  # also in the last layer: must be filtered out
    sel = select_direction(
        model, fmt, harmful - harmless, tuple(planted.HARMFUL), tuple(planted.HARMLESS), options=SelectionOptions(exact_candidates=2)
    )
    assert (sel.layer, sel.position) == (1, -n_pos)
    torch.testing.assert_close(sel.direction, (2 * u).float())
    by_key = {(s.layer, s.position): s for s in sel.scores}
    assert by_key[(3, 1 - n_pos)].status == "late layer"
    real = by_key[(1, -n_pos)]
    assert real.status == "chosen" and real.bypass < sel.base_harmful and real.induce > 0 and real.kl < 0.1
    # the first-order screen ranked the real direction among the two scored exactly
    ranked = sorted((s for s in sel.scores if s.status != "late layer"), key=lambda s: s.screen_bypass)
    assert (1, -n_pos) in [(s.layer, s.position) for s in ranked[:2]]
    assert sel.cost.scored_exactly <= 2 < sel.cost.candidates


def test_without_eligible_candidates_the_edit_effect_decides(setup):
    """No candidate passes the KL filter (threshold below zero): the fallback applies the real
    edit (scale along the candidate, on the one writer that carries the signal) and keeps the
    candidate whose edit raises refusal on harmful prompts."""
    from contextlib import contextmanager

    from rosi import apply_edit
    from rosi.edit.apply import revert_edit

    u, model, fmt, _ = setup
    n_pos = len(fmt.post_instruction_ids())
    harmful, harmless = decoy_means(4, n_pos)
    harmful[2, -1] = 2 * u  # the real direction; layer 1's last position holds a decoy
    calls = []

    @contextmanager
    def edit(direction):
        calls.append((direction.layer, direction.position))
        record = apply_edit(model, direction, "scale", 2.0, writers=["model.layers.0.self_attn.o_proj.weight"], keep_originals=True)
        try:
            yield
        finally:
            revert_edit(model, record)

    options = SelectionOptions(exact_candidates=2, kl_threshold=-1.0)
    sel = select_direction(model, fmt, harmful - harmless, tuple(planted.HARMFUL), tuple(planted.HARMLESS), options=options, trial=edit)
    assert calls[:2] == [(1, -1), (2, -1)]  # harmful prompts: last-token candidates of layers [25%, 80%) of 4
    assert calls[2] == (2, -1)  # harmless prompts: best on harmful first
    assert (sel.layer, sel.position) == (2, -1) and sel.by_effect and not sel.strict
    by_key = {(s.layer, s.position): s for s in sel.scores}
    real, decoy = by_key[(2, -1)], by_key[(1, -1)]
    assert real.status.startswith("chosen (edit effect") and real.edit_harmful > decoy.edit_harmful
    assert real.edit_harmful > sel.base_harmful
    assert sel.cost.scored_by_edit_effect == 2
    # without an edit the relaxed KL rule still picks something and says so
    relaxed = select_direction(model, fmt, harmful - harmless, tuple(planted.HARMFUL), tuple(planted.HARMLESS), options=options)
    assert not relaxed.by_effect and any(s.status.startswith("chosen (relaxed") for s in relaxed.scores)
