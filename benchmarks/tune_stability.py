"""How stable `rosi tune`'s pick is across seeds: given the output folders of N tunes of one model
that differ only in `--seed`, how often the same form and layer win, the spread of the chosen
trials' confirmed validation figures, and each tune's time (the phases its report timed).

Run (the documented way to tune with N seeds):
    for s in 0 1 2; do rosi tune MODEL --out tuned-$s --seed $s; done
    .venv/bin/python benchmarks/tune_stability.py tuned-0 tuned-1 tuned-2 --name tune_stability_qwen0.5b
(writes benchmarks/results/NAME.json and prints the table)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import add_name, write_results
from rosi.workflows.tune.analysis import Pick, stability
from rosi.workflows.tune.report import TuneReport


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("outs", nargs="+", help="rosi tune output folders (one per seed)")
    add_name(parser, __file__)
    args = parser.parse_args()
    picks = [Pick.of(TuneReport.load(o), str(Path(o))) for o in args.outs]
    summary = stability(picks)
    for p in picks:
        f = p.figures
        print(
            f"seed {p.seed}: {p.form} layer {p.layer}"
            f" harmful {f['harmful']:.0%} harmless {f['harmless']:.0%} look-alike {f['lookalike']:.0%} KL {f['kl']:.3f} ({p.seconds:.0f} s)"
        )
    most = summary["most_common"]
    print(f"same form and layer in {most['tunes']} of {summary['tunes']} tunes ({most['form']}, layer {most['layer']})")
    path = write_results(args.name, {"picks": [p.to_json() for p in picks], "stability": summary})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
