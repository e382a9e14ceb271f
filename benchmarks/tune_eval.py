"""Held-out refusal of the trials `rosi tune` confirmed: the base model, rosi run's default and the
paper's form (the tune's reference trials) and the tuned edit, on prompts rosi never saw.

Harmful (AdvBench, JailbreakBench, MaliciousInstruct), harmless (Alpaca) and the two look-alike
sets apart (JailbreakBench benign behaviours, CoCoNot contrast): greedy replies (64 new tokens),
the refusal-marker judge with its partial verdict, 95% Wilson intervals; the mean first-token
KL(base || edited) on the Alpaca prompts. Each trial's edit is applied from its saved record
(OUT/trials/trial-N.safetensors) to one loaded base model and reverted after.

Run: .venv/bin/python benchmarks/tune_eval.py OUT [--model pypi:qwen2.5-coder-0.5b-instruct] [--trials 0,1,7] [--name NAME]
(writes benchmarks/results/NAME.json and a plot of held-out harmful against look-alike refusal,
NAME.png; e.g. --name tune_eval_qwen0.5b)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from _common import DATA, add_model, add_name, tune_edits, write_results
from refusal_eval import held_out, instructions
from rosi import EditRecord, apply_record, load, revert_edit
from rosi.judges.markers import is_partial, is_refusal
from rosi.metrics import PairedDifference, Rate, kl_divergence
from rosi.model.chat import ChatFormat
from rosi.model.generation import generate, next_token_logprobs
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


def measure(loaded, label: str, sets: dict[str, list[str]], new_tokens: int, batch_size: int, base_logprobs=None) -> dict:
    fmt = ChatFormat(loaded.tokenizer)
    row: dict = {"label": label}
    for role, prompts in sets.items():
        replies = generate(
            loaded.model, fmt, prompts, max_new_tokens=new_tokens, batch_size=batch_size, progress=True, desc=f"{label}, {role}"
        )
        refused = Rate(sum(map(is_refusal, replies)), len(replies))
        partial = Rate(sum(map(is_partial, replies)), len(replies))
        row[role] = {
            "rate": refused.value,
            "k": refused.k,
            "n": refused.n,
            "wilson95": [round(x, 4) for x in refused.interval],
            "partial": partial.value,
            "refused": [is_refusal(r) for r in replies],  # per prompt, same order for every row: paired comparisons
        }
        row.setdefault("samples", {})[role] = [{"prompt": p, "reply": r} for p, r in list(zip(prompts, replies, strict=True))[:3]]
    logprobs = next_token_logprobs(loaded.model, fmt, sets["harmless"], batch_size=batch_size)
    if base_logprobs is not None:
        row["kl_harmless_first_token"] = float(kl_divergence(base_logprobs, logprobs).mean())
    return row, logprobs


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
                label=r["label"],
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
    parser.add_argument("out", help="a folder written by `rosi tune`")
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
    args = parser.parse_args()
    out = Path(args.out)
    edits = tune_edits(out, args.trials, args.record)
    sets = sets_of(args.n)
    loaded = load(args.model, device="cpu", dtype=args.dtype)
    rows, seconds = [], {}
    t = time.perf_counter()
    base_row, base_lp = measure(loaded, "base model", sets, args.max_new_tokens, args.batch_size)
    seconds["base model"] = round(time.perf_counter() - t, 1)
    rows.append(base_row)
    for label, file, extra in edits:
        record = apply_record(loaded.model, EditRecord.load(file))
        t = time.perf_counter()
        row, _ = measure(loaded, label, sets, args.max_new_tokens, args.batch_size, base_lp)
        seconds[label] = round(time.perf_counter() - t, 1)
        revert_edit(loaded.model, record)
        rows.append({**row, **extra})
    roles = list(sets)
    chosen = next((r for r in rows if "(chosen)" in r["label"]), None)
    if chosen is not None:  # paired against every other row on the same prompts (McNemar)
        for r in rows:
            if r is not chosen:
                r["chosen_minus_this"] = {k: PairedDifference.of(r[k]["refused"], chosen[k]["refused"]).to_json() for k in roles}
    print(f"\n{'':34} " + " ".join(f"{r:>24}" for r in roles) + f" {'KL':>7}")
    for r in rows:
        cells = [f"{r[k]['rate']:6.1%} [{r[k]['wilson95'][0]:.0%}-{r[k]['wilson95'][1]:.0%}]" for k in roles]
        print(f"{r['label']:34} " + " ".join(f"{c:>24}" for c in cells) + f" {r.get('kl_harmless_first_token', 0.0):>7.3f}")
    if chosen is not None:
        print("\nrefusal, chosen minus each row, paired on the same prompts (95% interval, McNemar p):")
        for r in rows:
            if "chosen_minus_this" in r:
                d = r["chosen_minus_this"]
                cells = [
                    f"{d[k]['difference'] * 100:+.1f} [{d[k]['ci95'][0] * 100:+.1f}, {d[k]['ci95'][1] * 100:+.1f}] p={d[k]['mcnemar_p']:.2f}"
                    for k in roles
                ]
                print(f"{r['label']:34} " + " ".join(f"{c:>24}" for c in cells))
    path = write_results(
        args.name,
        {
            "tune_output": str(out),
            "judge": f"refusal markers (partial verdict beside), {args.max_new_tokens} new tokens, greedy, no system prompt",
            "dtype": args.dtype,
            "sets": {k: len(v) for k, v in sets.items()},
            "rows": rows,
            "seconds": seconds,
        },
    )
    figure = path.with_suffix(".png")
    plot(rows, figure)
    print(f"wrote {path} and {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
