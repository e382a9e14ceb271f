"""Which of `rosi tune`'s cheap scores predicts the full-reply verdicts: for every trial a tune
confirmed, its cheap scores (measured on the ranking half of validation: the refusal of its
short replies, the mean first-token log-odds of refusing, the first-token KL on harmless prompts)
against its confirmed figures (the confirmation half, full replies), as Spearman rank
correlations across the trials, per figure, pooled over the tunes given and per tune. The score
that ranks the trials most like their confirmed figures is named per figure.

This is what the tune's pick rests on: the trials are ranked by the cheap scores and only the best
few are confirmed, so a cheap score that does not rank like the confirmation does chooses noise.
The correlation is over confirmed trials only (those the cheap scores already ranked well), so it
is measured on a narrowed range: a low figure says the scores cannot tell the best trials apart.

Run: .venv/bin/python benchmarks/cheap_scores.py tuned-0 tuned-1 tuned-2 --name cheap_scores_qwen0.5b
(rosi tune output folders; writes benchmarks/results/NAME.json and prints the table)
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from _common import add_name, write_results

# each confirmed figure, and the cheap scores that could predict it (higher score, more refusal / more change)
PREDICTORS = {
    "harmful": ("harmful", "harmful_log_odds"),
    "harmless": ("harmless", "kl"),
    "lookalike": ("lookalike", "lookalike_log_odds"),
    "kl": ("kl",),
}


def ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties sharing their mean rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rank correlation (Pearson's on the ranks); None with under three pairs or a constant side."""
    if len(x) != len(y):
        raise ValueError(f"{len(x)} scores for {len(y)} figures")
    if len(x) < 3:
        return None
    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return None if sxx == 0 or syy == 0 else sxy / math.sqrt(sxx * syy)


def confirmed(report: dict) -> list[dict]:
    """The trials of a tune report that were confirmed and hold cheap scores to compare."""
    return [t for t in report["trials"] if t.get("confirmed") and t.get("cheap")]


def confirmed_trials(folder: Path) -> list[dict[str, object]]:
    """A tune's confirmed trials: number, cheap scores and confirmed figures."""
    report = json.loads((folder / "tune_report.json").read_text(encoding="utf-8"))
    return [{"tune": str(folder), "number": t["number"], "cheap": t["cheap"], "confirmed": t["confirmed"]} for t in confirmed(report)]


def rho_text(rho: float | None) -> str:
    """A rank correlation as printed: signed, two decimals, a dash where none could be measured."""
    return "–" if rho is None else f"{rho:+.2f}"


def correlations(trials: list[dict[str, object]]) -> dict[str, dict[str, object]]:
    """Per confirmed figure and cheap score: the rank correlation over ``trials`` (``n`` of them with both)."""
    out: dict[str, dict[str, object]] = {}
    for figure, scores in PREDICTORS.items():
        out[figure] = {}
        for score in scores:
            pairs = [
                (float(t["cheap"][score]), float(t["confirmed"][figure]))  # type: ignore[index]
                for t in trials
                if isinstance(t["cheap"].get(score), (int, float)) and isinstance(t["confirmed"].get(figure), (int, float))  # type: ignore[attr-defined]
            ]
            rho = spearman([p[0] for p in pairs], [p[1] for p in pairs])
            out[figure][score] = {"spearman": rho, "n": len(pairs)}
    return out


def best(pooled: dict[str, dict[str, object]]) -> dict[str, str | None]:
    """Per figure, the cheap score with the highest pooled correlation (None where none could be measured)."""
    out: dict[str, str | None] = {}
    for figure, scores in pooled.items():
        known = {s: v["spearman"] for s, v in scores.items() if v["spearman"] is not None}  # type: ignore[index]
        out[figure] = max(known, key=lambda s: known[s]) if known else None  # type: ignore[arg-type,return-value]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("outs", nargs="+", help="rosi tune output folders")
    add_name(parser, __file__)
    args = parser.parse_args()
    per_tune = {o: confirmed_trials(Path(o)) for o in args.outs}
    pooled = correlations([t for trials in per_tune.values() for t in trials])
    tunes = {o: correlations(trials) for o, trials in per_tune.items()}
    chosen = best(pooled)
    print(f"{'figure':10} {'cheap score':20} {'pooled rho':>11} " + " ".join(f"{Path(o).name:>14}" for o in args.outs))
    for figure, scores in pooled.items():
        for score, v in scores.items():
            cells = [tunes[o][figure][score]["spearman"] for o in args.outs]  # type: ignore[index]
            mark = "  <- best" if chosen[figure] == score and len(scores) > 1 else ""
            print(
                f"{figure:10} {score:20} {rho_text(v['spearman']):>7} n={v['n']:<3}" + " ".join(f"{rho_text(c):>14}" for c in cells) + mark
            )
    path = write_results(args.name, {"tunes": list(args.outs), "pooled": pooled, "per_tune": tunes, "best": chosen})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
