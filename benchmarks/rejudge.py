"""Held-out replies already generated, judged again by another judge: how much of each refusal
figure was the judge.

Reads a ``NAME.replies.jsonl`` written by tune_eval.py (every reply of every row: edit, prompt
set, prompt, reply), judges the chosen rows' replies with ``--judge`` (e.g. the llm: judge) and
writes rows of the same shape as tune_eval's (per set: rate, k of n, 95% Wilson interval, each
prompt's verdict), each beside the source file's verdicts for the same replies: the share of
replies on which the two judges agree, and the new judge minus the old one, paired on the same
replies. Nothing is generated: only the judge runs.

Run: .venv/bin/python benchmarks/rejudge.py benchmarks/results/tune_eval_qwen0.5b_tokens.json
     --judge llm:pypi:qwen2.5-coder-1.5b-instruct --rows "base model,scale (default)" [--name NAME]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _common import add_judge, add_name, judge_words, write_results
from rosi.eval.heldout import rate_row, read_replies
from rosi.measure import judge_of, judged
from rosi.metrics import PairedDifference


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="a tune_eval result file with its .replies.jsonl beside it")
    add_name(parser, __file__)
    add_judge(parser)
    parser.add_argument("--rows", default=None, help="comma-separated row labels to judge again (default: every row)")
    args = parser.parse_args()
    source = json.loads(args.source.read_text(encoding="utf-8"))  # a tune_eval result file, not a rosi report
    replies = read_replies(args.source.with_suffix(".replies.jsonl"))
    wanted = args.rows.split(",") if args.rows else [r["label"] for r in source["rows"]]
    by_label = {r["label"]: r for r in source["rows"]}
    missing = [w for w in wanted if w not in by_label]
    if missing:
        parser.error(f"no row {missing[0]!r} in {args.source}; rows: {', '.join(by_label)}")
    judge = judge_of(args.judge)
    sets = list(source["sets"])
    rows, seconds = [], {}
    for label in wanted:
        row: dict = {"label": label}
        started = time.perf_counter()
        for role in sets:
            items = replies[(label, role)]
            rate = judged(judge, [x["prompt"] for x in items], [x["reply"] for x in items], new_tokens=64)
            old, new = by_label[label][role]["refused"], list(rate.refused)
            both = [(o, n) for o, n in zip(old, new, strict=True) if o is not None and n is not None]
            row[role] = {
                **rate_row(rate),
                "partial": rate.partial_rate,
                "refused": new,
                "agrees_with_source": sum(o == n for o, n in both) / len(both) if both else None,
                "minus_source": PairedDifference.of_verdicts(old, new).to_json(),
            }
            print(f"{label:34} {role:18} {rate.judged.value:6.1%} (source {by_label[label][role]['rate']:6.1%})", flush=True)
        seconds[label] = round(time.perf_counter() - started, 1)
        rows.append(row)
    path = write_results(
        args.name,
        {
            "source": str(args.source),
            "source_judge": source.get("judge"),
            "judge": judge_words(args.judge, 64, "no system prompt", "replies from the source file"),
            "judge_spec": args.judge,
            "dtype": source.get("dtype"),
            "sets": source["sets"],
            "rows": rows,
            "seconds": seconds,
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
