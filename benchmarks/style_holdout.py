"""What `rosi realign`'s fit does on a style of harmful request it never saw: leave-one-style-out.

On an abliterated model (the null direction, as `rosi realign` finds it), the default form's
read-out (`gate` with the null space) is fit once on every harmful training style, then once with
each style of ``builtin:harmful_styles`` (questions, multi-part requests, persuasive writing,
fiction) left out of its harmful training prompts, and applied at one strength (``--strength``,
e.g. the one `rosi realign` chose; the strength search is left out so that only the fit changes).
Each fit's refusal is measured on every style's validation prompts (``builtin:harmful_styles:val``)
and on the public held-out harmful set (AdvBench, JailbreakBench, MaliciousInstruct: a style rosi
never trains on), 64-token greedy replies, rosi.measure's marker judge, 95% Wilson intervals. The
gap between a style's refusal when it was left out and when it was seen is what the fit loses on
a style it never saw; the worst left-out style is named.

Run: .venv/bin/python benchmarks/style_holdout.py ABLITERATED --strength 20 [--n 102] [--name NAME]
(writes benchmarks/results/NAME.json, e.g. --name style_holdout_qwen0.5b)
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace

from _common import DATA, add_name, judge_words, write_results
from refusal_eval import held_out, instructions, rate_row
from rosi import load
from rosi.edit.apply import apply_edit, revert_edit
from rosi.measure import RefusalMeter
from rosi.prompts import PromptSet, builtin
from rosi.workflows.options import REALIGN_HARMFUL, REALIGN_HARMLESS, RealignOptions
from rosi.workflows.realign import extract_null, find_null, realign_prompts

STYLED = "harmful_styles"  # the built-in set whose categories end in their style (HARM/STYLE)


def style_of(category: str | None) -> str:
    """The style of a ``HARM/STYLE`` category (a prompt without one: ``imperative``, the style of rosi's harmful set)."""
    return "imperative" if not category or "/" not in category else category.rsplit("/", 1)[1]


def leave_out(prompts: PromptSet, style: str | None) -> PromptSet:
    """``prompts`` without those of ``style`` (None: all of them)."""
    keep = [i for i, c in enumerate(prompts.categories or (None,) * len(prompts)) if style is None or style_of(c) != style]
    if not keep:
        raise ValueError(f"leaving out {style!r} leaves no prompts in {prompts.name!r}")
    if style is not None and len(keep) == len(prompts):
        raise ValueError(f"{prompts.name!r} has no prompts of style {style!r} to leave out")
    return PromptSet(
        tuple(prompts.instructions[i] for i in keep),
        None if prompts.categories is None else tuple(prompts.categories[i] for i in keep),
        name=f"{prompts.name} without {style}" if style else prompts.name,
    )


def by_style(prompts: PromptSet) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for text, category in zip(prompts.instructions, prompts.categories or (None,) * len(prompts), strict=True):
        out.setdefault(style_of(category), []).append(text)
    return dict(sorted(out.items()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="an abliterated model (rosi realign finds its null direction)")
    parser.add_argument("--strength", type=float, required=True, help="the edit's strength for every fit (e.g. rosi realign's choice)")
    parser.add_argument(
        "--harmful", default=REALIGN_HARMFUL, help="harmful training prompts, styles left out in turn (default: %(default)s)"
    )
    parser.add_argument("--harmless", default=REALIGN_HARMLESS, help="harmless training prompts (default: %(default)s)")
    parser.add_argument("--n", type=int, default=102, help="public held-out harmful prompts (default: %(default)s)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dtype", default="bfloat16")
    add_name(parser, __file__)
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"the public held-out sets are not at {DATA}")
    styles = list(by_style(builtin(STYLED, "train")))
    sets = {f"style {s}": texts for s, texts in by_style(builtin(STYLED, "val")).items()}
    sets["public held-out (AdvBench, JBB, MaliciousInstruct)"] = instructions(held_out(args.n)["harmful"])
    options = RealignOptions()
    method, k = options.extract.form.method, args.strength
    loaded = load(args.model, device="cpu", dtype=args.dtype)
    _, ablation = find_null(loaded)
    if ablation is None:
        sys.exit(f"{args.model}: no direction was ablated from its writers; this benchmark measures re-aligning an abliterated model")
    meter = RefusalMeter(loaded, batch_size=args.batch_size, progress=True)
    rows, seconds = [], {}
    every = realign_prompts(harmful=args.harmful, harmless=args.harmless)
    for left in [None, *styles]:
        label = "every style seen" if left is None else f"{left} left out"
        t = time.perf_counter()
        prompts = replace(every, harmful=leave_out(every.harmful, left))
        extraction = extract_null(loaded, prompts, options, ablation)
        choice = extraction.choose_writers(loaded, options.extract.form)
        record = apply_edit(
            loaded.model,
            extraction.direction,
            method,
            k,
            writers=choice.writers,
            reads=choice.reads,
            second=choice.second,
            keep_originals=True,
        )
        row: dict = {"label": label, "left_out": left, "n_harmful_train": len(prompts.harmful)}
        for name, texts in sets.items():
            rate = meter.rate(texts, args.max_new_tokens, desc=f"{label}: {name}")
            row[name] = rate_row(rate)
        revert_edit(loaded.model, record)
        rows.append(row)
        seconds[label] = round(time.perf_counter() - t, 1)
        print(f"{label:28} " + " ".join(f"{n.split(' (')[0]} {row[n]['rate']:.0%}" for n in sets), flush=True)
    full = rows[0]
    gaps = {r["left_out"]: r[f"style {r['left_out']}"]["rate"] - full[f"style {r['left_out']}"]["rate"] for r in rows[1:]}
    left_rates = {r["left_out"]: r[f"style {r['left_out']}"]["rate"] for r in rows[1:]}
    worst = min(left_rates, key=lambda s: left_rates[s])
    print(
        "\neach style's refusal when left out of the fit, against when seen: "
        + ", ".join(f"{s} {left_rates[s]:.0%} ({gaps[s] * 100:+.1f})" for s in styles)
        + f"; worst left out: {worst}"
    )
    path = write_results(
        args.name,
        {
            "model": args.model,
            "method": method,
            "strength": k,
            "harmful_train": args.harmful,
            "harmless_train": args.harmless,
            "judge": judge_words("markers", args.max_new_tokens, "no system prompt"),
            "dtype": args.dtype,
            "sets": {n: len(t) for n, t in sets.items()},
            "rows": rows,
            "left_out_rate": left_rates,
            "left_out_minus_seen": gaps,
            "worst_left_out": worst,
            "seconds": seconds,
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
