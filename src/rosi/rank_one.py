"""The edit math: small pure functions on tensors. Nothing here knows about models or files.

Every rosi edit is rank one. With a weight ``W`` in ``[out, in]`` layout (``out`` is the
residual stream, ``in`` whatever the matrix reads) and a unit vector ``s_hat`` of size ``out``:

    W' = W + outer(s_hat, r)

and only the right factor ``r`` (size ``in``) depends on the method:

==========  ===========================  ==========================================
method      right factor ``r``           what it does to the matrix
==========  ===========================  ==========================================
``rosi``    ``alpha * mean_rows(W)``     paper Eq. 6: ``W + alpha s_hat w_bar^T``
``scale``   ``beta * s_hat^T W``         ``(I + beta s s^T) W``: amplify the s-part
``ablate``  ``-alpha * s_hat^T W``       ``(I - s s^T) W`` at 1: abliteration
``probe``   ``k * u``                    ``W + k s_hat u^T``: a read-out ``u`` of the input
==========  ===========================  ==========================================

For an input ``x`` the ``rosi`` edit adds ``alpha * (w_bar . x) * s_hat`` to the output:
``w_bar . x`` is the mean coordinate of ``W x``.

The ``probe`` edit reads the matrix's *input* with a vector ``u`` measured on prompts
(:func:`probe_read`): ``u . x`` is 0 at the mean input of harmless prompts and 1 at the mean
input of harmful ones, so the edit adds about ``k * s_hat`` where the input looks harmful and
about nothing where it looks harmless. ``u`` does not depend on ``W``; it is part of the edit.

All functions accept a stack of matrices ``[..., out, in]`` (fused expert weights) and then
return one right factor per matrix, ``[..., in]``. Callers pass float32 tensors.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

RightFactor = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]


def unit(vector: torch.Tensor) -> torch.Tensor:
    """``vector / |vector|`` in float32; refuses a zero or non-finite vector."""
    v = vector.detach().to(torch.float32)
    norm = torch.linalg.vector_norm(v)
    if not torch.isfinite(v).all() or not torch.isfinite(norm) or norm == 0:
        raise ValueError("direction must be a finite, non-zero vector")
    return v / norm


def rosi_factor(weight: torch.Tensor, s_hat: torch.Tensor, alpha: float) -> torch.Tensor:
    """``alpha * w_bar`` with ``w_bar`` the mean of the rows of ``weight`` (paper Eq. 6)."""
    return alpha * weight.mean(dim=-2)


def scale_factor(weight: torch.Tensor, s_hat: torch.Tensor, beta: float) -> torch.Tensor:
    """``beta * s_hat^T W``: scales the component of every output along ``s_hat`` by ``1 + beta``."""
    return beta * torch.matmul(s_hat, weight)


def ablate_factor(weight: torch.Tensor, s_hat: torch.Tensor, alpha: float) -> torch.Tensor:
    """``-alpha * s_hat^T W``: at ``alpha = 1`` the output has no component along ``s_hat``."""
    return -alpha * torch.matmul(s_hat, weight)


RIGHT_FACTORS: dict[str, RightFactor] = {
    "rosi": rosi_factor,
    "scale": scale_factor,
    "ablate": ablate_factor,
}
# Methods whose right factor is a measured read-out vector, not a function of ``W``.
READ_METHODS = ("probe",)


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


def rank_one_update(s_hat: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """``outer(s_hat, right)``, batched over leading dimensions of ``right``."""
    return s_hat.unsqueeze(-1) * right.unsqueeze(-2)


def edited_weight(weight: torch.Tensor, s_hat: torch.Tensor, method: str, strength: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(W', r)`` for one method: the edited weight and its right factor (reference form)."""
    right = RIGHT_FACTORS[method](weight, s_hat, strength)
    return weight + rank_one_update(s_hat, right), right


def edit_in_place(weight: torch.Tensor, s_hat: torch.Tensor, method: str, strength: float, chunk_elements: int = 1 << 20) -> torch.Tensor:
    """Apply ``method`` to ``weight`` (a ``[out, in]`` view, or a stack of them) in place; return ``r``.

    Column ``j`` of the right factor depends only on column ``j`` of ``W``, so the work can run
    over blocks of columns, each block's factor computed and added while the block is in cache,
    with no second full-size matrix. Arithmetic is float32; weights in another dtype go through
    a float32 copy of each block and are rounded once.
    """
    if weight.ndim == 3:
        return torch.stack([edit_in_place(w, s_hat, method, strength, chunk_elements) for w in weight])
    factor = RIGHT_FACTORS[method]
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
    """Columns per block: small blocks where a block of columns is contiguous memory (weights
    stored ``[in, out]``) or must be converted from another dtype; otherwise the whole matrix,
    whose row-major column reductions run fastest in one call."""
    if weight.dtype == torch.float32 and weight.stride(-1) == 1:
        return weight.shape[1]
    return max(1, chunk_elements // weight.shape[0])
