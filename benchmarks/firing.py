"""Where each edit fires: the push ``r . x_t`` it adds along the refusal direction at every token,
by prompt set and segment (system turn, the user's words, template, the deciding token, the
reply), relative to the harmful prompts' median deciding push (rosi.edit.firing).

Held-out prompts (rosi.eval.suites.probe_sets: harmful requests of AdvBench, JailbreakBench and
MaliciousInstruct; Alpaca; JailbreakBench benign and CoCoNot contrast look-alikes), ``--n`` each,
on the unedited model, with the replies teacher-forced: the unedited model's own (``base``) and
the edited model's own (``edited``). Each edit comes from a record file (``LABEL=FILE``:
``rosi_edit.safetensors`` of a rosi output, or a tune's trial record).

Run: .venv/bin/python benchmarks/firing.py --record "scale=OUT/rosi_edit.safetensors" [--record ...]
     [--model pypi:qwen2.5-coder-0.5b-instruct] [--n 40] [--name firing_qwen0.5b]
(writes benchmarks/results/NAME.json and NAME.png: one panel per segment)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from _common import DATA, add_model, add_name, write_results
from rosi import EditRecord, apply_record, load, revert_edit
from rosi.edit.firing import Firing, measure_firing
from rosi.eval.suites import probe_sets
from rosi.model.chat import SEGMENTS, ChatFormat
from rosi.model.generation import generate_replies


def plot(rows: list[dict], path: Path) -> None:
    """One panel per segment: each edit's push on each set (median, 10th-90th percentile bars),
    relative to its harmful deciding median; the edited model's replies for the reply panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SEGMENTS), figsize=(4 * len(SEGMENTS), 4.2), sharey=True)
    colours = plt.get_cmap("tab10")
    for ax, segment in zip(axes, SEGMENTS, strict=True):
        for i, row in enumerate(rows):
            firing = Firing.from_json(row["firing"]["edited" if segment == "reply" else "base"])
            for j, name in enumerate(firing.sets):
                p = firing.sets[name][segment]
                if p.n == 0:
                    continue
                ref = firing.reference
                x = j + (i - (len(rows) - 1) / 2) * 0.8 / max(len(rows), 1)
                ax.errorbar(
                    x,
                    p.median / ref,
                    yerr=[[(p.median - p.quantiles["p10"]) / ref], [(p.quantiles["p90"] - p.median) / ref]],
                    fmt="o",
                    color=colours(i),
                    capsize=3,
                    label=row["label"] if j == 0 else None,
                )
        names = list(Firing.from_json(rows[0]["firing"]["base"]).sets)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.axhline(0, color="grey", lw=0.8)
        ax.axhline(1, color="grey", lw=0.8, ls=":")
        ax.set_title(segment + (" (edited model's replies)" if segment == "reply" else ""), fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("push / harmful deciding median")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_name(parser, __file__)
    add_model(parser, "--base", help="the base model the edits were made on")
    parser.add_argument("--record", action="append", required=True, metavar="LABEL=FILE", help="an edit record to probe (repeatable)")
    parser.add_argument("--n", type=int, default=40, help="prompts per set (default: %(default)s)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()
    edits = [(label, EditRecord.load(file)) for label, _, file in (r.partition("=") for r in args.record)]
    sets = probe_sets(DATA, args.n)
    loaded = load(args.model, device="cpu", dtype=args.dtype)
    fmt = ChatFormat(loaded.tokenizer)
    t = time.perf_counter()
    gen = {"max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "progress": True}
    base_replies = {name: generate_replies(loaded.model, fmt, prompts, **gen) for name, prompts in sets.items()}
    seconds = {"base replies": round(time.perf_counter() - t, 1)}
    rows = []
    for label, record in edits:
        t = time.perf_counter()
        applied = apply_record(loaded.model, record)
        edited_replies = {name: generate_replies(loaded.model, fmt, prompts, **gen) for name, prompts in sets.items()}
        revert_edit(loaded.model, applied)
        firing = {
            whose: measure_firing(loaded.model, fmt, record, sets, replies, whose=whose, batch_size=args.batch_size)
            for whose, replies in (("base", base_replies), ("edited", edited_replies))
        }
        seconds[label] = round(time.perf_counter() - t, 1)
        print(f"\n{label} ({record.method}, strength {record.strength:g}, {len(record.matrices)} matrices), base model's replies:")
        print(firing["base"].table())
        print("edited model's replies:")
        print(firing["edited"].table())
        rows.append(
            {
                "label": label,
                "method": record.method,
                "strength": record.strength,
                "matrices": len(record.matrices),
                "firing": {k: f.to_json() for k, f in firing.items()},
            }
        )
    path = write_results(
        args.name,
        {
            "dtype": args.dtype,
            "n_per_set": {k: len(v) for k, v in sets.items()},
            "segments": list(SEGMENTS),
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
