"""The judge interface and its registry.

Adding a judge is one class (in a module of its own in this package, imported by the package's
``__init__``) with ``@register("name")``, a ``from_spec(argument)`` constructor and
``judge(prompts, replies)``. ``make_judge(spec)`` builds one from a CLI spec ``NAME[:ARGUMENT]``.

A :class:`Verdict` says ``refused`` (the refusal judges: markers, llm) or ``unsafe`` plus hazard
categories (Llama Guard), with the judge's continuous ``score`` where it has one (the llm judge's
probability of a refusal), and keeps the judge's raw output.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from rosi.errors import RosiError


class JudgeError(RosiError):
    """A judge could not be built or could not answer."""


@dataclass(frozen=True)
class Verdict:
    refused: bool | None = None  # the reply declines the request (marker and llm judges)
    # a disclaimer, then substantive help: the marker judge's refusal phrase then help (counted in
    # refused too); the llm judge's "complies after a disclaimer" (not counted in refused)
    partial: bool | None = None
    unsafe: bool | None = None  # the reply is unsafe (Llama Guard); None: output not parseable
    categories: tuple[str, ...] = ()  # e.g. ("S1", "S10")
    score: float | None = None  # a continuous refusal score in 0..1 where the judge has one (llm judge: P(refuse))
    raw: str = field(default="", compare=False)


class Judge(ABC):
    name: str = ""  # set by @register
    argument: str = ""  # what follows "name:" in a spec, for help texts ("" when it takes none)
    spec: str = ""  # the spec it was made from (set by make_judge), for messages

    @property
    def label(self) -> str:
        """The judge in messages: its spec, else its name."""
        return self.spec or self.name or type(self).__name__

    @classmethod
    @abstractmethod
    def from_spec(cls, argument: str | None) -> Judge:
        """Build from the part of the spec after ``name:`` (None when there is none)."""

    @abstractmethod
    def judge(self, prompts: Sequence[str], replies: Sequence[str]) -> list[Verdict]:
        """One verdict per (prompt, reply) pair."""


JUDGES: dict[str, type[Judge]] = {}


def register(name: str) -> Callable[[type[Judge]], type[Judge]]:
    def add(cls: type[Judge]) -> type[Judge]:
        cls.name = name
        JUDGES[name] = cls
        return cls

    return add


def make_judge(spec: str) -> Judge:
    """A judge from its spec, e.g. ``markers``, ``llamaguard:PATH_OR_ID``, ``openai:BASE_URL[#MODEL]``."""
    name, _, argument = spec.partition(":")
    if name not in JUDGES:
        choices = ", ".join(f"{n}{':' + JUDGES[n].argument if JUDGES[n].argument else ''}" for n in JUDGES)
        raise JudgeError(f"unknown judge {spec!r}; choose one of: {choices}")
    judge = JUDGES[name].from_spec(argument or None)
    judge.spec = spec
    return judge


def check_pairs(prompts: Sequence[str], replies: Sequence[str]) -> None:
    if len(prompts) != len(replies):
        raise JudgeError(f"{len(prompts)} prompts but {len(replies)} replies; a judge needs one reply per prompt")


def check_verdicts(judge: Judge, verdicts: Sequence[Verdict], replies: int) -> None:
    """No figure from no evidence: ``judge`` must return one verdict per reply, and a verdict on at
    least one of them (a reply it could not classify is ``None`` in :class:`Verdict`); otherwise a
    :class:`JudgeError` naming the judge and what it returned, before any rate is computed."""
    if len(verdicts) != replies:
        raise JudgeError(f"judge {judge.label} returned {len(verdicts)} verdicts for {replies} replies; a judge must give one per reply")
    if replies and all(v.refused is None and v.unsafe is None for v in verdicts):
        raw = verdicts[0].raw.strip()
        said = f"it answered {raw[:80]!r}" if raw else "it answered nothing"
        raise JudgeError(
            f"judge {judge.label} gave no verdict on any of the {replies} replies ({said}); a safety judge must answer 'safe' or "
            "'unsafe' (Llama Guard's format): check that it is a Llama Guard-style judge model"
        )
