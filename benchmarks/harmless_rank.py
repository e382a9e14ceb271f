"""Would ranking trials on broad harmless prompts predict the guard's harmless figure? For every
trial a tune confirmed (the references included, as `cheap_scores.py` counts them), the cheap
harmless scores it ranked on (the 16 harmless ranking prompts, written like the fit's training
prompts) beside the same scores on half of the broad harmless confirmation set
(`builtin:harmless_styles:val`, eight styles of ordinary request), against the trial's confirmed
harmless refusal on the other half (read from the verdicts the tune saved per prompt, so disjoint
from every score). Spearman rank correlations across the trials, pooled and per tune, as
`cheap_scores.py` gives them.

The guard bounds harmless refusal on the broad set, but the search never sees it: a score that
predicts it from a ranking sample of the same styles could steer the search away from trials the
guard will reject.

Run: .venv/bin/python benchmarks/harmless_rank.py tuned-0 tuned-1 --name harmless_rank_qwen1.5b
(rosi tune output folders with their trials/ records, of one model, made with --confirm-harmless
at its default; writes benchmarks/results/NAME.json and prints the table)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _common import add_name, write_results
from rosi.metrics import spearman
from rosi.workflows.tune.analysis import confirmed, rho_text
from rosi.workflows.tune.report import TuneReport, trial_record_path

# the cheap scores compared: (name, where it comes from)
SCORES = (
    ("narrow_refusal", "the tune's own: short-reply refusal on its 16 harmless ranking prompts"),
    ("narrow_kl", "the tune's own: first-token KL on the same prompts"),
    ("broad_refusal", "short-reply refusal on the broad ranking half"),
    ("broad_log_odds", "mean first-token log-odds of refusing on the broad ranking half"),
    ("broad_kl", "first-token KL on the broad ranking half"),
)


def target_indices(confirm: list[str], target: list[str], head: int) -> list[int]:
    """Where each prompt of ``target`` (a part of the confirmation set ``confirm``) sits in the
    tune's saved harmless verdicts: after the ``head`` prompts of the harmless validation half."""
    where = {text: i for i, text in enumerate(confirm)}
    if len(where) != len(confirm):
        raise ValueError("the confirmation set repeats a prompt: its verdicts cannot be told apart")
    return [head + where[text] for text in target]


def target_rate(refused: list[bool], indices: list[int]) -> float:
    """The refusal rate over the saved verdicts at ``indices``."""
    return sum(bool(refused[i]) for i in indices) / len(indices)


def table(rows: list[dict]) -> dict[str, dict[str, object]]:
    """Per score: Spearman against the target over ``rows``."""
    y = [r["target"] for r in rows]
    return {name: {"spearman": spearman([r[name] for r in rows], y), "n": len(rows)} for name, _ in SCORES}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("outs", nargs="+", help="rosi tune output folders (one model)")
    parser.add_argument("--confirm-harmless", default="builtin:harmless_styles:val", help="the set the tunes confirmed on")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dtype", default="bfloat16")
    add_name(parser, __file__)
    args = parser.parse_args()

    from rosi import EditRecord, apply_record, load, revert_edit
    from rosi.direction.score import refusal_log_odds, refusal_token_ids
    from rosi.edit.strength import SEARCH_TOKENS
    from rosi.measure import RefusalMeter
    from rosi.metrics import kl_divergence
    from rosi.prompts import load_prompts

    reports = {o: TuneReport.load(o) for o in args.outs}
    models = {r.model for r in reports.values()}
    if len(models) != 1:
        raise SystemExit(f"harmless_rank.py: the tunes edited different models ({', '.join(sorted(models))}); give one model's tunes")
    confirm = load_prompts(args.confirm_harmless)
    rank, target = confirm.halves()
    loaded = load(models.pop(), device="cpu", dtype=args.dtype)
    meter = RefusalMeter(loaded, None, batch_size=args.batch_size)
    ids = refusal_token_ids(loaded.tokenizer)
    _, base_lp = meter.rate_and_logprobs(rank, SEARCH_TOKENS, share_prefix=True)
    rows: list[dict] = []
    for out, report in reports.items():
        for trial in confirmed(report):
            assert trial.confirmed is not None and trial.confirmed.refused is not None, "a confirmed trial keeps its verdicts"
            refused = trial.confirmed.refused["harmless"]
            head = len(refused) - len(confirm)
            if head < 0:
                raise SystemExit(f"harmless_rank.py: {out} confirmed on fewer harmless prompts than {args.confirm_harmless} holds")
            started = time.perf_counter()
            record = apply_record(loaded.model, EditRecord.load(trial_record_path(Path(out), trial.number)))
            rate, lp = meter.rate_and_logprobs(rank, SEARCH_TOKENS, share_prefix=True)
            revert_edit(loaded.model, record)
            row = {
                "tune": out,
                "number": trial.number,
                "params": trial.params,
                "narrow_refusal": trial.cheap.harmless,
                "narrow_kl": trial.cheap.kl,
                "broad_refusal": rate.value,
                "broad_log_odds": float(refusal_log_odds(lp, ids).mean()),
                "broad_kl": float(kl_divergence(base_lp, lp).mean()),
                "target": target_rate(refused, target_indices(confirm.instructions, target.instructions, head)),
                "seconds": round(time.perf_counter() - started, 1),
            }
            rows.append(row)
            print(
                f"{Path(out).name} trial {row['number']:>3}: narrow {row['narrow_refusal']:5.1%}, broad {row['broad_refusal']:5.1%} "
                f"(log-odds {row['broad_log_odds']:+.2f}, KL {row['broad_kl']:.3f}), confirmed on the other half {row['target']:5.1%}"
            )
    pooled = table(rows)
    per_tune = {o: table([r for r in rows if r["tune"] == o]) for o in reports}
    print(f"\nSpearman against confirmed harmless refusal on the broad target half ({len(target)} prompts), {len(rows)} trials:")
    for name, what in SCORES:
        cells = " ".join(f"{rho_text(per_tune[o][name]['spearman']):>8}" for o in reports)
        print(f"  {name:16} pooled {rho_text(pooled[name]['spearman']):>6}   per tune {cells}   ({what})")
    path = write_results(
        args.name,
        {
            "tunes": list(args.outs),
            "confirm_harmless": args.confirm_harmless,
            "n_rank": len(rank),
            "n_target": len(target),
            "search_tokens": SEARCH_TOKENS,
            "scores": dict(SCORES),
            "pooled": pooled,
            "per_tune": per_tune,
            "trials": rows,
        },
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
