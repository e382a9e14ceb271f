"""What a white-box attacker gets by abliterating a rosi-edited model again.

ROSI is a last-mile safety edit, not a tamper-proof one. This benchmark plays the attacker with
the standard recipe: extract the refusal direction from the *edited* model (rosi's own
extraction and selection, the built-in prompts), project it out of every residual writer
(attention, MLP, embedding), and measure held-out refusal (rosi.eval.heldout, as
benchmarks/refusal_eval.py does, through rosi.measure: 64-token greedy replies, the marker judge or --judge SPEC, 95% Wilson intervals)
before and after.

Run: .venv/bin/python benchmarks/resistance.py EDITED [--n 102] [--dtype bfloat16] [--layer L --position P] [--judge SPEC] [--name NAME]
(writes benchmarks/results/NAME.json; the attacker's layer and position are selected unless pinned)
"""

from __future__ import annotations

import argparse
import sys
import time

from _common import DATA, add_judge, add_name, judge_words, write_results
from rosi import apply_edit, load
from rosi.eval.heldout import held_out, refusal_row
from rosi.measure import judge_of
from rosi.prompts import PromptSets
from rosi.workflows.extract import extract
from rosi.workflows.options import ExtractOptions


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("edited", help="a rosi-edited model (e.g. the checkpoint make demo saves)")
    parser.add_argument("--n", type=int, default=102)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--layer", type=int, default=None, help="pin the attacker's layer (with --position) instead of selecting it")
    parser.add_argument("--position", type=int, default=None)
    add_judge(parser)
    add_name(parser, __file__)
    args = parser.parse_args()
    sets = held_out(args.n, DATA)
    judge = judge_of(args.judge)
    loaded = load(args.edited, device="cpu", dtype=args.dtype)
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    rows = [refusal_row(loaded, "rosi-edited", sets, args.max_new_tokens, args.batch_size, judge)]
    seconds["edited"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    attack = extract(loaded, PromptSets.load(), ExtractOptions(batch_size=args.batch_size, layer=args.layer, position=args.position))
    seconds["attacker_extraction"] = round(time.perf_counter() - t, 1)
    d = attack.direction
    record = apply_edit(loaded.model, d, "ablate", 1.0, targets=("attention", "mlp", "embedding"))
    t = time.perf_counter()
    rows.append(refusal_row(loaded, f"abliterated again (layer {d.layer})", sets, args.max_new_tokens, args.batch_size, judge))
    seconds["attacked"] = round(time.perf_counter() - t, 1)
    for r in rows:
        print(
            f"{r['label']:34} harmful {r['harmful']['rate']:6.1%}  harmless {r['harmless']['rate']:6.1%}  look-alikes {r['contrast']['rate']:6.1%}"
        )
    path = write_results(
        args.name,
        {
            "edited": args.edited,
            "dtype": args.dtype,
            "attacker_direction": d.info(),
            "matrices_ablated": len(record.matrices),
            "judge": judge_words(args.judge, args.max_new_tokens),
            "judge_spec": args.judge,
            "rows": rows,
            "seconds": seconds,
        },
    )
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
