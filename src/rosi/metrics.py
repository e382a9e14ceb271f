"""Rates and means with their uncertainty, and the KL divergence between next-token distributions."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

Z95 = 1.959963984540054  # two-sided 95% normal quantile


@dataclass(frozen=True)
class Rate:
    """``k`` of ``n``, with a 95% Wilson score interval."""

    k: int
    n: int

    @property
    def value(self) -> float:
        return self.k / self.n if self.n else float("nan")

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.k, self.n)

    def __str__(self) -> str:
        lo, hi = self.interval
        return f"{self.value:.1%} [{lo:.1%}, {hi:.1%}] (n={self.n})"

    def to_json(self) -> dict[str, object]:
        lo, hi = self.interval
        return {"rate": self.value, "k": self.k, "n": self.n, "ci95": [round(lo, 4), round(hi, 4)]}


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes in ``n`` trials (Wilson 1927):
    ``(p + z²/2n ± z sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)``. Stays inside [0, 1] and is
    sensible at ``k = 0`` and ``k = n``, unlike the normal approximation."""
    if n <= 0:
        raise ValueError("a rate needs n > 0 trials")
    if not 0 <= k <= n:
        raise ValueError(f"successes must lie in 0..{n}, got {k}")
    p = k / n
    z2 = z * z
    centre = p + z2 / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    denom = 1 + z2 / n
    return max(0.0, (centre - half) / denom), min(1.0, (centre + half) / denom)


@dataclass(frozen=True)
class Mean:
    """A sample mean with a 95% normal-approximation interval (``mean ± z·sd/√n``, sample sd)."""

    value: float
    sd: float
    n: int

    @classmethod
    def of(cls, values: list[float] | tuple[float, ...]) -> Mean:
        n = len(values)
        if n == 0:
            raise ValueError("a mean needs at least one value")
        mean = math.fsum(values) / n
        sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
        return cls(mean, sd, n)

    @property
    def interval(self) -> tuple[float, float]:
        half = Z95 * self.sd / math.sqrt(self.n)
        return self.value - half, self.value + half

    def __str__(self) -> str:
        lo, hi = self.interval
        return f"{self.value:.4g} [{lo:.4g}, {hi:.4g}] (n={self.n})"


def kl_divergence(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Row-wise ``KL(P || Q) = Σ_v P(v) (log P(v) - log Q(v))`` from log-probabilities (rows:
    prompts, columns: vocabulary), in nats, computed in float64. Zero exactly when the rows agree."""
    if logp.shape != logq.shape:
        raise ValueError(f"log-probability shapes differ: {tuple(logp.shape)} vs {tuple(logq.shape)}")
    logp, logq = logp.double(), logq.double()
    p = logp.exp()
    # 0 · log 0 is 0: where P(v) = 0 the term vanishes whatever Q says
    terms = torch.where(p > 0, p * (logp - logq), torch.zeros_like(p))
    return terms.sum(dim=-1).clamp_min(0.0)
