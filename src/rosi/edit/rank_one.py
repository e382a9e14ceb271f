"""The rank-one edit math: small pure functions on tensors. Nothing here knows about models or files.

Every rosi edit is ``W' = W + outer(s_hat, r)`` for a weight ``W`` in ``[out, in]`` layout
(``out`` is the residual stream) and a unit vector ``s_hat`` of size ``out``; the methods
(:mod:`rosi.edit.methods`) differ only in the right factor ``r`` (size ``in``). This module
applies such an update: as a reference formula, in place over blocks of columns, and from a
stored right factor (for probe edits and reverts). :func:`probe_read` measures the ``probe``
method's read-out.

All functions accept a stack of matrices ``[..., out, in]`` (fused expert weights) and then
return one right factor per matrix, ``[..., in]``. Callers pass float32 tensors.
"""

from __future__ import annotations

import torch

from rosi.edit.methods import RightFactor


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
