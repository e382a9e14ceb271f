"""The rank-one edit math: small pure functions on tensors. Nothing here knows about models or files.

Every rosi edit is ``W' = W + outer(s_hat, r)`` for a weight ``W`` in ``[out, in]`` layout
(``out`` is the residual stream) and a unit vector ``s_hat`` of size ``out``; the methods
(:mod:`rosi.edit.methods`) differ only in the right factor ``r`` (size ``in``). This module
applies such an update: as a reference formula, in place over blocks of columns, and from a
stored right factor (for read-out edits and reverts). :func:`probe_read` measures the ``probe``
method's read-out from two mean inputs, :func:`gate_read` the ``gate`` method's from the inputs of
single prompts, :func:`neuron_read` the ``neurons`` method's from single prompts' MLP neuron
activations, and :func:`false_refusal_direction` the second direction of the ``surgical`` form.

All functions accept a stack of matrices ``[..., out, in]`` (fused expert weights) and then
return one right factor per matrix, ``[..., in]``. Callers pass float32 tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rosi.direction.moments import Moments
from rosi.edit.methods import GATE_RIDGE, NEURON_QUANTILE, RightFactor


def probe_read(mean_harmful: torch.Tensor, mean_harmless: torch.Tensor) -> torch.Tensor:
    """The read-out ``u`` of a matrix's input with ``u . mean_harmless = 0`` and
    ``u . mean_harmful = 1``: the difference of the two mean inputs, made orthogonal to the
    harmless mean, divided by its squared norm. (The shortest such ``u``.)"""
    h = mean_harmful.detach().to(torch.float64)
    b = mean_harmless.detach().to(torch.float64)
    d = h - b
    bb = b @ b
    if bb > 0:
        d = d - (d @ b) / bb * b
    dd = d @ d
    if not torch.isfinite(dd) or dd <= 1e-12 * max(float(h @ h), 1e-30):
        raise ValueError("harmful and harmless mean inputs are parallel: the matrix's input does not tell them apart")
    return (d / dd).to(torch.float32)


def benign_subspace(benign: torch.Tensor, energy: float) -> torch.Tensor:
    """``[in, p]`` orthonormal basis of the principal subspace holding ``energy`` (0..1) of the
    benign inputs' squared norm (rows of ``benign``, ``[n, in]``): the space AlphaSteer keeps
    its read-out out of."""
    if not 0 < energy < 1:
        raise ValueError(f"the benign subspace's energy must be between 0 and 1, got {energy}")
    _, sv, vh = torch.linalg.svd(benign.to(torch.float64), full_matrices=False)
    cumulative = torch.cumsum(sv**2, 0) / (sv**2).sum()
    p = int(torch.searchsorted(cumulative, torch.tensor(energy, dtype=torch.float64)).item()) + 1
    return vh[:p].T


def gate_read(harmful: torch.Tensor, benign: torch.Tensor, *, ridge: float = GATE_RIDGE, null_space: float | None = None) -> torch.Tensor:
    """The read-out ``u`` of a matrix's input with ``u . x`` about 1 on each harmful input and
    about 0 on each benign one (rows of ``harmful`` ``[n_h, in]`` and ``benign`` ``[n_b, in]``:
    harmless and look-alike prompts).

    Ridge regression with the two classes weighted equally: minimise
    ``mean_h (u . x - 1)^2 + mean_b (u . x)^2 + lambda |u|^2``, ``lambda`` = ``ridge`` times the
    inputs' mean squared norm, solved in its dual form (``u`` is a combination of the inputs, so
    the system is ``n x n``, not ``in x in``). With ``null_space`` (an energy fraction, e.g.
    0.99) every input is first projected off the benign inputs' principal subspace
    (:func:`benign_subspace`), so ``u`` is exactly zero on that subspace (AlphaSteer's
    constraint). Raises ``ValueError`` when the inputs are not finite or the fit does not tell the
    classes apart."""
    if harmful.ndim != 2 or benign.ndim != 2 or harmful.shape[1] != benign.shape[1]:
        raise ValueError(f"gate inputs must be [n, in] matrices of one width, got {tuple(harmful.shape)} and {tuple(benign.shape)}")
    if len(harmful) == 0 or len(benign) == 0:
        raise ValueError("the gate fit needs harmful and benign inputs")
    if not ridge >= 0:
        raise ValueError(f"the gate's ridge must be >= 0, got {ridge}")
    h, b = harmful.detach().to(torch.float64), benign.detach().to(torch.float64)
    if not (torch.isfinite(h).all() and torch.isfinite(b).all()):
        raise ValueError("the gate's inputs are not finite")
    if null_space is not None:
        basis = benign_subspace(b, null_space)
        h, b = h - (h @ basis) @ basis.T, b - (b @ basis) @ basis.T
    x = torch.cat([h / len(h) ** 0.5, b / len(b) ** 0.5])  # rows weighted so that each class counts once
    y = torch.cat([h.new_full((len(h),), 1.0 / len(h) ** 0.5), h.new_zeros(len(b))])
    gram = x @ x.T
    scale = float(torch.trace(gram)) / 2  # the mean squared norm of an input, averaged over the two classes
    if not scale > 0:
        raise ValueError("the gate's inputs are all zero: the matrix's input does not tell harmful from benign prompts")
    lam = max(ridge, 1e-9) * scale
    u = x.T @ torch.linalg.solve(gram + lam * torch.eye(len(x), dtype=torch.float64), y)
    if not (torch.isfinite(u).all() and float((h @ u).mean() - (b @ u).mean()) > 0.05):
        raise ValueError("the gate fit does not tell harmful from benign inputs apart at this matrix")
    return u.to(torch.float32)


def subspace_of_second_moment(second: torch.Tensor, energy: float) -> torch.Tensor:
    """:func:`benign_subspace` from the benign rows' second moment ``E[x x^T]`` (``[in, in]``)
    instead of the rows: its leading eigenvectors holding ``energy`` of its trace, the same
    subspace as the rows' leading right singular vectors."""
    if not 0 < energy < 1:
        raise ValueError(f"the benign subspace's energy must be between 0 and 1, got {energy}")
    values, vectors = torch.linalg.eigh(second.to(torch.float64))
    values, vectors = values.flip(0).clamp(min=0), vectors.flip(1)
    cumulative = torch.cumsum(values, 0) / values.sum()
    p = int(torch.searchsorted(cumulative, torch.tensor(energy, dtype=torch.float64)).item()) + 1
    return vectors[:, :p]


def gate_read_moments(
    groups: Sequence[tuple[Moments, float]], *, ridge: float = GATE_RIDGE, null_space: float | None = None
) -> torch.Tensor:
    """:func:`gate_read` in primal form, over groups of rows given by their :class:`Moments`, each
    group with one target ``y_g`` (1: harmful, 0: benign) and weighted once: minimise
    ``sum_g mean_{x in g} (u . x - y_g)^2 + lambda |u|^2``, whose normal equations are ::

        (sum_g E_g[x x^T] + lambda I) u = sum_g y_g E_g[x]

    ``lambda`` = ``ridge`` times the groups' mean squared norm averaged over the groups. With two
    groups (harmful rows, target 1; benign rows, target 0) this is exactly :func:`gate_read`; more
    benign groups (the benign prompts' deciding tokens, and every other token the edit acts on)
    make the read-out quiet on each of them. The system is ``in x in`` whatever the number of
    rows, so thousands of prompts' tokens fit where the dual form (``n x n``) cannot. With
    ``null_space`` the read-out is kept off the principal subspace of the benign groups' summed
    second moments (:func:`subspace_of_second_moment`). Raises ``ValueError`` as :func:`gate_read`."""
    if not any(y != 0 for _, y in groups) or not any(y == 0 for _, y in groups):
        raise ValueError("the gate fit needs a harmful group (target 1) and a benign group (target 0)")
    if not ridge >= 0:
        raise ValueError(f"the gate's ridge must be >= 0, got {ridge}")
    if len({m.width for m, _ in groups}) != 1:
        raise ValueError("the gate fit's groups have rows of different widths")
    seconds = [m.second() for m, _ in groups]
    means = [m.mean() for m, _ in groups]
    if not all(torch.isfinite(s).all() and torch.isfinite(mu).all() for s, mu in zip(seconds, means, strict=True)):
        raise ValueError("the gate's inputs are not finite")
    if null_space is not None:
        basis = subspace_of_second_moment(sum(s for s, (_, y) in zip(seconds, groups, strict=True) if y == 0), null_space)  # type: ignore[arg-type]
        project = torch.eye(basis.shape[0], dtype=torch.float64) - basis @ basis.T
        seconds = [project @ s @ project for s in seconds]
        means = [project @ mu for mu in means]
    a = sum(seconds)
    assert isinstance(a, torch.Tensor)
    scale = float(sum(float(torch.trace(s)) for s in seconds)) / len(seconds)
    if not scale > 0:
        raise ValueError("the gate's inputs are all zero: the matrix's input does not tell harmful from benign prompts")
    lam = max(ridge, 1e-9) * scale
    b = sum(y * mu for mu, (_, y) in zip(means, groups, strict=True))
    assert isinstance(b, torch.Tensor)
    u = torch.linalg.solve(a + lam * torch.eye(len(a), dtype=torch.float64), b)
    positive = [float(mu @ u) for mu, (_, y) in zip(means, groups, strict=True) if y != 0]
    zero = [float(mu @ u) for mu, (_, y) in zip(means, groups, strict=True) if y == 0]
    if not (torch.isfinite(u).all() and sum(positive) / len(positive) - sum(zero) / len(zero) > 0.05):
        raise ValueError("the gate fit does not tell harmful from benign inputs apart at this matrix")
    return u.to(torch.float32)


def harm_neurons(harmful: torch.Tensor, benign: torch.Tensor, quantile: float = NEURON_QUANTILE) -> tuple[torch.Tensor, torch.Tensor]:
    """The neurons (columns of ``harmful`` ``[n_h, in]`` and ``benign`` ``[n_b, in]``) that fire on
    harmful inputs and stay quiet on benign ones: with each neuron's sign ``sigma`` that of its mean
    harmful activation, those whose mean signed activation on harmful inputs is above 0 and above
    the ``quantile`` of their signed activations on benign inputs. Returns their indices and signs."""
    mean_h = harmful.mean(0)
    sign = torch.sign(mean_h)
    high = torch.quantile(benign * sign, quantile, dim=0)
    keep = (sign != 0) & (mean_h * sign > 0) & (mean_h * sign > high)
    index = torch.nonzero(keep).flatten()
    return index, sign[index]


def nonnegative_least_squares(x: torch.Tensor, y: torch.Tensor, lam: float, *, steps: int = 3000, tol: float = 1e-12) -> torch.Tensor:
    """``argmin_{w >= 0} |x w - y|^2 + lam |w|^2`` by accelerated projected gradient (FISTA); ``x``
    ``[n, k]``. The problem is convex, so the iteration converges to the one minimum."""
    gram = x.T @ x + lam * torch.eye(x.shape[1], dtype=x.dtype)
    target = x.T @ y
    step = 1.0 / float(torch.linalg.eigvalsh(gram)[-1])
    w = z = torch.zeros(x.shape[1], dtype=x.dtype)
    t = 1.0
    for _ in range(steps):
        w_next = torch.clamp(z - step * (gram @ z - target), min=0.0)
        t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
        z = w_next + ((t - 1) / t_next) * (w_next - w)
        moved = float((w_next - w).abs().max())
        w, t = w_next, t_next
        if moved <= tol * max(float(w.abs().max()), 1e-30):
            break
    return w


def neuron_read(
    harmful: torch.Tensor, benign: torch.Tensor, *, quantile: float = NEURON_QUANTILE, ridge: float = GATE_RIDGE
) -> torch.Tensor:
    """The ``neurons`` read-out of an MLP's neuron activations (the input of its down projection):
    zero on every neuron but those :func:`harm_neurons` keeps, and on those ``sigma_j w_j`` with
    ``w >= 0`` fit so that ``u . x`` is about 1 on harmful inputs and about 0 on benign ones (the
    two classes weighted equally, ridge ``lambda`` = ``ridge`` times the kept activations' mean
    squared norm). Each weight has the sign of its neuron's harmful activation, so the read-out
    cannot cancel benign activity by a balance of opposite weights. Raises ``ValueError`` when no
    neuron is kept or the fit does not tell the classes apart."""
    if harmful.ndim != 2 or benign.ndim != 2 or harmful.shape[1] != benign.shape[1]:
        raise ValueError(f"neuron inputs must be [n, in] matrices of one width, got {tuple(harmful.shape)} and {tuple(benign.shape)}")
    if len(harmful) == 0 or len(benign) == 0:
        raise ValueError("the neuron fit needs harmful and benign inputs")
    h, b = harmful.detach().to(torch.float64), benign.detach().to(torch.float64)
    if not (torch.isfinite(h).all() and torch.isfinite(b).all()):
        raise ValueError("the neuron fit's inputs are not finite")
    index, sign = harm_neurons(h, b, quantile)
    if len(index) == 0:
        raise ValueError(f"no neuron fires on harmful inputs above the {quantile:.0%} quantile of benign ones")
    zh, zb = h[:, index] * sign, b[:, index] * sign
    x = torch.cat([zh / len(zh) ** 0.5, zb / len(zb) ** 0.5])
    y = torch.cat([h.new_full((len(zh),), 1.0 / len(zh) ** 0.5), h.new_zeros(len(zb))])
    lam = max(ridge, 1e-9) * float((x * x).sum()) / 2
    w = nonnegative_least_squares(x, y, lam)
    u = torch.zeros(h.shape[1], dtype=torch.float64)
    u[index] = sign * w
    if not (torch.isfinite(u).all() and float((h @ u).mean() - (b @ u).mean()) > 0.05):
        raise ValueError("the neuron fit does not tell harmful from benign inputs apart at this matrix")
    return u.to(torch.float32)


def false_refusal_direction(mean_lookalike: torch.Tensor, mean_harmless: torch.Tensor, s_hat: torch.Tensor) -> torch.Tensor:
    """The unit false-refusal direction (Wang et al.): mean look-alike minus mean harmless
    activation, made orthogonal to the safety direction ``s_hat`` (so that ablating it leaves the
    refusal direction alone)."""
    s = s_hat.detach().to(torch.float64)
    s = s / s.norm()
    d = mean_lookalike.detach().to(torch.float64) - mean_harmless.detach().to(torch.float64)
    d = d - (d @ s) * s
    norm = float(d.norm())
    if not norm > 1e-6 * max(float(mean_harmless.detach().to(torch.float64).norm()), 1e-30):
        raise ValueError("look-alike and harmless prompts do not differ off the safety direction: there is no false-refusal direction")
    return (d / norm).to(torch.float32)


def rank_one_update(s_hat: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """``outer(s_hat, right)``, batched over leading dimensions of ``right``."""
    return s_hat.unsqueeze(-1) * right.unsqueeze(-2)


def edited_weight(weight: torch.Tensor, s_hat: torch.Tensor, factor: RightFactor, strength: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(W', r)``: the edited weight and its right factor (the reference form of
    :func:`edit_in_place`)."""
    right = factor(weight, s_hat, strength)
    return weight + rank_one_update(s_hat, right), right


def edit_in_place(
    weight: torch.Tensor, s_hat: torch.Tensor, factor: RightFactor, strength: float, chunk_elements: int = 1 << 20
) -> torch.Tensor:
    """Apply the right factor ``factor`` to ``weight`` (a ``[out, in]`` view, or a stack of them)
    in place; return ``r``.

    Column ``j`` of the right factor depends only on column ``j`` of ``W``, so the work can run
    over blocks of columns, each block's factor computed and added while the block is in cache,
    with no second full-size matrix. Arithmetic is float32; weights in another dtype go through
    a float32 copy of each block and are rounded once.
    """
    if weight.ndim == 3:
        return torch.stack([edit_in_place(w, s_hat, factor, strength, chunk_elements) for w in weight])
    width = _block_width(weight, chunk_elements)
    parts = []
    for start in range(0, weight.shape[1], width):
        block = weight[:, start : start + width]
        work = block.float()  # the block itself when already float32
        right = factor(work, s_hat, strength)
        work.addr_(s_hat, right)
        if work.data_ptr() != block.data_ptr():
            block.copy_(work)
        parts.append(right)
    return torch.cat(parts)


def add_in_place(weight: torch.Tensor, s_hat: torch.Tensor, right: torch.Tensor, chunk_elements: int = 1 << 20) -> None:
    """``weight += outer(s_hat, right)`` in place on a ``[out, in]`` view (or a stack), in float32."""
    if weight.ndim == 3:
        for w, r in zip(weight, right, strict=True):
            add_in_place(w, s_hat, r, chunk_elements)
        return
    width = _block_width(weight, chunk_elements)
    for start in range(0, weight.shape[1], width):
        block = weight[:, start : start + width]
        work = block.float()
        work.addr_(s_hat, right[start : start + width])
        if work.data_ptr() != block.data_ptr():
            block.copy_(work)


def _block_width(weight: torch.Tensor, chunk_elements: int) -> int:
    """Columns per block: on a CPU, small blocks where a block of columns is contiguous memory
    (weights stored ``[in, out]``) or must be converted from another dtype, so each block stays
    in cache; otherwise, and on an accelerator (where every block is a kernel launch), the whole
    matrix in one call."""
    if weight.device.type != "cpu" or (weight.dtype == torch.float32 and weight.stride(-1) == 1):
        return weight.shape[1]
    return max(1, chunk_elements // weight.shape[0])
