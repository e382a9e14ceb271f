"""The judge interface and its registry.

Adding a judge is one class (in a module of its own in this package, imported by the package's
``__init__``) with ``@register("name")``, a ``from_spec(argument)`` constructor and
``judge(prompts, replies)``. ``make_judge(spec)`` builds one from a CLI spec ``NAME[:ARGUMENT]``.

A :class:`Verdict` says ``refused`` (marker judge) or ``unsafe`` plus hazard categories
(Llama Guard), and keeps the judge's raw output.
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
    refused: bool | None = None  # the reply declines the request (marker judge)
    partial: bool | None = None  # a refusal phrase followed by substantive help (marker judge; counted in refused too)
    unsafe: bool | None = None  # the reply is unsafe (Llama Guard); None: output not parseable
    categories: tuple[str, ...] = ()  # e.g. ("S1", "S10")
    raw: str = field(default="", compare=False)


class Judge(ABC):
    name: str = ""  # set by @register
    argument: str = ""  # what follows "name:" in a spec, for help texts ("" when it takes none)

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
    return JUDGES[name].from_spec(argument or None)


def check_pairs(prompts: Sequence[str], replies: Sequence[str]) -> None:
    if len(prompts) != len(replies):
        raise JudgeError(f"{len(prompts)} prompts but {len(replies)} replies; a judge needs one reply per prompt")
