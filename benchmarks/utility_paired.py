"""Utility of tuned edits at a resolution that can see one point: MMLU (a seeded sample across all
subjects) and the full ARC-Challenge test set through lm-eval (zero-shot log-likelihood multiple
choice, rosi's local task files), for the base model and each trial of a `rosi tune` output,
scored as a *paired* difference against the base on the same questions (95% interval from the
discordant pairs, McNemar's exact p).

Run: .venv/bin/python benchmarks/utility_paired.py OUT [--model SPEC] [--mmlu 1000] [--trials 0,1,7] [--name NAME]
(writes benchmarks/results/NAME.json, e.g. --name utility_paired_qwen0.5b)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from _common import DATA, add_model, add_name, write_results
from rosi import EditRecord, apply_record, load, revert_edit
from rosi.eval.utility import per_question, prepare_local_tasks
from rosi.metrics import PairedDifference, Rate
from rosi.workflows.tune.report import TuneReport, record_edits


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="a folder written by `rosi tune`")
    add_name(parser, __file__)
    add_model(parser, "--base", help="the base model the tune edited")
    parser.add_argument("--trials", default=None, help="trial numbers (default: the references and the chosen one)")
    parser.add_argument(
        "--record", action="append", default=[], metavar="LABEL=FILE", help="also measure this edit record (e.g. rosi run's own edit)"
    )
    parser.add_argument("--mmlu", type=int, default=1000, help="MMLU questions, across all subjects (default: %(default)s)")
    parser.add_argument("--arc", type=int, default=None, help="ARC-Challenge questions (default: all 1172)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()
    out = Path(args.out)
    numbers = [int(x) for x in args.trials.split(",")] if args.trials else None
    edits = TuneReport.load(out).edits(out, numbers) + record_edits(args.record)
    folder = Path(tempfile.mkdtemp(prefix="rosi-utility-"))
    configs = prepare_local_tasks({"mmlu": args.mmlu, "arc_challenge": args.arc}, DATA, folder)
    loaded = load(args.model, device="cpu", dtype=args.dtype)
    t = time.perf_counter()
    base = per_question(loaded, configs, batch_size=args.batch_size)
    seconds = {"base model": round(time.perf_counter() - t, 1)}
    rows = [{"label": "base model", "accuracy": {task: Rate(sum(v), len(v)).to_json() for task, v in base.items()}}]
    for label, file, extra in edits:
        record = apply_record(loaded.model, EditRecord.load(file))
        t = time.perf_counter()
        got = per_question(loaded, configs, batch_size=args.batch_size)
        seconds[label] = round(time.perf_counter() - t, 1)
        revert_edit(loaded.model, record)
        rows.append(
            {
                "label": label,
                **extra,
                "accuracy": {task: Rate(sum(v), len(v)).to_json() for task, v in got.items()},
                "paired_vs_base": {task: PairedDifference.of(base[task], got[task]).to_json() for task in got},
            }
        )
    print(f"\n{'':30} " + " ".join(f"{task:>38}" for task in base))
    for r in rows:
        cells = []
        for task in base:
            acc = r["accuracy"][task]["rate"]
            d = r.get("paired_vs_base", {}).get(task)
            cells.append(
                f"{acc:6.1%}"
                + (
                    f" {d['difference'] * 100:+.1f} [{d['ci95'][0] * 100:+.1f}, {d['ci95'][1] * 100:+.1f}] p={d['mcnemar_p']:.2f}"
                    if d
                    else ""
                )
            )
        print(f"{r['label']:30} " + " ".join(f"{c:>38}" for c in cells))
    path = write_results(
        args.name,
        {"tune_output": str(out), "dtype": args.dtype, "tasks": {k: len(v) for k, v in base.items()}, "rows": rows, "seconds": seconds},
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
