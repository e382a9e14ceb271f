"""Refusal by style of request, and fits with one style left out.

rosi's built-in ``harmful_styles`` set writes harmful requests as questions, multi-part requests,
persuasive writing and fiction (a category ``HARM/STYLE``); ``harmless_styles`` writes ordinary
requests in eight styles (the category is the style). :func:`by_style` groups a set's prompts by
style, :func:`harmful_styles` gives the validation prompts one part per style (how
``realign_eval`` reports refusal by style), :func:`leave_out` and :func:`training_without` take a
style out of a fit's training prompts, :func:`plan` lists the leave-one-style-out fits and
:func:`left_out_summary` compares each left-out style's refusal with the fit that saw it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from rosi.prompts import PromptSet, PromptSets, builtin

HARMFUL_STYLED = "harmful_styles"  # the built-in set whose categories end in their style (HARM/STYLE)
HARMLESS_STYLED = "harmless_styles"  # the built-in set whose categories are their style
# categories of rosi's own harmless set that are a harmless_styles style by another name
SAME_STYLE = {"coding": ("code",), "advice_math": ("advice", "maths")}
SIDES = ("harmful", "harmless")

StylesOf = Callable[[str | None], tuple[str, ...]]
Run = tuple[str | None, str | None, dict[str, list[str]]]  # the side left out, its style (None: every style seen), the sets measured


def style_of(category: str | None) -> str:
    """The style of a ``HARM/STYLE`` category (a prompt without one: ``imperative``, the style of rosi's harmful set)."""
    return "imperative" if not category or "/" not in category else category.rsplit("/", 1)[1]


def plain(category: str | None) -> str:
    """A ``harmless_styles`` category is its style."""
    return category or ""


def harmful_styles_of(category: str | None) -> tuple[str, ...]:
    return (style_of(category),)


def harmless_styles_of(category: str | None) -> tuple[str, ...]:
    """The styles a harmless prompt's category is: the category itself, and the style it is by another name."""
    return (category or "", *SAME_STYLE.get(category or "", ()))


def by_style(prompts: PromptSet, key: Callable[[str | None], str] = style_of) -> dict[str, list[str]]:
    """The prompts grouped by ``key`` of their category (default: the style of a ``HARM/STYLE`` category), styles sorted."""
    out: dict[str, list[str]] = {}
    for text, category in zip(prompts.instructions, prompts.categories or (None,) * len(prompts), strict=True):
        out.setdefault(key(category), []).append(text)
    return dict(sorted(out.items()))


def harmful_styles(split: str = "val") -> list[tuple[str, PromptSet]]:
    """rosi's harmful requests in each style of ``builtin:harmful_styles`` (``split``: ``val`` by
    default, prompts no fit sees), one (style, prompts) part per style."""
    return [(style, PromptSet(tuple(texts), name=style)) for style, texts in by_style(builtin(HARMFUL_STYLED, split)).items()]


def style_sets(harmful_public: dict[str, list[str]]) -> tuple[dict[str, list[str]], dict[str, dict[str, list[str]]]]:
    """The styles of each side's training prompts (``harmful_styles``, ``harmless_styles``: train
    split), and what a leave-one-style-out fit is measured on: each style's validation prompts
    (``"harmful style STYLE"``, ``"harmless style STYLE"``), with ``harmful_public`` (named public
    held-out harmful sets) among the harmful ones."""
    styles = {
        "harmful": list(by_style(builtin(HARMFUL_STYLED, "train"))),
        "harmless": list(by_style(builtin(HARMLESS_STYLED, "train"), plain)),
    }
    sets = {"harmful": {f"harmful style {s}": texts for s, texts in by_style(builtin(HARMFUL_STYLED, "val")).items()}}
    sets["harmful"].update(harmful_public)
    sets["harmless"] = {f"harmless style {s}": texts for s, texts in by_style(builtin(HARMLESS_STYLED, "val"), plain).items()}
    return styles, sets


def leave_out(prompts: PromptSet, style: str | None, styles_of: StylesOf = harmful_styles_of) -> PromptSet:
    """``prompts`` without those of ``style`` (None: all of them); ``styles_of`` names a category's styles."""
    keep = [i for i, c in enumerate(prompts.categories or (None,) * len(prompts)) if style is None or style not in styles_of(c)]
    if not keep:
        raise ValueError(f"leaving out {style!r} leaves no prompts in {prompts.name!r}")
    if style is not None and len(keep) == len(prompts):
        raise ValueError(f"{prompts.name!r} has no prompts of style {style!r} to leave out")
    return PromptSet(
        tuple(prompts.instructions[i] for i in keep),
        None if prompts.categories is None else tuple(prompts.categories[i] for i in keep),
        name=f"{prompts.name} without {style}" if style else prompts.name,
    )


def training_without(every: PromptSets, side: str | None, style: str | None, mirror: bool = False) -> PromptSets:
    """The training prompts of a fit with ``style`` of ``side`` left out (``side`` None: ``every``).
    ``mirror``: a harmful style that the harmless prompts also hold (multi-part requests) leaves
    them too, so that the fit sees it on neither side."""
    if side == "harmful":
        prompts = replace(every, harmful=leave_out(every.harmful, style))
        harmless_kinds = {s for category in every.harmless.categories or () for s in harmless_styles_of(category)}
        if mirror and style in harmless_kinds:
            prompts = replace(prompts, harmless=leave_out(every.harmless, style, harmless_styles_of))
        return prompts
    if side == "harmless":
        return replace(every, harmless=leave_out(every.harmless, style, harmless_styles_of))
    return every


def plan(sides: list[str], styles: dict[str, list[str]], sets: dict[str, dict[str, list[str]]], left_out_only: bool = False) -> list[Run]:
    """The fits to run: every style seen (measured on every side's sets), then each side's styles
    left out in turn. A harmless fit is measured on the style it left out; a harmful one on every
    harmful set (what leaving one style out does to the others), or on its own style with ``left_out_only``."""
    runs: list[Run] = [(None, None, {n: t for side in sides for n, t in sets[side].items()})]
    for side in sides:
        for left in styles[side]:
            name = f"{side} style {left}"
            runs.append((side, left, sets[side] if side == "harmful" and not left_out_only else {name: sets[side][name]}))
    return runs


def left_out_summary(rows: list[dict[str, Any]], side: str, worse: Callable[..., str]) -> dict[str, Any]:
    """Each left-out style's refusal (rows as :func:`plan`'s runs measured them, the first with
    every style seen), its gap to the fit that saw it, and the worst one (``worse``: min or max)."""
    full = rows[0]
    left = [r for r in rows if r["side"] == side]
    rates = {r["left_out"]: r[f"{side} style {r['left_out']}"]["rate"] for r in left}
    gaps = {s: rates[s] - full[f"{side} style {s}"]["rate"] for s in rates}
    return {"left_out_rate": rates, "left_out_minus_seen": gaps, "worst_left_out": worse(rates, key=lambda s: rates[s])}
