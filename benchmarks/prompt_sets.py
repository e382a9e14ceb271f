"""How often base models refuse rosi's own prompt sets: is the harder harmful set hard enough
(issue: at least 150 harmful requests that Qwen2.5-Coder-1.5B-Instruct refuses less than 70% of
the time), and how often the look-alikes are refused.

Greedy replies (64 new tokens by default) measured through rosi.measure: the refusal-marker
judge (with its partial verdict) or --judge SPEC, 95% Wilson intervals, per set, split, category
and style; no system prompt.

Run: .venv/bin/python benchmarks/prompt_sets.py [--model SPEC] [--sets harmful_hard,lookalike] [--dtype bfloat16] [--judge SPEC] [--name NAME]
(writes benchmarks/results/NAME.json; e.g. --model pypi:qwen2.5-coder-1.5b-instruct --name prompt_sets_qwen1.5b)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from importlib import resources

from _common import add_judge, add_model, add_name, judge_words, write_results
from rosi import load
from rosi.measure import RefusalMeter, judge_of
from rosi.metrics import Rate


def rows_of(name: str) -> list[dict]:
    text = resources.files("rosi.prompts").joinpath("data").joinpath(f"{name}.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model(parser)
    add_name(parser, __file__)
    parser.add_argument("--sets", default="harmful_hard,lookalike")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dtype", default="bfloat16")
    add_judge(parser)
    args = parser.parse_args()
    meter = RefusalMeter(load(args.model, device="cpu", dtype=args.dtype), judge_of(args.judge), batch_size=args.batch_size, progress=True)
    out: dict = {
        "model": args.model,
        "dtype": args.dtype,
        "judge": judge_words(args.judge, args.max_new_tokens),
        "judge_spec": args.judge,
        "sets": {},
    }
    for name in args.sets.split(","):
        rows = rows_of(name)
        prompts = [r["instruction"] for r in rows]
        t = time.perf_counter()
        replies = meter.replies(prompts, args.max_new_tokens, desc=name)
        seconds = round(time.perf_counter() - t, 1)
        rate = meter.judged(prompts, replies, new_tokens=args.max_new_tokens)
        groups: dict[str, list[bool]] = defaultdict(list)
        for row, refused in zip(rows, rate.refused, strict=True):
            if refused is None:  # the judge gave no verdict: in no group (counted as "unjudged")
                continue
            groups["all"].append(refused)
            groups[f"split:{row['split']}"].append(refused)
            groups[f"category:{row['category']}"].append(refused)
            if "style" in row:
                groups[f"style:{row['style']}"].append(refused)
        unjudged = rate.n - rate.judged.n
        summary = {g: Rate(sum(v), len(v)).to_json() for g, v in sorted(groups.items())}
        if rate.partial is not None:
            summary["partial"] = Rate(sum(rate.partial), len(rate.partial)).to_json()
        if unjudged:
            summary["unjudged"] = Rate(unjudged, len(rows)).to_json()
        out["sets"][name] = {
            "seconds": seconds,
            "rates": summary,
            "examples": [{"prompt": r["instruction"], "reply": x} for r, x in list(zip(rows, replies, strict=True))[:6]],
        }
        a = summary.get("all")  # none when the judge gave no verdict at all
        refused = f"refused {a['rate']:.1%} [{a['ci95'][0]:.0%}-{a['ci95'][1]:.0%}] of {a['n']}" if a else "no verdicts"
        part = f"; partial {summary['partial']['rate']:.1%}" if "partial" in summary else ""
        print(f"{name}: {refused} ({seconds} s){part}")
        for g, r in summary.items():
            if g.startswith(("split:", "style:")):
                print(f"  {g:24} {r['rate']:.0%} (n={r['n']})")
    path = write_results(args.name, out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
