"""Held-out refusal of uncensored and re-aligned models (the acceptance measurement of `rosi realign`).

Greedy replies (64 new tokens) to prompts from ../shared/data that rosi never saw, judged through
rosi.measure (the refusal-marker judge, or --judge SPEC), with 95% Wilson intervals, for each model given: harmful (AdvBench,
JailbreakBench, MaliciousInstruct, each also apart), harmless (Alpaca), two look-alike sets (JailbreakBench
benign behaviours and CoCoNot's contrast prompts: safe requests that sound harmful), and rosi's
harmful requests in four styles (questions, multi-part requests,
persuasive writing, fiction: ``builtin:harmful_styles:val``, each style apart, the worst named;
rosi realign fits on their train split, a fit on the imperative prompts alone never sees them:
benchmarks/style_holdout.py leaves each out in turn). No system
prompt anywhere: the models are measured as they will be used.

Run: .venv/bin/python benchmarks/realign_eval.py LABEL=MODEL [LABEL=MODEL ...] [--n 102] [--dtype bfloat16] [--judge SPEC] [--keep] [--name NAME]
(writes benchmarks/results/NAME.json, e.g. --name realign_eval_qwen0.5b; --keep keeps the rows of
other labels already there, measured on the same sets with the same judge, and replaces those of
the labels given)
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from _common import DATA, DEFAULT_JUDGE, RESULTS, add_judge, add_name, judge_words, write_results
from rosi import load
from rosi.eval.heldout import coconot_contrast, describe_sets, held_out, refusal_row
from rosi.eval.styles import harmful_styles
from rosi.measure import judge_of


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", metavar="LABEL=MODEL", help="the models measured, each with its row's label")
    add_name(parser, __file__)
    parser.add_argument("--n", type=int, default=102, help="prompts per role (look-alikes: at most 100) (default: %(default)s)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dtype", default="bfloat16", help="compute dtype for every model (default: %(default)s)")
    parser.add_argument("--keep", action="store_true", help="keep the other labels' rows of an earlier run on the same sets")
    add_judge(parser)
    args = parser.parse_args()
    sets = held_out(args.n, DATA)
    sets["contrast"] = [*sets["contrast"], ("coconot-contrast", coconot_contrast(args.n, DATA))]
    sets["styles"] = harmful_styles()
    judge = judge_words(args.judge, args.max_new_tokens, "no system prompt")
    described = describe_sets(sets)
    labels = {item.partition("=")[0] for item in args.models}
    rows, seconds = [], {}
    if args.keep:
        earlier = kept_rows(args.name, judge, args.judge, args.dtype, described)
        rows = [r for r in earlier["rows"] if r["label"] not in labels]
        seconds = {k: v for k, v in earlier["seconds"].items() if k not in labels}
    judged_by = judge_of(args.judge)
    for item in args.models:
        label, _, spec = item.partition("=")
        loaded = load(spec, device="cpu", dtype=args.dtype)
        t = time.perf_counter()
        row = refusal_row(loaded, label, sets, args.max_new_tokens, args.batch_size, judged_by)
        row["model"] = spec
        rows.append(row)
        seconds[label] = round(time.perf_counter() - t, 1)
        del loaded
    print(f"\n{'':28} {'harmful refused':>26} {'harmless refused':>26} {'look-alikes refused':>26}")
    for r in rows:
        cells = [
            f"{r[k]['rate']:6.1%} [{r[k]['wilson95'][0]:.0%}-{r[k]['wilson95'][1]:.0%}] n={r[k]['n']:<3}"
            for k in ("harmful", "harmless", "contrast")
        ]
        print(f"{r['label']:28} " + " ".join(f"{c:>26}" for c in cells))
    path = write_results(
        args.name,
        {
            "judge": judge,
            "judge_spec": args.judge,
            "dtype": args.dtype,
            "sets": described,
            "rows": rows,
            "seconds": seconds,
        },
    )
    print(f"\nharmful refusal by held-out set and by style ({', '.join(s for s, _ in sets['styles'])}: rosi's own harmful_styles:val)")
    for r in rows:
        parts = {
            **{k: v for k, v in r["harmful"].items() if isinstance(v, dict)},
            **{k: v for k, v in r["styles"].items() if isinstance(v, dict)},
        }
        worst = min(parts, key=lambda k: parts[k]["rate"])
        print(f"{r['label']:28} " + " ".join(f"{k} {v['rate']:.0%}" for k, v in parts.items()) + f"; worst: {worst}")
    print(f"results: {path}")
    return 0


def kept_rows(name: str, judge: str, spec: str, dtype: str, sets: dict) -> dict:
    """The earlier results of ``name``, if they were measured the same way (else exit with why).
    Files written before ``judge_spec`` was recorded were measured with the marker judge."""
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        sys.exit(f"--keep: there is no {path} to keep rows of")
    earlier = json.loads(path.read_text())
    was = (earlier.get("judge"), earlier.get("judge_spec", DEFAULT_JUDGE), earlier.get("dtype"), earlier.get("sets"))
    if was != (judge, spec, dtype, sets):
        sys.exit(f"--keep: {path} was measured with other sets, judge or dtype; run every model again without --keep")
    return earlier


if __name__ == "__main__":
    sys.exit(main())
