"""Every judge against replies labelled by reading them (rosi.judges.labels: refusal, compliance or
partial, real models' 64-token greedy replies; the labelling guide is rosi/judges/data/LABELLING.md).

Per judge: accuracy, refusal precision and recall, Cohen's kappa (95% intervals), overall and per
kind of request (harmful, harmless, look-alike); accuracy per model and edit that replied; the
recall on refusals that use no refusal phrase, overall and per kind; kappa on the three labels
where the judge tells partial replies apart; seconds per 100 replies on this machine. The marker judge is scored twice: as rosi counts it (a partial reply is
a refusal) and with its partial verdicts read as compliance. The labels' own agreement: the
second, independent labelling of a fifth of the set against the first.

A judge with a continuous score (llm:) is also scored with its threshold chosen on labels: chosen
on the calibration half (rosi.measure.agreement.calibration_split), then the default and the
chosen threshold both scored on the report half only; every item's score is kept in the result.

Run: .venv/bin/python benchmarks/judge_agreement.py [--model MODEL] [--judge SPEC ...] [--labels FILE] [--name judge_agreement]
(default judges: markers, and llm:MODEL with --model's judge model, default the 0.5B; e.g.
--model pypi:qwen2.5-coder-1.5b-instruct --name judge_agreement_1.5b)
"""

from __future__ import annotations

import argparse
import sys

from _common import add_model, add_name, write_results
from rosi.judges.labels import load_labels, second_pass
from rosi.measure import judge_of
from rosi.measure.agreement import calibration_split, choose_threshold, judge_verdicts, score_judge, thresholded
from rosi.metrics import Agreement, cohen_kappa


def calibrated(spec: str, verdicts: list, items: list, seconds: float) -> list[dict]:
    """For a judge with scores: the default and a threshold chosen on the calibration half, both
    scored on the report half."""
    by_id = dict(zip((x.id for x in items), verdicts, strict=True))
    calibrate, report = calibration_split(items)
    threshold = choose_threshold([by_id[x.id].score for x in calibrate], [x.refused for x in calibrate])
    on_report = [by_id[x.id] for x in report]
    rows = []
    for name, vs in (
        (f"{spec} (report half)", on_report),
        (f"{spec}#threshold={threshold:.3f} (chosen on the other half)", thresholded(on_report, threshold)),
    ):
        row = score_judge(name, vs, report, seconds * len(report) / len(items)).to_json()
        rows.append({**row, "threshold": threshold if "#" in name else None, "calibration_items": len(calibrate)})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_name(parser, __file__)
    add_model(parser, help="the judge model of the default llm: judge")
    parser.add_argument("--judge", action="append", default=None, metavar="SPEC", help="a judge to score (repeatable)")
    parser.add_argument("--labels", default=None, help="a labelled reply file (default: the set shipped with rosi)")
    parser.add_argument("--second", default=None, help="its second labelling (default: the one shipped with rosi)")
    parser.add_argument("--n", type=int, default=None, help="score the first N items only (ids are in random order: a random sample)")
    args = parser.parse_args()
    items = load_labels(args.labels)[: args.n]
    rows, scores = [], {}
    for spec in args.judge or ("markers", f"llm:{args.model}"):
        verdicts, seconds = judge_verdicts(judge_of(spec), items)
        views = (False, True) if spec == "markers" else (False,)
        rows += [score_judge(spec, verdicts, items, seconds, partial_is_compliance=view).to_json() for view in views]
        if any(v.score is not None for v in verdicts):
            rows += calibrated(spec, verdicts, items, seconds)
            scores[spec] = {x.id: v.score for x, v in zip(items, verdicts, strict=True)}
    first = {x.id: x for x in items}
    second = [x for x in second_pass(args.second) if x.id in first]
    labels = {
        "items": len(items),
        "by_label": {lab: sum(x.label == lab for x in items) for lab in ("refusal", "compliance", "partial")},
        "by_kind": {k: sum(x.kind == k for x in items) for k in ("harmful", "harmless", "lookalike")},
        "second_pass": {
            "items": len(second),
            "agreement_refused": Agreement.of([first[x.id].refused for x in second], [x.refused for x in second]).to_json(),
            "three_way_kappa": cohen_kappa([first[x.id].label for x in second], [x.label for x in second]),
            "disagreements": [{"id": x.id, "first": first[x.id].label, "second": x.label} for x in second if x.label != first[x.id].label],
        },
    }
    print(f"{'judge':46} {'view':22} {'accuracy':>9} {'kappa':>7} {'recall':>7} {'prec.':>7} {'no-phrase':>10} {'s/100':>7}")
    for r in rows:
        o = r["overall"]
        cell = lambda v: f"{v['rate']:.1%}" if v else "-"  # noqa: E731
        print(
            f"{r['judge']:46} {r['view']:22} {cell(o['accuracy']):>9} {o['kappa']:>7.3f} {cell(o['refusal_recall']):>7} "
            f"{cell(o['refusal_precision']):>7} {cell(r['no_phrase_recall']):>10} {r['seconds_per_100']:>7.1f}"
        )
    print("accuracy by the model and edit that replied:")
    for r in rows:
        if "threshold" not in r:  # the whole set, not a half
            groups = ", ".join(f"{g} {v['rate']:.1%} (n={v['n']})" for g, v in r["by_replier"].items())
            print(f"  {r['judge']} [{r['view']}]: {groups}")
    sp = labels["second_pass"]
    print(f"labels' own agreement (second pass, {sp['items']} items): three-way kappa {sp['three_way_kappa']:.3f}")
    path = write_results(args.name, {"labels": labels, "rows": rows, "scores": scores})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
