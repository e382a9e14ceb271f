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
import json
import statistics
from collections import Counter
from pathlib import Path

from _common import add_name, write_results

FIGURES = ("harmful", "harmless", "lookalike", "kl")


def pick_of(folder: Path) -> dict[str, object]:
    """One tune's seed, chosen trial's form, layer, settings and confirmed figures."""
    report = json.loads((folder / "tune_report.json").read_text(encoding="utf-8"))
    chosen = next(t for t in report["trials"] if t["number"] == report["chosen"])
    figures = chosen["confirmed"] or chosen["cheap"]
    return {
        "folder": str(folder),
        "seed": report["options"].get("seed"),
        "form": chosen["params"]["form"],
        "layer": chosen["params"]["layer"],
        "reference": chosen.get("reference"),
        "params": chosen["params"],
        "figures": {k: figures[k] for k in FIGURES},
        "chosen_by": report["chosen_by"],
        "seconds": round(sum(float(v) for v in report.get("seconds", {}).values()), 1),  # the tune's phases, as it timed them
    }


def stability(picks: list[dict[str, object]]) -> dict[str, object]:
    """The most common (form, layer) and form, how many tunes picked each, and each figure's
    mean, smallest and largest value over the picks."""
    if not picks:
        raise SystemExit("give at least one rosi tune output folder")
    pairs = Counter((str(p["form"]), int(p["layer"])) for p in picks)  # type: ignore[call-overload]
    forms = Counter(str(p["form"]) for p in picks)
    (form, layer), same = pairs.most_common(1)[0]
    spread = {}
    for k in FIGURES:
        values = [float(p["figures"][k]) for p in picks]  # type: ignore[index]
        spread[k] = {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}
    return {
        "tunes": len(picks),
        "most_common": {"form": form, "layer": layer, "tunes": same},
        "forms": dict(forms),
        "same_form_and_layer": same / len(picks),
        "same_form": forms.most_common(1)[0][1] / len(picks),
        "spread": spread,
        "seconds": {"mean": statistics.fmean(float(p["seconds"]) for p in picks), "max": max(float(p["seconds"]) for p in picks)},  # type: ignore[arg-type]
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("outs", nargs="+", help="rosi tune output folders (one per seed)")
    add_name(parser, __file__)
    args = parser.parse_args()
    picks = [pick_of(Path(o)) for o in args.outs]
    summary = stability(picks)
    for p in picks:
        f = p["figures"]
        print(
            f"seed {p['seed']}: {p['form']} layer {p['layer']}"
            f" harmful {f['harmful']:.0%} harmless {f['harmless']:.0%} look-alike {f['lookalike']:.0%} KL {f['kl']:.3f}"  # type: ignore[index]
            f" ({p['seconds']:.0f} s)"
        )
    most = summary["most_common"]
    print(f"same form and layer in {most['tunes']} of {summary['tunes']} tunes ({most['form']}, layer {most['layer']})")  # type: ignore[index]
    path = write_results(args.name, {"picks": picks, "stability": summary})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
