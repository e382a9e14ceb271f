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
    of the rows folded in so far; all ``None``/0 until the first :meth:`add`."""

    gram: torch.Tensor | None = None
    total: torch.Tensor | None = None
    count: int = 0
    dtype: torch.dtype = field(default=torch.float32, repr=False)

    def add(self, rows: torch.Tensor) -> None:
        """Fold in ``rows`` (``[n, in]``, any float dtype, any device; the sums live on the CPU)."""
        if rows.ndim != 2:
            raise ValueError(f"moments take [n, in] rows, got shape {tuple(rows.shape)}")
        if len(rows) == 0:
            return
        x = rows.detach().to(self.dtype)
        gram = (x.T @ x).cpu()
        total = rows.detach().to(torch.float64).sum(0).cpu()
        if self.gram is None or self.total is None:
            self.gram, self.total = gram, total
        else:
            if gram.shape != self.gram.shape:
                raise ValueError(f"rows of width {rows.shape[1]} added to moments of width {self.gram.shape[0]}")
            self.gram += gram
            self.total += total
        self.count += len(rows)

    @classmethod
    def of(cls, rows: torch.Tensor, dtype: torch.dtype = torch.float64) -> Moments:
        """The moments of ``rows`` in one go (float64 by default: for small sets and tests)."""
        m = cls(dtype=dtype)
        m.add(rows)
        return m

    @property
    def width(self) -> int:
        if self.gram is None:
            raise ValueError("no rows were added to these moments")
        return int(self.gram.shape[0])

    def second(self) -> torch.Tensor:
        """float64 ``E[x x^T]``: the Gram matrix over the count."""
        if self.gram is None or self.count == 0:
            raise ValueError("no rows were added to these moments")
        return self.gram.to(torch.float64) / self.count

    def mean(self) -> torch.Tensor:
        """float64 ``E[x]``."""
        if self.total is None or self.count == 0:
            raise ValueError("no rows were added to these moments")
        return self.total / self.count

    def nbytes(self) -> int:
        return 0 if self.gram is None or self.total is None else self.gram.numel() * self.gram.element_size() + self.total.numel() * 8
