"""Which of `rosi tune`'s cheap scores predicts the full-reply verdicts: for every trial a tune
confirmed, its cheap scores (measured on the ranking half of validation: the refusal of its
short replies, the mean first-token log-odds of refusing, the first-token KL on harmless prompts)
against its confirmed figures (the confirmation half, full replies), as Spearman rank
correlations across the trials (rosi.workflows.tune.analysis), per figure, pooled over the tunes given and per tune. The score
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
from pathlib import Path

from _common import add_name, write_results
from rosi.workflows.tune.analysis import best, confirmed, correlations, rho_text
from rosi.workflows.tune.report import TuneReport


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("outs", nargs="+", help="rosi tune output folders")
    add_name(parser, __file__)
    args = parser.parse_args()
    per_tune = {o: confirmed(TuneReport.load(o)) for o in args.outs}
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
