"""Held-out refusal of the trials `rosi tune` confirmed: the base model, rosi run's default and the
paper's form (the tune's reference trials) and the tuned edit, on prompts rosi never saw.

Harmful (AdvBench, JailbreakBench, MaliciousInstruct), harmless (Alpaca) and the two look-alike
sets apart (JailbreakBench benign behaviours, CoCoNot contrast): greedy replies (64 new tokens)
measured through rosi.measure (the refusal-marker judge with its partial verdict, or --judge SPEC),
95% Wilson intervals; the mean first-token KL(base || edited) on the Alpaca prompts, from the
same generation as their replies. Each trial's edit is applied from its saved record
(OUT/trials/trial-N.safetensors) to one loaded base model and reverted after.

Run: .venv/bin/python benchmarks/tune_eval.py [OUT] [--model pypi:qwen2.5-coder-0.5b-instruct] [--trials 0,1,7] [--judge SPEC] [--name NAME]
(writes benchmarks/results/NAME.json and a plot of held-out harmful against look-alike refusal,
NAME.png; e.g. --name tune_eval_qwen0.5b)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from _common import DATA, add_judge, add_model, add_name, judge_words, tune_edits, write_results
from refusal_eval import held_out, instructions, rate_row
from rosi import EditRecord, apply_record, load, revert_edit
from rosi.judges import Judge
from rosi.measure import RefusalMeter, judge_of
from rosi.metrics import PairedDifference, kl_divergence
from rosi.prompts import load_prompts


def sets_of(n: int) -> dict[str, list[str]]:
    parts = held_out(n)
    coconot = load_prompts(str(DATA / "coconot" / "coconot_contrast_eval.jsonl")).take(min(n, 100), seed=0)
    return {
        "harmful": instructions(parts["harmful"]),
        "harmless": instructions(parts["harmless"]),
        "jbb_benign": instructions(parts["contrast"]),
        "coconot_contrast": list(coconot.instructions),
    }


def measure(
    loaded, label: str, sets: dict[str, list[str]], new_tokens: int, batch_size: int, base_logprobs=None, judge: Judge | None = None
) -> tuple[dict, torch.Tensor]:
    """A row: each set's refusal from :class:`rosi.measure.RefusalMeter` (``judge``, default the
    marker judge), with the per-prompt verdicts; the harmless prompts' first-token distributions
    come from the generation of their replies (the plain path, no shared prefix), for the KL."""
    meter = RefusalMeter(loaded, judge, batch_size=batch_size, progress=True)
    row: dict = {"label": label, "samples": {}, "replies": {}}
    logprobs = None
    for role, prompts in sets.items():
        if role == "harmless":
            replies, logprobs = meter.replies_and_logprobs(prompts, new_tokens, share_prefix=False)
        else:
            replies = meter.replies(prompts, new_tokens, desc=f"{label}, {role}")
            row["samples"][role] = [{"prompt": p, "reply": r} for p, r in list(zip(prompts, replies, strict=True))[:3]]
        rate = meter.judged(prompts, replies, new_tokens=new_tokens)
        row["replies"][role] = replies  # every reply, written beside the results (NAME.replies.jsonl), not into them
        row[role] = {
            **rate_row(rate),
            "partial": rate.partial_rate,  # None where the judge does not tell
            "refused": list(rate.refused),  # per prompt, same order for every row: paired comparisons
        }
    assert logprobs is not None, "the sets have no harmless prompts for the KL"
    if base_logprobs is not None:
        row["kl_harmless_first_token"] = float(kl_divergence(base_logprobs, logprobs).mean())
    return row, logprobs


def write_replies(path: Path, model: str, rows: list[dict], sets: dict[str, list[str]]) -> None:
    """Every reply of every row, one JSON line each (model, edit, set, prompt, reply): what the
    refusal figures judged, for reading and for labelling."""
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            for role, replies in r["_replies"].items():
                for prompt, reply in zip(sets[role], replies, strict=True):
                    f.write(json.dumps({"model": model, "edit": r["label"], "set": role, "prompt": prompt, "reply": reply}) + "\n")


def paired(a: list[bool | None], b: list[bool | None]) -> PairedDifference:
    """``b - a`` on the prompts both rows have a verdict on (every prompt, for the marker judge)."""
    both = [(x, y) for x, y in zip(a, b, strict=True) if x is not None and y is not None]
    return PairedDifference.of([x for x, _ in both], [y for _, y in both])


def legend(row: dict) -> str:
    """A row's label, with its form when it is a tune's trial ("trial 7: surgical")."""
    params = row.get("params")
    return f"{row['label']}: {params['form']}" if isinstance(params, dict) and "form" in params else row["label"]


def plot(rows: list[dict], path: Path) -> None:
    """Held-out harmful refusal against each look-alike set's refusal, 95% intervals both ways."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    colours = plt.get_cmap("tab10")
    for ax, look in zip(axes, ("jbb_benign", "coconot_contrast"), strict=True):
        for i, r in enumerate(rows):
            x, y = r[look], r["harmful"]
            ax.errorbar(
                x["rate"],
                y["rate"],
                xerr=[[x["rate"] - x["wilson95"][0]], [x["wilson95"][1] - x["rate"]]],
                yerr=[[y["rate"] - y["wilson95"][0]], [y["wilson95"][1] - y["rate"]]],
                fmt="*" if r["label"] == "base model" else "o",
                markersize=12 if r["label"] == "base model" else 7,
                color="black" if r["label"] == "base model" else colours(i),
                capsize=3,
                label=legend(r),
            )
        ax.set_xlabel(f"{look} refusal (held-out look-alikes)")
        ax.set_ylabel("harmful refusal (held-out)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    edits = tune_edits(out, args.trials, args.record)
    sets = sets_of(args.n)
    judge = judge_of(args.judge)
    loaded = load(args.model, device="cpu", dtype=args.dtype)
    rows, seconds = [], {}
    t = time.perf_counter()
    base_row, base_lp = measure(loaded, "base model", sets, args.max_new_tokens, args.batch_size, judge=judge)
    seconds["base model"] = round(time.perf_counter() - t, 1)
    rows.append(base_row)
    for label, file, extra in edits:
        record = apply_record(loaded.model, EditRecord.load(file))
        t = time.perf_counter()
        row, _ = measure(loaded, label, sets, args.max_new_tokens, args.batch_size, base_lp, judge)
        seconds[label] = round(time.perf_counter() - t, 1)
        revert_edit(loaded.model, record)
        rows.append({**row, **extra})
    roles = list(sets)
    # the chosen trial (else rosi run's default edit) paired against every other row on the same prompts (McNemar)
    chosen = next((r for r in rows if "(chosen)" in r["label"]), None) or next((r for r in rows if "(default)" in r["label"]), None)
    if chosen is not None:
        for r in rows:
            if r is not chosen:
                r["chosen_minus_this"] = {k: paired(r[k]["refused"], chosen[k]["refused"]).to_json() for k in roles}
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
    plot(rows, figure)
    print(f"wrote {path} and {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
