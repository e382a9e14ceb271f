"""The edit math on plain tensors: each method's formula, exactly."""

import pytest
import torch

from rosi.direction.vector import Direction
from rosi.edit.methods import METHODS
from rosi.edit.rank_one import edited_weight, probe_read
from rosi.errors import DirectionError

RIGHT_FACTORS = {name: m.factor for name, m in METHODS.items() if m.factor is not None}


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(16, 24, generator=g, dtype=torch.float64)
    s = torch.randn(16, generator=g, dtype=torch.float64)
    s = s / s.norm()
    x = torch.randn(5, 24, generator=g, dtype=torch.float64)
    return W, s, x


def test_rosi_adds_mean_coordinate_along_direction(data):
    W, s, x = data
    new, right = edited_weight(W, s, RIGHT_FACTORS["rosi"], 3.0)
    w_bar = W.mean(dim=0)
    expected = x @ W.T + 3.0 * (x @ w_bar)[:, None] * s[None, :]
    torch.testing.assert_close(x @ new.T, expected)
    # w_bar . x is the mean coordinate of W x
    torch.testing.assert_close(x @ w_bar, (x @ W.T).mean(dim=1))


def test_scale_multiplies_the_component_along_s(data):
    W, s, x = data
    new, _ = edited_weight(W, s, RIGHT_FACTORS["scale"], 0.5)
    y, y_new = x @ W.T, x @ new.T
    torch.testing.assert_close(y_new @ s, 1.5 * (y @ s))
    orth = lambda v: v - (v @ s)[:, None] * s[None, :]  # noqa: E731
    torch.testing.assert_close(orth(y_new), orth(y))


def test_ablate_removes_the_component(data):
    W, s, x = data
    new, _ = edited_weight(W, s, RIGHT_FACTORS["ablate"], 1.0)
    torch.testing.assert_close(x @ new.T @ s, torch.zeros(5, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(new, W - torch.outer(s, s @ W))


@pytest.mark.parametrize("method", sorted(RIGHT_FACTORS))
def test_batched_expert_stack_equals_per_matrix(data, method):
    W, s, _ = data
    stack = torch.stack([W, 2 * W, -W])
    new, right = edited_weight(stack, s, RIGHT_FACTORS[method], 0.7)
    for i in range(3):
        single, r = edited_weight(stack[i], s, RIGHT_FACTORS[method], 0.7)
        torch.testing.assert_close(new[i], single)
        torch.testing.assert_close(right[i], r)


def test_update_is_rank_one(data):
    W, s, _ = data
    new, _ = edited_weight(W, s, RIGHT_FACTORS["rosi"], 5.0)
    assert torch.linalg.matrix_rank(new - W).item() == 1


@pytest.mark.parametrize("bad", [torch.zeros(4), torch.tensor([1.0, float("nan"), 0, 0]), torch.tensor([float("inf"), 0, 0, 0])])
def test_unit_refuses_degenerate_vectors(bad):
    with pytest.raises(DirectionError):
        Direction(bad)


def test_probe_read_is_zero_on_the_harmless_mean_and_one_on_the_harmful_mean():
    g = torch.Generator().manual_seed(3)
    h, b = torch.randn(40, generator=g, dtype=torch.float64), torch.randn(40, generator=g, dtype=torch.float64)
    u = probe_read(h, b).double()
    torch.testing.assert_close(u @ b, torch.tensor(0.0, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(u @ h, torch.tensor(1.0, dtype=torch.float64), atol=1e-6, rtol=0)
    # the shortest such vector lies in span{h, b}: nothing of it is orthogonal to both
    basis, _ = torch.linalg.qr(torch.stack([h, b], dim=1))
    torch.testing.assert_close(basis @ (basis.T @ u), u, atol=1e-6, rtol=0)
    # W + k outer(s, u) adds k s at the harmful mean input and nothing at the harmless one
    W = torch.randn(16, 40, generator=g, dtype=torch.float64)
    s = torch.randn(16, generator=g, dtype=torch.float64)
    s = s / s.norm()
    new = W + 2.5 * torch.outer(s, u)
    torch.testing.assert_close(new @ h - W @ h, 2.5 * s, atol=1e-6, rtol=0)
    torch.testing.assert_close(new @ b, W @ b, atol=1e-6, rtol=0)


def test_probe_read_refuses_inputs_that_do_not_separate():
    h = torch.randn(8)
    with pytest.raises(ValueError, match="parallel"):
        probe_read(h, 3 * h)
    with pytest.raises(ValueError, match="parallel"):
        probe_read(torch.zeros(8), torch.zeros(8))


@pytest.mark.parametrize("name", [n for n, m in METHODS.items() if m.recover is not None])
@pytest.mark.parametrize("strength", [0.5, 1.0, 2.0])
def test_a_method_recovers_its_factor_from_the_edited_weights(name, strength):
    """`rosi verify`'s check: the registry's ``recover`` gives back the factor that was added."""
    torch.manual_seed(0)
    spec = METHODS[name]
    w = torch.randn(12, 7, dtype=torch.float64)
    s = torch.nn.functional.normalize(torch.randn(12, dtype=torch.float64), dim=0)
    right = spec.factor(w, s, strength)
    edited = w + torch.outer(s, right)
    torch.testing.assert_close(spec.recover(edited, s, strength, right), right)
    other = w + torch.outer(s, 1.1 * right)  # a factor that was not the one recorded
    assert not torch.allclose(spec.recover(other, s, strength, right), right)


def test_the_registry_says_which_methods_survive_ablation_and_which_strengths_the_tune_references():
    surviving = {n for n, m in METHODS.items() if m.survives_ablation}
    assert {n for n, m in METHODS.items() if m.needs_reads} <= surviving  # read-outs of the writers' inputs, which ablation keeps
    assert not {"scale", "ablate"} & surviving  # both read the writers' own component along the direction, which ablation zeroed
    assert all(m.reference_strength is None or m.reference_strength in m.grid for m in METHODS.values())
