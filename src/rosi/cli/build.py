"""The commands that build an edit: ``rosi direction``, ``rosi run`` and ``rosi realign`` (``rosi
tune``, the fourth, is in :mod:`rosi.cli.tune`), and the options they share."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rosi.cli.common import (
    edit_form_args,
    float_in,
    format_args,
    generation_batch_arg,
    int_at_least,
    judge_arg,
    judge_note,
    model_args,
    prompt_args,
)
from rosi.cli.sources import inputs, load, text_or_file
from rosi.judges import DEFAULT_NEW_TOKENS
from rosi.workflows.options import DEFAULT_BUDGET, REALIGN_BUDGET, REALIGN_FORM

REALIGN_DESCRIPTION = (
    "Re-align an uncensored model. If a direction was ablated from every residual writer (found in the weights), re-add it; "
    "otherwise extract the refusal direction under a safety system prompt. Either way the edit (by default "
    f"{REALIGN_FORM.method}, its read-out fit with ridge {REALIGN_FORM.ridge:g} and kept off the benign inputs' principal subspace "
    f"holding {REALIGN_FORM.null_space:.0%} of their energy; strength searched within a {REALIGN_BUDGET:.0%} harmless budget) "
    "is searched, measured and used without any system prompt."
)
REALIGN_METHOD_NOTE = (
    f"with --ridge {REALIGN_FORM.ridge:g} and --null-space {REALIGN_FORM.null_space}: the form measured for uncensored models"
)


def prompt_sets(args: argparse.Namespace) -> Any:
    """The prompt sets the flags of :func:`~rosi.cli.common.prompt_args` name."""
    from rosi.prompts import PromptSets

    return PromptSets.load(
        args.harmful,
        args.harmless,
        args.val_harmful,
        args.val_harmless,
        lookalike=args.lookalike,
        val_lookalike=args.val_lookalike,
        n_train=args.n_train,
        n_val=args.n_val,
    )


def extract_options(args: argparse.Namespace, **extra: Any) -> Any:
    """The extraction options the flags of :func:`~rosi.cli.common.edit_form_args` and
    :func:`~rosi.cli.common.prompt_args` give (``extra``: the fields only that command sets)."""
    from rosi.edit.methods import EditForm
    from rosi.workflows.options import ExtractOptions

    return ExtractOptions(
        form=EditForm(
            args.method,
            args.scope,
            args.writer_ratio,
            ridge=args.ridge,
            null_space=args.null_space,
            tokens=getattr(args, "fit_tokens", False),
            read=getattr(args, "read", "decide"),
        ),
        system_prompt=text_or_file(args.system_prompt),
        layer=args.layer,
        position=args.position,
        batch_size=args.batch_size,
        **extra,
    )


def measure_output_options(args: argparse.Namespace, fmt: str, judge: Any = None) -> dict[str, Any]:
    """The measurement and output parts every workflow's options have (``judge``: the judge
    :func:`checked_judge` built, else the --judge spec)."""
    from rosi.workflows.options import MeasureOptions, OutputOptions

    return {
        "measure": MeasureOptions(new_tokens=args.max_new_tokens, judge=judge or args.judge, generation_batch=args.generation_batch),
        "output": OutputOptions(format=fmt, gguf_type=args.gguf_type, overwrite=args.overwrite),
    }


def checked_output(args: argparse.Namespace, forms: Sequence[str] | None = None, option: str = "--method") -> str:
    """The output format, after checking --out and the format against the model and the edit forms
    (``forms`` given as ``option``; default: --method), before any prompt or model is loaded."""
    from rosi.export.formats import check_format_output, check_format_source, default_format

    fmt: str = args.format or default_format(args.model, Path(args.out))
    check_format_output(Path(args.out), fmt, args.overwrite, protect=inputs(args))
    check_format_source(fmt, args.model, [args.method] if forms is None else forms, option, args.gguf_type)
    return fmt


def checked_judge(args: argparse.Namespace) -> Any:
    """The judge --judge names, built and checked once, before any prompt or model is loaded (a
    judge server is asked here and nowhere else); the workflow takes it as it is. A local Llama
    Guard stays its spec: its weights are loaded when the workflow starts."""
    from rosi.measure import check_judge

    return check_judge(args.judge) or args.judge


def direction_args(p: argparse.ArgumentParser) -> None:
    model_args(p, compute=True)
    p.add_argument("--out", required=True, metavar="FILE", help="direction file to write (.safetensors); the score table goes beside it")
    edit_form_args(p, for_direction=True)
    prompt_args(p)
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def run_args(p: argparse.ArgumentParser, method_note: str = "the best measured trade-off") -> None:
    model_args(p, compute=True)
    p.add_argument("--out", required=True, metavar="DIR", help="output checkpoint folder (must not exist)")
    edit_form_args(p, method_note=method_note)
    p.add_argument("--alpha", type=float_in(0), default=None, help="strength (default: chosen on the validation prompts)")
    p.add_argument(
        "--compare",
        action="store_true",
        help="also search and measure the paper's rosi form (every writer) beside the edit, as a reference row (about a third more time)",
    )
    p.add_argument("--no-compare", action="store_true", help=argparse.SUPPRESS)  # the default since the paper's form became opt-in
    p.add_argument(
        "--budget",
        type=float_in(0, 1),
        default=DEFAULT_BUDGET,
        help="allowed rise of harmless refusal while searching the strength (default: %(default)s)",
    )
    p.add_argument(
        "--bisect",
        type=int_at_least(0),
        default=0,
        metavar="N",
        help="after the strength grid, try N midpoints between the best strength and the next one tried above it (past the budget, or refusing less) "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--max-new-tokens",
        type=int_at_least(1),
        default=DEFAULT_NEW_TOKENS,
        help="tokens generated per reply when measuring refusal (default: %(default)s)",
    )
    generation_batch_arg(p)
    judge_arg(p, "every refusal measured (the strength search and the validation table)")
    prompt_args(p)
    format_args(p)
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def _is_scores_file(path: Path) -> bool:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"cost", "candidates"} <= set(data)


def cmd_direction(args: argparse.Namespace) -> int:
    from rosi._fs import atomic_file, check_output
    from rosi.direction.vector import is_direction_file
    from rosi.workflows.extract import extract
    from rosi.workflows.run import check_prompts_fit

    out = Path(args.out)
    scores = out.with_suffix(".scores.json")
    protect = inputs(args)
    check_output(out, args.overwrite, protect=protect, owned=is_direction_file, what="direction file", file_name="direction.safetensors")
    check_output(scores, args.overwrite, protect=protect, owned=_is_scores_file, what="score table")
    options = extract_options(args)
    prompts = prompt_sets(args)
    loaded = load(args, compute=True)
    check_prompts_fit(loaded, prompts, options.system_prompt, 0)
    result = extract(loaded, prompts, options)
    if result.selection is not None:
        with atomic_file(scores) as tmp:
            tmp.write_text(json.dumps({"cost": result.selection.cost.to_json(), "candidates": result.selection.table()}, indent=2) + "\n")
        print(f"rosi: selection cost {result.selection.cost.to_json()}; all candidate scores in {scores}")
    result.direction.save(out)
    d = result.direction
    print(
        f"rosi: direction at layer {d.layer}, position {d.position} ({d.metadata['token']!r}), norm {d.vector.norm():.2f}; wrote {out} in {result.seconds:.0f} s"
    )
    return 0


def _strength_options(args: argparse.Namespace) -> Any:
    """How ``rosi run`` and ``rosi realign`` choose the strength."""
    from rosi.workflows.options import StrengthOptions, realign_strength

    make = realign_strength if args.command == "realign" else StrengthOptions
    return make(strength=args.alpha, compare_paper=args.compare, budget=args.budget, bisect=args.bisect)


def run_options(args: argparse.Namespace, fmt: str, judge: Any = None) -> Any:
    from rosi.workflows.options import RunOptions

    return RunOptions(extract=extract_options(args), strength=_strength_options(args), **measure_output_options(args, fmt, judge))


def cmd_run(args: argparse.Namespace) -> int:
    from rosi.workflows.run import run

    return _build(args, run_options, run)


def _build(args: argparse.Namespace, options_of: Any, workflow: Any) -> int:
    """``rosi run`` and ``rosi realign``: everything checked, the prompts loaded, then the model,
    then the workflow; its validation table and phases printed."""
    fmt = checked_output(args)
    options = options_of(args, fmt, checked_judge(args))
    prompts = prompt_sets(args)
    loaded = load(args, compute=True)
    started = time.perf_counter()
    report = workflow(loaded, args.out, prompts, options)
    _print_run(args, prompts, report, fmt, started)
    return 0


def _print_run(args: argparse.Namespace, prompts: Any, report: Any, fmt: str, started: float) -> None:
    print()
    print(f"Refusal on validation prompts, {prompts.validation_note()} ({report.new_tokens} new tokens, {judge_note(args.judge)}):")
    print(report.table())
    print()
    print(report.phase_table())
    print()
    print(
        f"rosi: saved {args.out} ({fmt}; {report.method}, strength {report.strength:g}) in {time.perf_counter() - started:.0f} s; report in "
        + (f"{args.out}/rosi_report.json" if Path(args.out).is_dir() else f"{args.out}.report.json")
    )


def realign_args(p: argparse.ArgumentParser) -> None:
    from rosi.prompts.system import DEFAULT_SYSTEM_PROMPT, SYSTEM_PROMPTS
    from rosi.workflows.options import DIRECTION_SOURCES, REALIGN_BISECT, REALIGN_HARMFUL, REALIGN_HARMLESS, REALIGN_N_VAL

    run_args(p, method_note=REALIGN_METHOD_NOTE)
    p.add_argument(
        "--direction",
        choices=DIRECTION_SOURCES,
        default="auto",
        help="null: re-add the direction ablated from every writer; extracted: extract one under the system prompt; "
        "auto: null where the weights show an ablation (default: %(default)s)",
    )
    p.add_argument(
        "--score-with-system-prompt",
        action="store_true",
        help="score the candidate directions and fit the read-outs with the system prompt in the context (default: without it)",
    )
    p.set_defaults(
        method=REALIGN_FORM.method,
        scope=REALIGN_FORM.scope,
        writer_ratio=REALIGN_FORM.ratio,
        ridge=REALIGN_FORM.ridge,
        null_space=REALIGN_FORM.null_space,
        budget=REALIGN_BUDGET,
        bisect=REALIGN_BISECT,
        system_prompt=f"builtin:{DEFAULT_SYSTEM_PROMPT}",
        n_val=REALIGN_N_VAL,
        harmful=REALIGN_HARMFUL,
        harmless=REALIGN_HARMLESS,
    )
    actions = {a.dest: a for a in p._actions}  # the run arguments whose help differs here
    every = "all of them: the budget needs the harmless ones' resolution"
    actions["n_val"].help = f"use N prompts of each validation set (default: {every if REALIGN_N_VAL is None else REALIGN_N_VAL})"
    actions["harmful"].help = "harmful prompts for extraction and the read-out's fit, in five styles (default: %(default)s)"
    actions["harmless"].help = "harmless prompts for extraction and the read-out's fit, in nine styles (default: %(default)s)"
    actions["system_prompt"].help = (
        "safety system prompt for extraction only: TEXT, a FILE, or one of "
        + ", ".join(f"builtin:{n}" for n in SYSTEM_PROMPTS)
        + " (default: %(default)s)"
    )


def realign_options(args: argparse.Namespace, fmt: str, judge: Any = None) -> Any:
    from rosi.workflows.options import RealignOptions

    return RealignOptions(
        extract=extract_options(args, score_with_system_prompt=args.score_with_system_prompt),
        strength=_strength_options(args),
        direction=args.direction,
        **measure_output_options(args, fmt, judge),
    )


def cmd_realign(args: argparse.Namespace) -> int:
    from rosi.workflows.realign import realign

    return _build(args, realign_options, realign)
