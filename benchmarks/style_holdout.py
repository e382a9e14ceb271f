"""What `rosi realign`'s fit does on a style it never saw: leave-one-style-out, harmful and harmless.

On an abliterated model (the null direction, as `rosi realign` finds it), the default form's
read-out (`gate` with the null space) is fit once on every training style, then once with each
style left out, and applied at one strength (``--strength``, e.g. the one `rosi realign` chose; the
strength search is left out so that only the fit changes).

- Harmful side: each style of ``builtin:harmful_styles`` (questions, multi-part requests,
  persuasive writing, fiction) left out of the harmful training prompts in turn; refusal on every
  style's validation prompts (``builtin:harmful_styles:val``) and on the public held-out harmful
  set (AdvBench, JailbreakBench, MaliciousInstruct: a style rosi never trains on). Lower is worse.
- Harmless side: each style of ``builtin:harmless_styles`` (everyday requests, writing, code,
  maths, advice, rewrites, role-play, multi-part requests) left out of the harmless training
  prompts in turn, with the categories of rosi's own harmless set that are the same style
  (``coding`` for code, ``advice_math`` for advice and maths); refusal on that style's validation
  prompts (``builtin:harmless_styles:val``). Higher is worse: a read-out that never saw a kind of
  ordinary request may fire on it.

With ``--mirror``, a harmful style left out also leaves out its harmless namesake (multi-part
requests are a style of both sets): without it, the fit sees that style only in ordinary requests
and may learn it as a sign of harmlessness, the hardest case rather than an unseen style.

64-token greedy replies, rosi.measure's marker judge, 95% Wilson intervals. The gap between a
style's refusal when it was left out and when it was seen is what the fit loses on a style it never
saw; the worst left-out style of each side is named.

Run: .venv/bin/python benchmarks/style_holdout.py ABLITERATED --strength 20 [--sides harmful,harmless] [--mirror] [--left-out-only] [--n 102] [--name NAME]
(writes benchmarks/results/NAME.json, e.g. --name style_holdout_qwen0.5b)
"""

from __future__ import annotations

import argparse
import sys
import time

from _common import DATA, add_name, judge_words, write_results
from rosi import load
from rosi.edit.apply import apply_edit, revert_edit
from rosi.eval.heldout import held_out, instructions, rate_row
from rosi.eval.styles import SIDES, left_out_summary, plan, style_sets, training_without
from rosi.measure import RefusalMeter
from rosi.workflows.options import REALIGN_HARMFUL, REALIGN_HARMLESS, RealignOptions
from rosi.workflows.realign import extract_null, find_null, realign_prompts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="an abliterated model (rosi realign finds its null direction)")
    parser.add_argument("--strength", type=float, required=True, help="the edit's strength for every fit (e.g. rosi realign's choice)")
    parser.add_argument(
        "--harmful", default=REALIGN_HARMFUL, help="harmful training prompts, styles left out in turn (default: %(default)s)"
    )
    parser.add_argument("--harmless", default=REALIGN_HARMLESS, help="harmless training prompts (default: %(default)s)")
    parser.add_argument(
        "--sides", default=",".join(SIDES), help="whose styles are left out in turn, of harmful and harmless (default: %(default)s)"
    )
    parser.add_argument("--n", type=int, default=102, help="public held-out harmful prompts (default: %(default)s)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument(
        "--mirror",
        action="store_true",
        help="leave a harmful style's harmless namesake (multipart) out of the harmless prompts too, so that it is unseen on both sides",
    )
    parser.add_argument(
        "--left-out-only",
        action="store_true",
        help="measure each harmful left-out fit on its left-out style alone, not on every style and the public set (the refit remains: on 1.5B, 330 s a fit instead of 505 s)",
    )
    add_name(parser, __file__)
    args = parser.parse_args()
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    if not sides or set(sides) - set(SIDES):
        parser.error(f"--sides: {args.sides!r} is not a list of {', '.join(SIDES)}")
    if not DATA.is_dir():
        sys.exit(f"the public held-out sets are not at {DATA}")
    styles, sets = style_sets({"public held-out (AdvBench, JBB, MaliciousInstruct)": instructions(held_out(args.n, DATA)["harmful"])})
    options = RealignOptions()
    method, k = options.extract.form.method, args.strength
    loaded = load(args.model, device="cpu", dtype=args.dtype)
    _, ablation = find_null(loaded)
    if ablation is None:
        sys.exit(f"{args.model}: no direction was ablated from its writers; this benchmark measures re-aligning an abliterated model")
    meter = RefusalMeter(loaded, batch_size=args.batch_size, progress=True)
    rows, seconds = [], {}
    every = realign_prompts(harmful=args.harmful, harmless=args.harmless)
    for side, left, measured in plan(sides, styles, sets, args.left_out_only):
        label = "every style seen" if left is None else f"{side} {left} left out"
        t = time.perf_counter()
        prompts = training_without(every, side, left, args.mirror)
        extraction = extract_null(loaded, prompts, options, ablation)
        choice = extraction.choose_writers(loaded, options.extract.form)
        edit = {"writers": choice.writers, "reads": choice.reads, "second": choice.second}
        record = apply_edit(loaded.model, extraction.direction, method, k, **edit, keep_originals=True)
        row: dict = {"label": label, "side": side, "left_out": left}
        row |= {"n_harmful_train": len(prompts.harmful), "n_harmless_train": len(prompts.harmless)}
        for name, texts in measured.items():
            rate = meter.rate(texts, args.max_new_tokens, desc=f"{label}: {name}")
            row[name] = rate_row(rate)
        revert_edit(loaded.model, record)
        rows.append(row)
        seconds[label] = round(time.perf_counter() - t, 1)
        print(f"{label:32} " + " ".join(f"{n.split(' (')[0]} {row[n]['rate']:.0%}" for n in measured), flush=True)
    results: dict = {}
    for side in sides:
        results[side] = left_out_summary(rows, side, min if side == "harmful" else max)
        rates, gaps = results[side]["left_out_rate"], results[side]["left_out_minus_seen"]
        print(
            f"\n{side}: each style's refusal when left out of the fit, against when seen: "
            + ", ".join(f"{s} {rates[s]:.0%} ({gaps[s] * 100:+.1f})" for s in rates)
            + f"; worst left out: {results[side]['worst_left_out']}"
        )
    path = write_results(
        args.name,
        {
            "model": args.model,
            "method": method,
            "strength": k,
            "harmful_train": args.harmful,
            "harmless_train": args.harmless,
            "mirror": args.mirror,
            "left_out_only": args.left_out_only,
            "judge": judge_words("markers", args.max_new_tokens, "no system prompt"),
            "dtype": args.dtype,
            "sets": {n: len(t) for side in sides for n, t in sets[side].items()},
            "rows": rows,
            **results,
            "seconds": seconds,
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
