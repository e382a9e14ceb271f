"""Held-out refusal rates (the acceptance measurement of `rosi run`).

Greedy replies (64 new tokens by default) to prompts from ../shared/data that rosi never saw,
judged through rosi.measure (the refusal-marker judge, or --judge SPEC), with 95% Wilson intervals:

- harmful: AdvBench, JailbreakBench harmful behaviours, MaliciousInstruct (a third each);
- harmless: the Alpaca test split of refusal_direction (ordinary instructions);
- contrast: JailbreakBench benign behaviours, written to look like the harmful ones ("write a
  fictional story about ..."): how much an edit over-refuses look-alikes (reported apart).

Rows: the base model, the paper's rosi form at the alpha `rosi run` chose for it (all writers),
and the checkpoint `rosi run` saved. Also: how well the direction separates the held-out prompts
(projection at its layer and position; the threshold is the midpoint of the projected class means
of rosi's built-in training prompts, so nothing is fitted on held-out prompts).

Run: .venv/bin/python benchmarks/refusal_eval.py OUT_DIR [--model pypi:qwen2.5-coder-0.5b-instruct] [--n 102] [--judge SPEC] [--name NAME]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from _common import DATA, add_judge, add_model, add_name, judge_words, write_results
from rosi import Direction, apply_edit, load
from rosi.direction.activations import activations_at
from rosi.judges import Judge
from rosi.measure import RefusalMeter, RefusalRate, judge_of
from rosi.model.chat import ChatFormat
from rosi.prompts import PromptSet, builtin, load_prompts


def held_out(n: int) -> dict[str, list[tuple[str, PromptSet]]]:
    """Prompt sets by role, each as (source, prompts)."""
    third = n // 3
    return {
        "harmful": [
            ("advbench", load_prompts(str(DATA / "advbench" / "advbench.jsonl")).take(third, seed=0)),
            ("jailbreakbench", load_prompts(str(DATA / "jailbreakbench" / "harmful-behaviors.csv"), column="Goal").take(third, seed=0)),
            ("malicious_instruct", load_prompts(str(DATA / "malicious_instruct" / "malicious_instruct.jsonl")).take(n - 2 * third, seed=0)),
        ],
        "harmless": [("alpaca", load_prompts(str(DATA / "refusal_direction" / "splits" / "harmless_test.json")).take(n, seed=0))],
        "contrast": [
            (
                "jailbreakbench-benign",
                load_prompts(str(DATA / "jailbreakbench" / "benign-behaviors.csv"), column="goal").take(min(n, 100), seed=0),
            )
        ],
    }


def instructions(parts: list[tuple[str, PromptSet]]) -> list[str]:
    return [i for _, p in parts for i in p.instructions]


def separation_accuracy(loaded, direction: Direction, sets, batch_size: int) -> dict[str, object]:
    fmt = ChatFormat(loaded.tokenizer)
    layer, position = direction.layer, direction.position
    s_hat = direction.unit

    def project(prompts) -> torch.Tensor:
        return activations_at(loaded.model, fmt, list(prompts), layer, position, batch_size=batch_size) @ s_hat

    threshold = float(
        (project(builtin("harmful", "train").instructions).mean() + project(builtin("harmless", "train").instructions).mean()) / 2
    )
    ph = project(instructions(sets["harmful"]))
    pb = project(instructions(sets["harmless"]))
    pc = project(instructions(sets["contrast"]))
    above = int((ph > threshold).sum())
    below, below_c = int((pb <= threshold).sum()), int((pc <= threshold).sum())
    return {
        "layer": layer,
        "position": position,
        "threshold": round(threshold, 3),
        "accuracy_harmful_vs_harmless": (above + below) / (len(ph) + len(pb)),
        "harmful_above": above / len(ph),
        "harmless_below": below / len(pb),
        "contrast_below": below_c / len(pc),
        "accuracy_harmful_vs_contrast": (above + below_c) / (len(ph) + len(pc)),
        "n": {"harmful": len(ph), "harmless": len(pb), "contrast": len(pc)},
    }


def rate_row(rate: RefusalRate) -> dict[str, object]:
    """A rate as the rows keep it: ``rate``, ``k`` of ``n`` (the prompts the judge gave a verdict
    on) and the ``wilson95`` interval; ``unjudged``: prompts without a verdict, where there are any."""
    judged = rate.judged
    row: dict[str, object] = {"rate": judged.value, "k": judged.k, "n": judged.n, "wilson95": [round(x, 4) for x in rate.interval]}
    if judged.n < rate.n:
        row["unjudged"] = rate.n - judged.n
    return row


def measure(loaded, label: str, sets, new_tokens: int, batch_size: int, judge: Judge | None = None) -> dict[str, object]:
    """A row: each role's refusal (and each source's, for a role of several) from
    :class:`rosi.measure.RefusalMeter` with ``judge`` (default the marker judge), and a few replies."""
    meter = RefusalMeter(loaded, judge, batch_size=batch_size, progress=True)
    row: dict[str, object] = {"label": label}
    samples = {}
    for role, parts in sets.items():
        prompts = instructions(parts)
        replies = meter.replies(prompts, new_tokens, desc=f"{label}, {role}")
        rate = meter.judged(prompts, replies, new_tokens=new_tokens)
        row[role] = rate_row(rate)
        start = 0
        for source, p in parts if len(parts) > 1 else []:
            part = RefusalRate(rate.refused[start : start + len(p)]).judged
            row[role][source] = {"rate": part.value, "n": part.n}  # type: ignore[index]
            start += len(p)
        samples[role] = [{"prompt": i, "reply": r} for i, r in list(zip(prompts, replies, strict=True))[:4]]
    row["samples"] = samples
    return row


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
    sets = held_out(args.n)
    out = Path(args.out)
    report = json.loads((out / "rosi_report.json").read_text())
    direction = Direction.load(out / "direction.safetensors")
    rows, seconds = [], {}
    judge = judge_of(args.judge)
    base = load(args.model, device="cpu")
    t = time.perf_counter()
    separation = separation_accuracy(base, direction, sets, args.batch_size)
    seconds["separation"] = round(time.perf_counter() - t, 1)
    print(
        f"separation at layer {separation['layer']}: harmful vs harmless {separation['accuracy_harmful_vs_harmless']:.1%}, "
        f"harmful vs contrast {separation['accuracy_harmful_vs_contrast']:.1%}",
        flush=True,
    )
    t = time.perf_counter()
    rows.append(measure(base, "base model", sets, args.max_new_tokens, args.batch_size, judge))
    seconds["base"] = round(time.perf_counter() - t, 1)
    rosi_search = next((s for s in report["strength_searches"] if s["method"] == "rosi"), None)
    if rosi_search and report["method"] != "rosi":
        apply_edit(base.model, direction, "rosi", rosi_search["strength"])
        t = time.perf_counter()
        rows.append(
            measure(
                base,
                f"rosi alpha={rosi_search['strength']:g}, all writers (paper's form)",
                sets,
                args.max_new_tokens,
                args.batch_size,
                judge,
            )
        )
        seconds["rosi_form"] = round(time.perf_counter() - t, 1)
    del base
    edited = load(args.out, device="cpu")
    n_edited = json.loads((out / "rosi.json").read_text()).get("edit", {}).get("matrices_edited", "?")
    t = time.perf_counter()
    rows.append(
        measure(
            edited,
            f"{report['method']} {report['strength']:g}, {n_edited} writers (rosi run)",
            sets,
            args.max_new_tokens,
            args.batch_size,
            judge,
        )
    )
    seconds["edited"] = round(time.perf_counter() - t, 1)
    print(f"\n{'':48} {'harmful refused':>26} {'harmless refused':>26} {'contrast refused':>26}")
    for r in rows:
        cells = []
        for role in ("harmful", "harmless", "contrast"):
            c = r[role]
            cells.append(f"{c['rate']:6.1%} [{c['wilson95'][0]:.0%}-{c['wilson95'][1]:.0%}] n={c['n']:<3}")
        print(f"{r['label']:48} " + " ".join(f"{c:>26}" for c in cells))
    path = write_results(
        args.name,
        {
            "checkpoint": str(args.out),
            "direction": report["direction"],
            "method": report["method"],
            "strength": report["strength"],
            "judge": judge_words(args.judge, args.max_new_tokens),
            "judge_spec": args.judge,
            "sets": {role: [{"source": s, "n": len(p)} for s, p in parts] for role, parts in sets.items()},
            "rows": rows,
            "separation": separation,
            "seconds": seconds,
        },
    )
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
