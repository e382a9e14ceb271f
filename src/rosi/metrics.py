"""Rates and means with their uncertainty, and the KL divergence between next-token distributions.

Plain numbers in, plain numbers out; torch is only touched by :func:`kl_divergence`, through the
tensors it is given (this module does not import it, so the CLI can use it without torch).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

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

    def short(self) -> str:
        """The compact form of tables: ``60.8% [51–70%] n=102`` (the interval as :meth:`to_json` stores it)."""
        lo, hi = (round(x, 4) for x in self.interval)
        return f"{self.value:.1%} [{lo:.0%}–{hi:.0%}] n={self.n}"

    def to_json(self) -> dict[str, Any]:
        lo, hi = self.interval
        return {"rate": self.value, "k": self.k, "n": self.n, "ci95": [round(lo, 4), round(hi, 4)]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Rate:
        """The inverse of :meth:`to_json` (``k`` and ``n`` are what count; the rest is derived)."""
        k, n = data["k"], data["n"]
        if not (isinstance(k, int) and isinstance(n, int)) or isinstance(k, bool) or isinstance(n, bool) or not 0 <= k <= n or n == 0:
            raise ValueError(f"a rate needs whole numbers 0 <= k <= n, n > 0; got k={k!r}, n={n!r}")
        return cls(k, n)


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
    def of(cls, values: Sequence[float]) -> Mean:
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


@dataclass(frozen=True)
class PairedDifference:
    """The difference of two models' accuracies on the same questions (``b - a``), scored as a
    paired difference: the 95% interval from the discordant pairs (Wald, for paired proportions)
    and McNemar's exact two-sided p-value. ``a_only``: questions only ``a`` got right."""

    n: int
    a_correct: int
    b_correct: int
    a_only: int
    b_only: int

    @classmethod
    def of(cls, a: Sequence[bool], b: Sequence[bool]) -> PairedDifference:
        if len(a) != len(b):
            raise ValueError(f"paired scores need the same questions: {len(a)} vs {len(b)}")
        return cls(
            len(a), sum(a), sum(b), sum(x and not y for x, y in zip(a, b, strict=True)), sum(y and not x for x, y in zip(a, b, strict=True))
        )

    @classmethod
    def of_verdicts(cls, a: Sequence[bool | None], b: Sequence[bool | None]) -> PairedDifference:
        """``b - a`` on the items both have a verdict on (``None``: no verdict, e.g. a judge's
        unparsed output), paired item by item."""
        if len(a) != len(b):
            raise ValueError(f"paired verdicts need the same items: {len(a)} vs {len(b)}")
        both = [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
        return cls.of([x for x, _ in both], [y for _, y in both])

    @property
    def difference(self) -> float:
        return (self.b_only - self.a_only) / self.n if self.n else float("nan")

    @property
    def interval(self) -> tuple[float, float]:
        if not self.n:
            return (float("nan"), float("nan"))
        discordant = self.a_only + self.b_only
        var = max(discordant - (self.b_only - self.a_only) ** 2 / self.n, 0.0) / self.n**2
        half = Z95 * math.sqrt(var)
        return (self.difference - half, self.difference + half)

    @property
    def p_value(self) -> float:
        """McNemar's exact test: two-sided binomial on the discordant pairs."""
        m, k = self.a_only + self.b_only, min(self.a_only, self.b_only)
        if m == 0:
            return 1.0
        tail = sum(math.comb(m, i) for i in range(k + 1)) / 2**m
        return float(min(1.0, 2 * tail))

    def to_json(self) -> dict[str, Any]:
        lo, hi = self.interval
        return {
            "n": self.n,
            "a_accuracy": self.a_correct / self.n if self.n else None,
            "b_accuracy": self.b_correct / self.n if self.n else None,
            "difference": self.difference,
            "ci95": [round(lo, 4), round(hi, 4)],
            "a_only": self.a_only,
            "b_only": self.b_only,
            "mcnemar_p": self.p_value,
        }


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation of paired values (Pearson's on their ranks, ties sharing their
    mean rank: :func:`scipy.stats.spearmanr`'s rho, computed with numpy); ``None`` with under three
    pairs or a constant side, where no order can be measured."""
    import numpy as np

    if len(x) != len(y):
        raise ValueError(f"a rank correlation needs paired values: {len(x)} vs {len(y)}")
    if len(x) < 3:
        return None
    rx, ry = _ranks(np.asarray(x, dtype=np.float64)), _ranks(np.asarray(y, dtype=np.float64))
    dx, dy = rx - rx.mean(), ry - ry.mean()
    sxx, syy = float(dx @ dx), float(dy @ dy)
    return None if sxx == 0 or syy == 0 else float(dx @ dy) / math.sqrt(sxx * syy)


def _ranks(values: Any) -> Any:
    """1-based ranks of a 1-d array, ties sharing their mean rank."""
    import numpy as np

    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    first = np.concatenate(([0], np.cumsum(counts)[:-1]))  # ranks taken before each distinct value
    return (first + (counts + 1) / 2)[inverse]


def cohen_kappa(a: Sequence[object], b: Sequence[object]) -> float:
    """Cohen's kappa of two labellings of the same items: ``(p_o - p_e) / (1 - p_e)``, ``p_o`` the
    share of items they agree on and ``p_e`` the agreement their label frequencies give by chance
    (1 when both give every item one and the same label)."""
    if len(a) != len(b):
        raise ValueError(f"kappa needs two labellings of the same items: {len(a)} vs {len(b)}")
    n = len(a)
    if n == 0:
        return float("nan")
    observed = sum(x == y for x, y in zip(a, b, strict=True)) / n
    labels = set(a) | set(b)
    chance = sum((sum(x == lab for x in a) / n) * (sum(y == lab for y in b) / n) for lab in labels)
    return 1.0 if chance >= 1.0 else (observed - chance) / (1.0 - chance)


@dataclass(frozen=True)
class Agreement:
    """How a judge's binary verdicts (``predicted``: refused or not) agree with labels (``truth``):
    accuracy (Wilson interval), refusal precision and recall, and Cohen's kappa with a seeded
    bootstrap 95% interval over the items."""

    n: int
    accuracy: Rate
    precision: Rate  # of the replies the judge calls refusals, the share labelled refusal
    recall: Rate  # of the replies labelled refusal, the share the judge calls refusals
    kappa: float
    kappa_ci95: tuple[float, float]

    @classmethod
    def of(cls, truth: Sequence[bool], predicted: Sequence[bool], *, resamples: int = 2000, seed: int = 0) -> Agreement:
        if len(truth) != len(predicted):
            raise ValueError(f"agreement needs a verdict per label: {len(truth)} labels vs {len(predicted)} verdicts")
        pairs = list(zip(truth, predicted, strict=True))
        n = len(pairs)
        hits = sum(t == p for t, p in pairs)
        called = [t for t, p in pairs if p]
        actual = [p for t, p in pairs if t]
        rng = random.Random(seed)
        kappas = sorted(cohen_kappa(*zip(*[pairs[rng.randrange(n)] for _ in range(n)], strict=True)) for _ in range(resamples if n else 0))
        finite = [k for k in kappas if math.isfinite(k)]
        ci = (finite[int(0.025 * len(finite))], finite[min(len(finite) - 1, int(0.975 * len(finite)))]) if finite else (math.nan, math.nan)
        return cls(n, Rate(hits, n), Rate(sum(called), len(called)), Rate(sum(actual), len(actual)), cohen_kappa(truth, predicted), ci)

    def to_json(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "accuracy": self.accuracy.to_json() if self.accuracy.n else None,
            "refusal_precision": self.precision.to_json() if self.precision.n else None,  # None: no reply called a refusal
            "refusal_recall": self.recall.to_json() if self.recall.n else None,
            "kappa": self.kappa,
            "kappa_ci95": [round(x, 4) for x in self.kappa_ci95],
        }


def kl_divergence(logp: Tensor, logq: Tensor) -> Tensor:
    """Row-wise ``KL(P || Q) = Σ_v P(v) (log P(v) - log Q(v))`` from log-probabilities (rows:
    prompts, columns: vocabulary), in nats, computed in float64. Zero exactly when the rows agree."""
    if logp.shape != logq.shape:
        raise ValueError(f"log-probability shapes differ: {tuple(logp.shape)} vs {tuple(logq.shape)}")
    logp, logq = logp.double(), logq.double()
    p = logp.exp()
    # 0 · log 0 is 0: where P(v) = 0 the term vanishes whatever Q says
    terms = (p * (logp - logq)).masked_fill(p == 0, 0.0)
    return terms.sum(dim=-1).clamp_min(0.0)
