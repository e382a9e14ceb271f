"""Held-out refusal of the trials `rosi tune` confirmed: the base model, rosi run's default and the
paper's form (the tune's reference trials) and the tuned edit, on prompts rosi never saw.

Harmful (AdvBench, JailbreakBench, MaliciousInstruct), harmless (Alpaca) and the two look-alike
sets apart (JailbreakBench benign behaviours, CoCoNot contrast): greedy replies (64 new tokens)
measured through rosi.measure (the refusal-marker judge with its partial verdict, or --judge SPEC),
95% Wilson intervals; the mean first-token KL(base || edited) on the Alpaca prompts, from the
same generation as their replies (rosi.eval.heldout.verdict_row). Each trial's edit is applied from
its saved record (TuneReport.edits) to one loaded base model and reverted after.

Run: .venv/bin/python benchmarks/tune_eval.py [OUT] [--model pypi:qwen2.5-coder-0.5b-instruct] [--trials 0,1,7] [--judge SPEC] [--name NAME]
(writes benchmarks/results/NAME.json and a plot of held-out harmful against look-alike refusal,
NAME.png; e.g. --name tune_eval_qwen0.5b)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from _common import DATA, add_judge, add_model, add_name, judge_words, write_results
from rosi import EditRecord, apply_record, load, revert_edit
from rosi.eval.heldout import plot_lookalikes, tune_sets, verdict_row, write_replies
from rosi.measure import judge_of
from rosi.metrics import PairedDifference
from rosi.workflows.tune.report import TuneReport, record_edits


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", default=None, help="a folder written by `rosi tune` (none: only the --record edits)")
    add_name(parser, __file__)
    add_model(parser, "--base", help="the base model the tune edited")
    parser.add_argument("--trials", default=None, help="trial numbers (default: the references and the chosen one)")
    parser.add_argument(
        "--record", action="append", default=[], metavar="LABEL=FILE", help="also measure this edit record (e.g. rosi run's own edit)"
    )
    parser.add_argument("--n", type=int, default=102)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dtype", default="bfloat16")
    add_judge(parser)
    args = parser.parse_args()
    out = Path(args.out) if args.out else None
    if out is None and not args.record:
        parser.error("give a rosi tune output folder, or edits to measure with --record LABEL=FILE")
    numbers = [int(x) for x in args.trials.split(",")] if args.trials else None
    edits = (TuneReport.load(out).edits(out, numbers) if out is not None else []) + record_edits(args.record)
    sets = tune_sets(args.n, DATA)
    judge = judge_of(args.judge)
    loaded = load(args.model, device="cpu", dtype=args.dtype)
    rows, seconds = [], {}
    t = time.perf_counter()
    base_row, base_lp = verdict_row(loaded, "base model", sets, args.max_new_tokens, args.batch_size, judge=judge)
    seconds["base model"] = round(time.perf_counter() - t, 1)
    rows.append(base_row)
    for label, file, extra in edits:
        record = apply_record(loaded.model, EditRecord.load(file))
        t = time.perf_counter()
        row, _ = verdict_row(loaded, label, sets, args.max_new_tokens, args.batch_size, base_lp, judge)
        seconds[label] = round(time.perf_counter() - t, 1)
        revert_edit(loaded.model, record)
        rows.append({**row, **extra})
    roles = list(sets)
    # the chosen trial (else rosi run's default edit) paired against every other row on the same prompts (McNemar)
    chosen = next((r for r in rows if "(chosen)" in r["label"]), None) or next((r for r in rows if "(default)" in r["label"]), None)
    if chosen is not None:
        for r in rows:
            if r is not chosen:
                r["chosen_minus_this"] = {k: PairedDifference.of_verdicts(r[k]["refused"], chosen[k]["refused"]).to_json() for k in roles}
    print(f"\n{'':34} " + " ".join(f"{r:>24}" for r in roles) + f" {'KL':>7}")
    for r in rows:
        cells = [f"{r[k]['rate']:6.1%} [{r[k]['wilson95'][0]:.0%}-{r[k]['wilson95'][1]:.0%}]" for k in roles]
        print(f"{r['label']:34} " + " ".join(f"{c:>24}" for c in cells) + f" {r.get('kl_harmless_first_token', 0.0):>7.3f}")
    if chosen is not None:
        print(f"\nrefusal, {chosen['label']} minus each row, paired on the same prompts (95% interval, McNemar p):")
        for r in rows:
            if "chosen_minus_this" in r:
                d = r["chosen_minus_this"]
                cells = [
                    f"{d[k]['difference'] * 100:+.1f} [{d[k]['ci95'][0] * 100:+.1f}, {d[k]['ci95'][1] * 100:+.1f}] p={d[k]['mcnemar_p']:.2f}"
                    for k in roles
                ]
                print(f"{r['label']:34} " + " ".join(f"{c:>24}" for c in cells))
    for r in rows:
        r["_replies"] = r.pop("replies")
    path = write_results(
        args.name,
        {
            "tune_output": str(out) if out else None,
            "judge": judge_words(args.judge, args.max_new_tokens, "no system prompt", partial=True),
            "judge_spec": args.judge,
            "dtype": args.dtype,
            "sets": {k: len(v) for k, v in sets.items()},
            "rows": [{k: v for k, v in r.items() if k != "_replies"} for r in rows],
            "seconds": seconds,
        },
    )
    write_replies(path.with_suffix(".replies.jsonl"), args.model, rows, sets)
    figure = path.with_suffix(".png")
    plot_lookalikes(rows, figure)
    print(f"wrote {path} and {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
