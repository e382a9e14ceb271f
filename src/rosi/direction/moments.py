"""Second moments of many activation rows, accumulated batch by batch: what a least-squares fit
over thousands of token activations needs, without holding the activations.

A ridge fit of a read-out ``u`` to rows ``x_i`` with targets ``y_i`` needs only ``sum_i x_i x_i^T``
(the Gram matrix, ``[in, in]``), ``sum_i x_i`` and the count, per group of rows with one target:
:class:`Moments` keeps those, :meth:`Moments.add` folds in a batch of rows. The Gram matrix of
the ``in = 4864`` inputs of a 0.5B model's MLP down projection is 95 MB in float32, however many
tokens it summarises. The fit itself is :func:`rosi.edit.rank_one.gate_read_moments`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Moments:
    """``gram = sum x x^T`` (``dtype``, default float32), ``total = sum x`` (float64) and ``count``
    of the rows folded in so far. While there are fewer rows than half the width the rows
    themselves are kept (a few hundred prompts' rows take less memory than an ``in x in`` Gram
    matrix) and the Gram matrix is made from them when it is needed or when they grow past that."""

    gram: torch.Tensor | None = None
    total: torch.Tensor | None = None
    count: int = 0
    dtype: torch.dtype = field(default=torch.float32, repr=False)
    rows: list[torch.Tensor] = field(default_factory=list, repr=False)

    def add(self, rows: torch.Tensor) -> None:
        """Fold in ``rows`` (``[n, in]``, any float dtype, any device; the sums live on the CPU)."""
        if rows.ndim != 2:
            raise ValueError(f"moments take [n, in] rows, got shape {tuple(rows.shape)}")
        if len(rows) == 0:
            return
        if self.total is not None and rows.shape[1] != self.total.shape[0]:
            raise ValueError(f"rows of width {rows.shape[1]} added to moments of width {self.total.shape[0]}")
        total = rows.detach().to(torch.float64).sum(0).cpu()
        self.total = total if self.total is None else self.total + total
        self.count += len(rows)
        x = rows.detach().to(self.dtype).cpu()
        if self.gram is None and 2 * self.count < x.shape[1]:
            self.rows.append(x.clone())
            return
        self._fold(x)

    def _fold(self, x: torch.Tensor) -> None:
        kept, self.rows = self.rows, []
        for part in [*kept, x]:
            gram = part.T @ part
            self.gram = gram if self.gram is None else self.gram.add_(gram)

    @classmethod
    def of(cls, rows: torch.Tensor, dtype: torch.dtype = torch.float64) -> Moments:
        """The moments of ``rows`` in one go (float64 by default: for small sets and tests)."""
        m = cls(dtype=dtype)
        m.add(rows)
        return m

    @property
    def width(self) -> int:
        if self.total is None:
            raise ValueError("no rows were added to these moments")
        return int(self.total.shape[0])

    def second(self) -> torch.Tensor:
        """float64 ``E[x x^T]``: the Gram matrix over the count."""
        if self.total is None or self.count == 0:
            raise ValueError("no rows were added to these moments")
        if self.gram is None:
            x = torch.cat(self.rows).to(torch.float64)
            return x.T @ x / self.count
        return self.gram.to(torch.float64) / self.count

    def mean(self) -> torch.Tensor:
        """float64 ``E[x]``."""
        if self.total is None or self.count == 0:
            raise ValueError("no rows were added to these moments")
        return self.total / self.count

    def __add__(self, other: Moments) -> Moments:
        """The moments of both sets of rows together (neither is changed)."""
        out = Moments(dtype=self.dtype)
        for m in (self, other):
            if m.count == 0:
                continue
            assert m.total is not None
            out.total = m.total.clone() if out.total is None else out.total + m.total
            out.count += m.count
            out.rows += m.rows
            if m.gram is not None:
                out.gram = m.gram.clone() if out.gram is None else out.gram + m.gram
        if out.gram is not None and out.rows:
            kept, out.rows = out.rows, []
            for part in kept:
                out.gram += part.T @ part
        return out

    def nbytes(self) -> int:
        kept = sum(r.numel() * r.element_size() for r in self.rows)
        gram = 0 if self.gram is None else self.gram.numel() * self.gram.element_size()
        return kept + gram + (0 if self.total is None else self.total.numel() * 8)
