"""How the token-level gate fit moves with the amount of benign evidence: a learning curve.

The benign extraction prompts (rosi's harmless and look-alike training sets) are dealt into four
interleaved quarters; their own greedy replies are generated once and each quarter's token
moments collected once (rosi.direction.tokens; moments add up, so 25%, 50% and 100% of the
benign evidence are sums of quarters). For each share the gate read-out is fit on every token of
that share (the harmful side and the direction, pinned at ``--layer``/``--position``, are the
same for all), applied at one strength ``--k`` (the strength `rosi run --method gate
--fit-tokens` chose), and measured held out (rosi.eval.suites.probe_sets, 64-token greedy
replies, the marker judge), beside the one-position fit at the same strength and the base model,
every row paired with the full token-level fit on the same prompts.

Run: .venv/bin/python benchmarks/token_fit_curve.py [--model pypi:qwen2.5-coder-0.5b-instruct] --k 2.5 [--n 102] [--name token_fit_curve_qwen0.5b]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

from _common import DATA, add_model, add_name, write_results
from rosi import apply_edit, load, revert_edit
from rosi.direction.tokens import REPLY_TOKENS, collect_token_moments
from rosi.edit.methods import EditForm
from rosi.eval.suites import probe_sets
from rosi.measure import RefusalMeter
from rosi.metrics import PairedDifference
from rosi.model.chat import ChatFormat
from rosi.model.generation import generate_replies
from rosi.prompts import PromptSets
from rosi.workflows.extract import extract, fit_modules
from rosi.workflows.options import ExtractOptions

SHARES = (0.25, 0.5, 1.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_name(parser, __file__)
    add_model(parser)
    parser.add_argument("--k", type=float, required=True, help="the gate strength every fit is applied at")
    parser.add_argument("--layer", type=int, default=14)
    parser.add_argument("--position", type=int, default=-1)
    parser.add_argument("--n", type=int, default=102, help="held-out prompts per set (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()
    loaded = load(args.model, device="cpu", dtype=args.dtype)
    prompts = PromptSets.load()
    fmt = ChatFormat(loaded.tokenizer)
    seconds = {}
    t = time.perf_counter()
    form = EditForm("gate")
    extraction = extract(loaded, prompts, ExtractOptions(form=form, layer=args.layer, position=args.position))
    lookalike, _ = prompts.need_lookalikes("the curve")
    benign = [*prompts.harmless.instructions, *lookalike.instructions]
    replies = generate_replies(loaded.model, fmt, benign, max_new_tokens=REPLY_TOKENS, batch_size=args.batch_size, progress=True)
    modules = fit_modules(loaded, form.scope)
    quarters = []
    for q in range(4):
        part = list(range(q, len(benign), 4))
        quarters.append(
            collect_token_moments(
                loaded.model,
                fmt,
                prompts.harmful.instructions if q == 0 else [],
                [benign[i] for i in part],
                [replies[i] for i in part],
                modules,
                position=args.position,
                batch_size=max(1, args.batch_size // 2),
                progress=True,
            )
        )
    seconds["evidence"] = round(time.perf_counter() - t, 1)
    tokens_form = dataclasses.replace(form, tokens=True)
    choices = {"gate, one position": extraction.choose_writers(loaded, form)}
    for share in SHARES:
        parts = quarters[: round(share * 4)]  # the first quarter holds the harmful rows too
        moments = parts[0]
        for extra in parts[1:]:
            moments = moments + extra
        choices[f"gate, token-level, {share:.0%} of benign"] = dataclasses.replace(extraction, moments=moments).choose_writers(
            loaded, tokens_form
        )
    sets = probe_sets(DATA, args.n)
    meter = RefusalMeter(loaded, batch_size=args.batch_size, progress=True)
    rows = [{"label": "base model", **{name: meter.rate(p, 64, desc=f"base, {name}").to_json() for name, p in sets.items()}}]
    for label, choice in choices.items():
        t = time.perf_counter()
        record = apply_edit(
            loaded.model, extraction.direction, "gate", args.k, writers=choice.writers, reads=choice.reads, keep_originals=True
        )
        rows.append(
            {
                "label": label,
                "note": choice.note,
                **{name: meter.rate(p, 64, desc=f"{label}, {name}").to_json() for name, p in sets.items()},
            }
        )
        revert_edit(loaded.model, record)
        seconds[label] = round(time.perf_counter() - t, 1)
    full = rows[-1]
    full["label"] += " (chosen)"  # the reference every row is paired with
    for r in rows[:-1]:
        r["chosen_minus_this"] = {
            name: PairedDifference.of([bool(x) for x in r[name]["refused"]], [bool(x) for x in full[name]["refused"]]).to_json()
            for name in sets
        }
    print(f"\n{'':44}" + "".join(f"{name:>18}" for name in sets))
    for r in rows:
        print(f"{r['label']:44}" + "".join(f"{r[name]['rate']:>18.1%}" for name in sets))
    path = write_results(
        args.name,
        {
            "judge": "refusal markers, 64-token greedy replies, no system prompt",
            "dtype": args.dtype,
            "k": args.k,
            "layer": args.layer,
            "position": args.position,
            "benign_prompts": len(benign),
            "sets": {k: len(v) for k, v in sets.items()},
            "rows": rows,
            "seconds": seconds,
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
