"""What was done to a model's matrices, against its base: small pure functions on tensors.

For each residual writer present in both, ``D = W' - W`` (``[out, in]``, ``out`` the residual
stream). Its singular values and left singular vectors come from the ``[out, out]`` matrix
``D D^T`` (cheap even for an embedding, accumulated over blocks of columns). An edit by rosi or
by abliteration is rank one per matrix, and every matrix's left vector is the same direction:
:func:`shared_direction` finds it as the top eigenvector of ``sum D D^T / |D|_F^2`` and says what
share of the changes it holds. :func:`write_change` says whether the edit removed what the base
wrote along it (abliteration: ``c^T W' ~ 0``) or added to it (ROSI).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

RANK_TOL = 0.05  # singular values under this share of the largest are rounding, not part of the edit
BLOCK = 8192  # columns per block of D D^T


@dataclass(frozen=True)
class MatrixChange:
    """One matrix's difference from its base."""

    name: str
    layer: int | None
    relative: float  # |D|_F / |W|_F
    rank: int  # singular values >= RANK_TOL of the largest
    singular_values: tuple[float, ...]  # the largest few, relative to the largest
    left: torch.Tensor  # float64 unit [out]: the top left singular vector
    gram: torch.Tensor  # float64 D D^T / |D|_F^2 [out, out]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "layer": self.layer,
            "relative_change": self.relative,
            "rank": self.rank,
            "singular_values": list(self.singular_values),
        }


def outer_gram(d: torch.Tensor) -> torch.Tensor:
    """``D D^T`` in float64 for ``[out, in]`` (or a stack ``[n, out, in]``, summed), over blocks of columns."""
    d = d.detach()
    if d.ndim == 3:
        return sum((outer_gram(x) for x in d), torch.zeros(d.shape[1], d.shape[1], dtype=torch.float64))
    total = torch.zeros(d.shape[0], d.shape[0], dtype=torch.float64)
    for start in range(0, d.shape[1], BLOCK):
        block = d[:, start : start + BLOCK].to(device="cpu", dtype=torch.float64)
        total += block @ block.T
    return total


def matrix_change(name: str, layer: int | None, base: torch.Tensor, edited: torch.Tensor) -> MatrixChange | None:
    """The change of one ``[out, in]`` matrix, or ``None`` where it is unchanged."""
    if base.shape != edited.shape:
        raise ValueError(f"{name}: shape {tuple(edited.shape)} differs from the base's {tuple(base.shape)}")
    d = edited.detach().to(torch.float64) - base.detach().to(torch.float64)
    g = outer_gram(d)
    total = float(g.trace())
    if total <= 0:
        return None
    values, vectors = torch.linalg.eigh(g)
    sv = values.flip(0).clamp(min=0).sqrt()
    top = float(sv[0])
    rank = int((sv >= RANK_TOL * top).sum())
    base_norm = float(base.detach().to(torch.float64).norm())
    return MatrixChange(
        name,
        layer,
        total**0.5 / base_norm if base_norm > 0 else float("inf"),
        rank,
        tuple(round(float(x) / top, 5) for x in sv[:4]),
        vectors[:, -1].contiguous(),
        g / total,
    )


@dataclass(frozen=True)
class SharedDirection:
    vector: torch.Tensor  # float64 unit [out]; sign arbitrary
    share: float  # its eigenvalue over the sum: 1 when every change lies along it
    cosines: dict[str, float]  # |cos| of each matrix's top left vector with it


def shared_direction(changes: Iterable[MatrixChange]) -> SharedDirection:
    """The left direction the changes have in common (top eigenvector of their summed normalised
    ``D D^T``), its share of them, and each matrix's agreement with it."""
    changes = list(changes)
    if not changes:
        raise ValueError("no changed matrices")
    total = sum((c.gram for c in changes), torch.zeros_like(changes[0].gram))
    values, vectors = torch.linalg.eigh(total)
    c = vectors[:, -1]
    return SharedDirection(c, float(values[-1] / values.sum()), {ch.name: abs(float(ch.left @ c)) for ch in changes})


def write_change(base: torch.Tensor, edited: torch.Tensor, c: torch.Tensor) -> float:
    """``|c^T W'| / |c^T W|`` for an ``[out, in]`` matrix: 0 where the edit removed the direction,
    1 where it left what the matrix writes along ``c``, above 1 where it added to it."""
    c64 = c.to(torch.float64)
    before = float((c64 @ base.detach().to(torch.float64)).norm())
    after = float((c64 @ edited.detach().to(torch.float64)).norm())
    return after / before if before > 0 else float("inf")
