"""What ``rosi eval`` measures, as typed values with one JSON form (``results.json``).

:class:`EvalResults` holds, per evaluated model (``base``, ``model``), a :class:`ModelMetrics`:
harm refusal, benign compliance, over-refusal and jailbreak success as :class:`RateSummary`
values (a Wilson-interval rate over the judged replies, replies with no verdict counted apart,
and per group), utility as :class:`UtilityScore` per task, and for a base/model pair the
:class:`KLSummary`. ``to_json``/``from_json`` are exact inverses; :func:`load_results` reads a
file back, refusing anything that is not one.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rosi.errors import EvalError
from rosi.metrics import Mean, Rate

RESULTS = "results.json"


def _rates_json(rates: Mapping[str, Rate]) -> dict[str, Any]:
    return {g: r.to_json() for g, r in rates.items()}


def _rates_from(data: Mapping[str, Any] | None) -> dict[str, Rate] | None:
    return None if data is None else {str(g): Rate.from_json(r) for g, r in data.items()}


@dataclass(frozen=True)
class RateSummary:
    """A rate over the judged replies (``None`` when none was judged), the replies with no
    verdict, and the rate per group (category or template) and, for harm refusal, per source."""

    rate: Rate | None
    unjudged: int = 0
    groups: dict[str, Rate] | None = None
    sources: dict[str, Rate] | None = None

    @classmethod
    def of(cls, flags: Sequence[bool | None], groups: Sequence[str] | None = None) -> RateSummary:
        """From one flag per reply (``None``: not judged) and, optionally, each reply's group."""
        judged = [f for f in flags if f is not None]
        by: dict[str, list[bool]] | None = None
        if groups is not None:
            by = defaultdict(list)
            for flag, g in zip(flags, groups, strict=True):
                if flag is not None:
                    by[g].append(flag)
        return cls(
            Rate(sum(judged), len(judged)) if judged else None,
            len(flags) - len(judged),
            None if by is None else {g: Rate(sum(v), len(v)) for g, v in sorted(by.items())},
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = self.rate.to_json() if self.rate else {"rate": None, "k": 0, "n": 0, "ci95": None}
        out["unjudged"] = self.unjudged
        if self.groups is not None:
            out["groups"] = _rates_json(self.groups)
        if self.sources is not None:
            out["sources"] = _rates_json(self.sources)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RateSummary:
        return cls(
            Rate.from_json(data) if data.get("n") else None,
            int(data.get("unjudged", 0)),
            _rates_from(data.get("groups")),
            _rates_from(data.get("sources")),
        )


@dataclass(frozen=True)
class UtilityScore:
    """Multiple-choice accuracy on one task (a group pooled over its leaf tasks)."""

    accuracy: Rate
    accuracy_norm: Rate | None = None  # length-normalised, where the task has it
    tasks: int | None = None  # leaf tasks pooled, for a group

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"accuracy": self.accuracy.to_json()}
        if self.accuracy_norm is not None:
            out["accuracy_norm"] = self.accuracy_norm.to_json()
        if self.tasks is not None:
            out["tasks"] = self.tasks
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> UtilityScore:
        norm = data.get("accuracy_norm")
        tasks = data.get("tasks")
        return cls(Rate.from_json(data["accuracy"]), None if norm is None else Rate.from_json(norm), None if tasks is None else int(tasks))


# The headline rates: field of ModelMetrics, label.
HEADLINE = (
    ("harm_refusal", "harm refusal (HR)"),
    ("benign_compliance", "benign compliance (BC)"),
    ("harm_partial", "harm: partial (refuses, then helps)"),
    ("over_refusal", "over-refusal (contrast set)"),
    ("over_partial", "over-refusal: partial"),
    ("jailbreak_success", "jailbreak success (ASR)"),
)


@dataclass(frozen=True)
class ModelMetrics:
    """Every figure of one evaluated model."""

    harm_refusal: RateSummary
    benign_compliance: RateSummary
    over_refusal: RateSummary | None = None  # with a contrast set
    jailbreak_success: RateSummary | None = None  # with jailbreak templates
    utility: dict[str, UtilityScore] = field(default_factory=dict)
    # The marker judge's partial verdict: a refusal phrase, then substantive help (counted as refused above).
    harm_partial: RateSummary | None = None
    over_partial: RateSummary | None = None

    def rate(self, key: str) -> RateSummary | None:
        """A headline rate by its :data:`HEADLINE` key."""
        value = getattr(self, key)
        assert value is None or isinstance(value, RateSummary), key
        return value

    def to_json(self) -> dict[str, Any]:
        out = {key: summary.to_json() for key, _ in HEADLINE if (summary := self.rate(key)) is not None}
        if self.utility:
            out["utility"] = {task: u.to_json() for task, u in self.utility.items()}
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelMetrics:
        rates = {key: RateSummary.from_json(data[key]) for key, _ in HEADLINE if data.get(key) is not None}
        utility = {str(t): UtilityScore.from_json(u) for t, u in (data.get("utility") or {}).items()}
        return cls(**rates, utility=utility)


@dataclass(frozen=True)
class KLSummary:
    """Per-prompt KL(base || model) of the first reply token: mean with a 95% normal interval,
    median, 90th percentile, maximum, and the values (rounded to 6 decimals)."""

    mean: float
    ci95: tuple[float, float]
    n: int
    median: float
    p90: float
    max: float
    values: tuple[float, ...] = ()

    @classmethod
    def of(cls, values: Sequence[float]) -> KLSummary:
        mean = Mean.of(list(values))
        ordered = sorted(values)

        def quantile(q: float) -> float:
            return ordered[min(len(ordered) - 1, math.floor(q * len(ordered)))]

        return cls(mean.value, mean.interval, mean.n, quantile(0.5), quantile(0.9), ordered[-1], tuple(round(v, 6) for v in values))

    def to_json(self) -> dict[str, Any]:
        return {
            "mean": self.mean,
            "ci95": list(self.ci95),
            "n": self.n,
            "median": self.median,
            "p90": self.p90,
            "max": self.max,
            "values": list(self.values),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> KLSummary:
        lo, hi = data["ci95"]
        return cls(
            float(data["mean"]),
            (float(lo), float(hi)),
            int(data["n"]),
            float(data["median"]),
            float(data["p90"]),
            float(data["max"]),
            tuple(float(v) for v in data.get("values", ())),
        )


@dataclass(frozen=True)
class SetSummary:
    n: int
    sources: dict[str, int]


@dataclass(frozen=True)
class EvalResults:
    rosi_version: str
    suite: str
    judge: str
    models: dict[str, dict[str, str | None]]  # role (base, model) -> {"spec": ..., "server": ...}
    max_new_tokens: int
    system_prompt: str | None
    dtype: str
    sets: dict[str, SetSummary]
    metrics: dict[str, ModelMetrics]  # role -> figures
    kl: KLSummary | None = None  # with a base
    seconds: dict[str, float] = field(default_factory=dict)
    generated: dict[str, int] = field(default_factory=dict)  # replies generated by this run, per role

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "rosi_version": self.rosi_version,
            "suite": self.suite,
            "judge": self.judge,
            "models": self.models,
            "max_new_tokens": self.max_new_tokens,
            "system_prompt": self.system_prompt,
            "dtype": self.dtype,
            "sets": {r: {"n": s.n, "sources": s.sources} for r, s in self.sets.items()},
            "metrics": {role: m.to_json() for role, m in self.metrics.items()},
        }
        if self.kl is not None:
            out["kl"] = self.kl.to_json()
        out["seconds"] = self.seconds
        out["generated"] = self.generated
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EvalResults:
        return cls(
            rosi_version=str(data["rosi_version"]),
            suite=str(data["suite"]),
            judge=str(data["judge"]),
            models={str(r): dict(m) for r, m in data["models"].items()},
            max_new_tokens=int(data["max_new_tokens"]),
            system_prompt=data.get("system_prompt"),
            dtype=str(data.get("dtype", "auto")),
            sets={str(r): SetSummary(int(s["n"]), {str(k): int(v) for k, v in s["sources"].items()}) for r, s in data["sets"].items()},
            metrics={str(role): ModelMetrics.from_json(m) for role, m in data["metrics"].items()},
            kl=None if data.get("kl") is None else KLSummary.from_json(data["kl"]),
            seconds={str(k): float(v) for k, v in (data.get("seconds") or {}).items()},
            generated={str(k): int(v) for k, v in (data.get("generated") or {}).items()},
        )


def load_results(path: str | Path) -> EvalResults:
    """A ``results.json`` (or the folder holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS
    if not path.is_file():
        raise EvalError(f"{path} does not exist; pass a folder written by `rosi eval` or its results.json")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EvalError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(data, dict) or "metrics" not in data:
        raise EvalError(f"{path} is not a rosi evaluation result (no 'metrics')")
    metrics, models = data["metrics"], data.get("models")
    if not isinstance(metrics, dict) or not isinstance(metrics.get("model"), dict):
        raise EvalError(f"{path} holds no metrics of the evaluated model ('metrics' has no 'model' entry); rerun `rosi eval`")
    if not isinstance(models, dict) or not isinstance(models.get("model"), dict):
        raise EvalError(f"{path} does not say which model it evaluated ('models' has no 'model' entry); rerun `rosi eval`")
    try:
        return EvalResults.from_json(data)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise EvalError(f"{path} is not a complete rosi evaluation result ({type(e).__name__}: {e}); rerun `rosi eval`") from None
