"""``rosi tune``: search edit forms, layers, scopes and strengths on validation prompts and save
the trial the pick rule keeps (the fourth command that builds an edit, beside :mod:`rosi.cli.build`)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from rosi.cli.build import checked_judge, checked_output, extract_options, measure_output_options, prompt_sets
from rosi.cli.common import float_in, format_args, generation_batch_arg, int_at_least, judge_arg, judge_note, model_args, prompt_args
from rosi.cli.sources import inputs, load
from rosi.edit.methods import DEFAULT_METHOD, DEFAULT_RATIO, GATE_RIDGE
from rosi.judges import SEARCH_TOKENS
from rosi.workflows.options import MAX_SEED, TuneOptions


def pick_rule(floor: float | str | None) -> str:
    """Which confirmed trial ``rosi tune`` saves under ``--min-harmful floor`` (see ``pick`` in rosi.workflows.tune)."""
    if floor is None:
        return "the confirmed trial with the most harmful refusal within the constraints"
    reach = f"at least {floor:.0%} of the" if not isinstance(floor, str) else "at least as many"
    like = "" if not isinstance(floor, str) else " as rosi run's default edit" if floor == "default" else f" as the {floor} reference trial"
    return f"of the confirmed trials refusing {reach} harmful validation prompts{like}, the one with the least look-alike rise within the constraints"


GUARD_RULE = (
    "each validation set is split into a ranking part and a confirmation part that never ranks; a confirmed trial is saved "
    "only when, paired prompt by prompt on the confirmation part with rosi run's default edit, it refuses fewer look-alikes "
    "with a 95% interval that excludes zero, at most --guard fewer harmful prompts and a harmless rise whose upper bound is at "
    "most --guard (of those, the largest look-alike drop); when none does, rosi run's default edit is saved and the report says so"
)
TUNE_DESCRIPTION = (
    "A multi-objective search (Optuna, seeded, journaled: an interrupted tune resumes) on validation prompts only: "
    "harmful refusal up; harmless refusal rise, look-alike refusal rise and first-token KL down. Cheap scores "
    f"({SEARCH_TOKENS}-token replies by default) for every trial, full replies to confirm the Pareto front, both judged by --judge. "
    f"By default (--guard {TuneOptions.guard}), {GUARD_RULE}. With --guard none, {pick_rule(TuneOptions.min_harmful)} "
    f"(--min-harmful {TuneOptions.min_harmful}) is saved. The edit is saved like rosi run's, "
    "with the front (tune_front.csv, tune_front.png) and tune_report.json."
)


def guard_margin(text: str) -> float | None:
    """``rosi tune --guard``: a share between 0 and 1, or ``none``."""
    if text == "none":
        return None
    try:
        return float_in(0, 1)(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be a share between 0 and 1 (0.03 = 3 points) or none, got {text!r}") from None


def harmful_floor(text: str) -> float | str | None:
    """``rosi tune --min-harmful``: a reference trial's name, ``none``, or a share."""
    from rosi.workflows.options import TUNE_FLOORS

    if text in TUNE_FLOORS:
        return text
    if text == "none":
        return None
    try:
        return float_in(0, 1)(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be {', '.join(TUNE_FLOORS)}, none or a share between 0 and 1, got {text!r}") from None


def seed(text: str) -> int:
    """``rosi tune --seed``: the sampler's (numpy's) seed, 0 to 2**32 - 1."""
    if not text.strip().isdigit() or int(text) > MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be a whole number from 0 to {MAX_SEED}, got {text!r}")
    return int(text)


def tune_args(p: argparse.ArgumentParser) -> None:
    from rosi.workflows.options import TUNE_N_VAL_LOOKALIKE

    d = TuneOptions()
    model_args(p, compute=True)
    p.add_argument("--out", required=True, metavar="DIR", help="output checkpoint folder of the chosen trial (must not exist)")
    _tune_search_args(p.add_argument_group("search"), d)
    _tune_constraint_args(p.add_argument_group("constraints on the chosen trial (validation prompts, full replies)"), d)
    p.add_argument(
        "--max-new-tokens", type=int_at_least(1), default=d.measure.new_tokens, help="reply length when confirming (default: %(default)s)"
    )
    generation_batch_arg(p)
    judge_arg(p, "every refusal measured (the trials' cheap scores with --score replies, the confirmed front)")
    prompt_args(p)
    g = p.add_argument_group("harder harmful prompts (added to --harmful and --val-harmful; 'none' leaves them out)")
    g.add_argument("--harmful-hard", default="builtin:harmful_hard:train", metavar="SPEC", help="(default: %(default)s)")
    g.add_argument("--val-harmful-hard", default="builtin:harmful_hard:val", metavar="SPEC", help="(default: %(default)s)")
    p.add_argument(
        "--confirm-harmless",
        default="builtin:harmless_styles:val",
        metavar="SPEC",
        help="with --guard: more harmless prompts, ordinary requests of many styles: --rank-harmless of one half join the "
        "ranking part (the search sees them), the other half the confirmation part, so the guard bounds the harmless rise "
        "on prompts that never ranked; 'none' leaves them out (default: %(default)s)",
    )
    p.add_argument(
        "--rank-harmless",
        type=int_at_least(0),
        default=TuneOptions.rank_harmless,
        metavar="N",
        help="how many --confirm-harmless prompts (spread over their styles) rank trials; 0: they only confirm (default: %(default)s)",
    )
    p.add_argument(
        "--n-val-lookalike",
        type=int_at_least(1),
        default=TUNE_N_VAL_LOOKALIKE,
        help="look-alike validation prompts measured, spread over their kinds (default: %(default)s: 5 of each built-in kind)",
    )
    format_args(p)
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(method="surgical", scope="all", writer_ratio=DEFAULT_RATIO, ridge=GATE_RIDGE, null_space=None)


def _tune_search_args(g: Any, d: TuneOptions) -> None:
    from rosi.workflows.options import TUNE_FORMS, TUNE_SCORES

    g.add_argument("--trials", type=int_at_least(1), default=d.trials, help="trials to run (default: %(default)s)")
    g.add_argument("--seed", type=seed, default=d.seed, help=f"the sampler's seed, 0 to {MAX_SEED} (default: %(default)s)")
    g.add_argument(
        "--forms",
        default=",".join(d.forms),
        help=f"edit forms searched, comma-separated, of {', '.join(TUNE_FORMS)}; rosi run's default ({DEFAULT_METHOD}) and the paper's "
        "form (rosi) are measured in every tune as references (default: %(default)s)",
    )
    g.add_argument(
        "--layer-window",
        type=int_at_least(0),
        default=d.layer_window,
        help="layers searched either side of the selected one (default: %(default)s)",
    )
    g.add_argument(
        "--score",
        choices=TUNE_SCORES,
        default=d.score,
        help=f"the trials' cheap score: --judge on {SEARCH_TOKENS}-token replies, or first-token refusal log-odds > 0 "
        "(one forward pass, but a poor proxy on some models) (default: %(default)s)",
    )
    g.add_argument(
        "--confirm", type=int_at_least(0), default=d.confirm, help="front trials confirmed on full replies (default: %(default)s)"
    )
    g.add_argument(
        "--journal", default=None, metavar="FILE", help="the study's journal (default: OUT.rosi-tune.journal, removed when done)"
    )


def _tune_constraint_args(c: Any, d: TuneOptions) -> None:
    c.add_argument("--max-harmless-rise", type=float_in(0, 1), default=d.max_harmless_rise, help="(default: %(default)s)")
    c.add_argument("--max-lookalike-rise", type=float_in(0, 1), default=d.max_lookalike_rise, help="(default: %(default)s)")
    c.add_argument(
        "--max-kl", type=float_in(0), default=d.max_kl, help="mean first-token KL on harmless prompts, nats (default: %(default)s)"
    )
    c.add_argument(
        "--min-harmful",
        type=harmful_floor,
        default=d.min_harmful,
        metavar="{default,paper,none,SHARE}",
        help="with --guard none: the harmful refusal the chosen trial must reach: as much as rosi run's default edit, the "
        "paper's form, or a share (0.9); of those, the least look-alike rise is kept. 'none': the most harmful refusal within the "
        "constraints. Also orders which front trials are confirmed (default: %(default)s)",
    )
    c.add_argument(
        "--guard",
        type=guard_margin,
        default=d.guard,
        metavar="{MARGIN,none}",
        help="the pick that accounts for noise: a trial beats rosi run's default edit on the confirmation prompts or the default "
        "is kept; MARGIN bounds the harmful loss and the harmless rise (0.03 = 3 points); none: the --min-harmful rule "
        "(default: %(default)s)",
    )


def _tune_options(args: argparse.Namespace, fmt: str, judge: Any = None) -> Any:
    return TuneOptions(
        extract=extract_options(args),
        trials=args.trials,
        seed=args.seed,
        forms=_forms(args),
        layer_window=args.layer_window,
        score=args.score,
        confirm=args.confirm,
        max_harmless_rise=args.max_harmless_rise,
        max_lookalike_rise=args.max_lookalike_rise,
        max_kl=args.max_kl,
        min_harmful=args.min_harmful,
        guard=args.guard,
        rank_harmless=args.rank_harmless,
        journal=Path(args.journal) if args.journal else None,
        **measure_output_options(args, fmt, judge),
    )


def _forms(args: argparse.Namespace) -> tuple[str, ...]:
    return tuple(f.strip() for f in args.forms.split(",") if f.strip())


def _tune_prompts(args: argparse.Namespace) -> tuple[Any, Any, Any, Any]:
    """The prompt sets of a tune (its look-alikes spread over their kinds), the harder harmful ones
    and the extra harmless confirmation prompts."""
    from dataclasses import replace

    from rosi.prompts import load_prompts

    def hard(spec: str, n: int | None) -> Any:
        if spec.lower() == "none":
            return None
        prompts = load_prompts(spec)
        return prompts.take(None if n is None else min(n, len(prompts)))

    prompts = prompt_sets(args)
    prompts.need_lookalikes("rosi tune")
    lookalikes = load_prompts(args.val_lookalike)
    prompts = replace(prompts, val_lookalike=lookalikes.spread(min(args.n_val_lookalike, len(lookalikes))))
    extra = None if args.guard is None else hard(args.confirm_harmless, None)
    return prompts, hard(args.harmful_hard, args.n_train), hard(args.val_harmful_hard, args.n_val), extra


def cmd_tune(args: argparse.Namespace) -> int:
    from rosi.workflows.tune import check_tune, tune

    fmt = checked_output(args, _forms(args), "--forms")
    options = _tune_options(args, fmt, checked_judge(args))
    check_tune(args.model, inputs(args), Path(args.out), options)  # the seed, the journal: before the model loads
    prompts, hard_train, hard_val, confirm_harmless = _tune_prompts(args)
    loaded = load(args, compute=True)
    started = time.perf_counter()
    report = tune(loaded, args.out, prompts, options, hard_train=hard_train, hard_val=hard_val, confirm_harmless=confirm_harmless)
    print()
    print(f"Refusal on validation prompts ({options.measure.new_tokens} new tokens, {judge_note(args.judge)}): {report.chosen_by}")
    print(report.table())
    print()
    print(
        f"rosi: saved {args.out} ({fmt}; trial {report.chosen}) in {time.perf_counter() - started:.0f} s; front in {args.out}/tune_front.csv"
    )
    return 0
