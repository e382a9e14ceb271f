"""Every command's help says its real defaults: the values are read from the library, not retyped,
and the defaults the parser gives are the library's own options. In-process: no subprocess."""

from __future__ import annotations

import argparse
import inspect
from dataclasses import fields, replace

import pytest

from rosi.cli import COMMANDS, build_parser
from rosi.cli.build import realign_options, run_options
from rosi.cli.tune import _tune_options
from rosi.edit.methods import DEFAULT_METHOD, DEFAULT_RATIO, DEFAULT_SCOPE, GATE_RIDGE, METHODS
from rosi.judges import DEFAULT_NEW_TOKENS, JUDGES
from rosi.model.writers import DEFAULT_TARGETS
from rosi.prompts import DEFAULT_N_VAL
from rosi.workflows.options import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_BUDGET,
    REALIGN_BISECT,
    REALIGN_BUDGET,
    REALIGN_FORM,
    TUNE_N_VAL_LOOKALIKE,
    RealignOptions,
    RunOptions,
    TuneOptions,
)


@pytest.fixture(autouse=True)
def _unwrapped(monkeypatch):
    """One line per help text (argparse wraps at $COLUMNS, and breaks words at hyphens)."""
    monkeypatch.setenv("COLUMNS", "100000")


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def _help(name: str) -> str:
    return " ".join(_subparser(name).format_help().split())


def _flag(name: str, flag: str) -> str:
    """The help of one flag of a command: its line, and the next one where argparse puts the help
    of a long flag."""
    lines = _subparser(name).format_help().splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip().startswith(flag + " ") or line.strip() == flag)
    text = [lines[at]] + [line for line in lines[at + 1 : at + 2] if line.startswith(" " * 10)]
    return " ".join(" ".join(text).split())


def _defaults(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def test_every_command_has_help_and_a_description(capsys):
    parser = build_parser()
    top = " ".join(parser.format_help().split())
    for command in COMMANDS:
        assert command.name in top and command.help in top
        with pytest.raises(SystemExit) as done:
            parser.parse_args([command.name, "--help"])
        assert done.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: rosi {command.name}")


def test_judges_are_listed_wherever_a_judge_is_taken():
    for name in ("run", "tune", "realign", "eval"):
        judge = _flag(name, "--judge SPEC")
        for registered, cls in JUDGES.items():
            assert (f"{registered}:{cls.argument}" if cls.argument else registered) in judge, (name, registered)
        assert "(default: markers)" in judge and RunOptions().measure.judge == "markers"


def test_run_help_names_its_defaults():
    text = _help("run")
    assert f"(default: {DEFAULT_METHOD}, the best measured trade-off)" in text
    assert f"--budget BUDGET allowed rise of harmless refusal while searching the strength (default: {DEFAULT_BUDGET})" in text
    assert f"(default: {DEFAULT_SCOPE})" in _flag("run", "--scope {selective,all}")
    assert f"(default: {DEFAULT_RATIO})" in _flag("run", "--writer-ratio R")
    assert f"(default: {GATE_RIDGE})" in _flag("run", "--ridge RIDGE")
    assert f"(default: {DEFAULT_NEW_TOKENS})" in _flag("run", "--max-new-tokens MAX_NEW_TOKENS")
    assert f"(default: {DEFAULT_N_VAL})" in _flag("run", "--n-val N_VAL")
    assert f"(default: {DEFAULT_BATCH_SIZE})" in _flag("run", "--batch-size BATCH_SIZE")
    assert "(default: 0)" in _flag("run", "--bisect N") and RunOptions().strength.bisect == 0


def test_run_flags_default_to_the_library_options():
    args = _defaults(["run", "MODEL", "--out", "OUT"])
    assert run_options(args, "checkpoint") == RunOptions()


def test_tune_help_names_its_defaults_and_its_pick_rule():
    from rosi.edit.strength import SEARCH_TOKENS
    from rosi.prompts import load_prompts
    from rosi.workflows.tune.space import REFERENCES

    d = TuneOptions()
    text = _help("tune")
    for flag, value in (
        ("--trials TRIALS", d.trials),
        ("--seed SEED", d.seed),
        ("--forms FORMS", ",".join(d.forms)),
        ("--confirm CONFIRM", d.confirm),
        ("--layer-window LAYER_WINDOW", d.layer_window),
        ("--score {first-token,replies}", d.score),
        ("--max-harmless-rise MAX_HARMLESS_RISE", d.max_harmless_rise),
        ("--max-lookalike-rise MAX_LOOKALIKE_RISE", d.max_lookalike_rise),
        ("--max-kl MAX_KL", d.max_kl),
        ("--min-harmful {default,paper,none,SHARE}", d.min_harmful),
        ("--max-new-tokens MAX_NEW_TOKENS", d.measure.new_tokens),
        ("--n-val-lookalike N_VAL_LOOKALIKE", TUNE_N_VAL_LOOKALIKE),
    ):
        assert f"(default: {value}" in _flag("tune", flag), flag
    # the default pick rule (guard), as rosi.workflows.tune.pick.guarded_pick applies it, and the rule of --guard none
    assert d.guard is not None and f"(default: {d.guard})" in _flag("tune", "--guard {MARGIN,none}")
    assert f"By default (--guard {d.guard}), each validation set is split into a ranking part and a confirmation part" in text
    assert "when none does, rosi run's default edit is saved and the report says so" in text
    assert d.min_harmful == "default"
    assert (
        "With --guard none, of the confirmed trials refusing at least as many harmful validation prompts as rosi run's default "
        "edit, the one with the least look-alike rise within the constraints (--min-harmful default) is saved"
    ) in text
    assert "the trial with the most harmful refusal within the constraints is saved" not in text
    # the references and the cheap score, as the search has them
    assert REFERENCES["default"]["form"] == DEFAULT_METHOD and f"rosi run's default ({DEFAULT_METHOD})" in text
    assert REFERENCES["paper"]["form"] == "rosi" and "the paper's form (rosi)" in text
    assert f"({SEARCH_TOKENS}-token replies by default)" in text and f"--judge on {SEARCH_TOKENS}-token replies" in text
    kinds = len(set(load_prompts("builtin:lookalike:val").categories or ()))
    assert TUNE_N_VAL_LOOKALIKE % kinds == 0 and f"{TUNE_N_VAL_LOOKALIKE // kinds} of each built-in kind" in text


def test_tune_flags_default_to_the_library_options():
    options = _tune_options(_defaults(["tune", "MODEL", "--out", "OUT"]), "checkpoint")
    library = TuneOptions()
    for f in fields(TuneOptions):
        if f.name == "extract":  # tune searches the forms; its extraction form only names what the fits read
            assert replace(options.extract, form=library.extract.form) == library.extract
        else:
            assert getattr(options, f.name) == getattr(library, f.name), f.name


def test_realign_help_names_its_defaults():
    from rosi.prompts.system import DEFAULT_SYSTEM_PROMPT

    text = _help("realign")
    assert "probe edit" not in text
    assert f"(default: {REALIGN_FORM.method}, with --ridge {REALIGN_FORM.ridge:g} and --null-space {REALIGN_FORM.null_space}" in text
    assert f"by default {REALIGN_FORM.method}," in text and f"{REALIGN_FORM.null_space:.0%} of their energy" in text
    assert f"(default: {REALIGN_FORM.ridge})" in _flag("realign", "--ridge RIDGE")
    assert f"default: {REALIGN_FORM.null_space})" in _flag("realign", "--null-space ENERGY")
    assert f"(default: {REALIGN_BUDGET})" in _flag("realign", "--budget BUDGET")
    assert f"(default: {REALIGN_BISECT})" in _flag("realign", "--bisect N")
    assert f"(default: builtin:{DEFAULT_SYSTEM_PROMPT})" in _flag("realign", "--system-prompt TEXT|FILE")
    assert "(default: all of them" in _flag("realign", "--n-val N_VAL") and RealignOptions().strength.grid is not None


def test_realign_flags_default_to_the_library_options():
    assert realign_options(_defaults(["realign", "MODEL", "--out", "OUT"]), "checkpoint") == RealignOptions()


def test_realign_fits_on_the_many_styles_sets_its_library_default_loads():
    """The CLI's prompt flags load exactly :func:`realign_prompts`: harmful and harmless requests of
    many styles for the fit (rosi run keeps its own sets), every validation prompt."""
    from rosi.cli.build import prompt_sets
    from rosi.workflows.realign import realign_prompts

    args = _defaults(["realign", "MODEL", "--out", "OUT"])
    assert prompt_sets(args) == realign_prompts()
    assert (args.harmful, args.harmless) == ("builtin:harmful+harmful_styles:train", "builtin:harmless+harmless_styles:train")
    assert "(default: builtin:harmful+harmful_styles:train)" in " ".join(_flag("realign", "--harmful SPEC").split())
    styles = {c.rsplit("/", 1)[-1] for c in realign_prompts().harmful.categories if "/" in c}
    assert styles == {"question", "multipart", "persuasive", "fiction"}
    assert _defaults(["run", "MODEL", "--out", "OUT"]).harmful == "builtin:harmful:train"


def test_eval_help_names_its_defaults():
    from rosi.eval.evaluate import EvalOptions

    library = EvalOptions()
    args = _defaults(["eval", "MODEL", "--out", "OUT"])
    assert args.judge == library.judge and args.suite == library.suite and args.batch_size == library.batch_size
    assert f"(default: {library.judge})" in _flag("eval", "--judge SPEC")
    assert f"(default: {library.suite};" in _help("eval")
    assert f"(default: the suite's, {DEFAULT_NEW_TOKENS})" in _flag("eval", "--max-new-tokens MAX_NEW_TOKENS")


def test_edit_direction_and_chat_help_name_their_defaults():
    text = _help("edit")
    assert f"(default: {','.join(DEFAULT_TARGETS)})" in text and "(default: rosi, the paper's Eq. 6)" in text
    for name, method in METHODS.items():
        if method.default_strength is not None:
            assert f"{name} defaults to {method.default_strength:g}" in text
    assert f"(default: {DEFAULT_METHOD}, the best measured trade-off)" in _help("direction")
    from rosi.model.chat_session import chat

    default = inspect.signature(chat).parameters["max_new_tokens"].default
    assert f"(default: {default})" in _flag("chat", "--max-new-tokens MAX_NEW_TOKENS")
    assert _defaults(["chat", "MODEL"]).max_new_tokens == default


def test_dtype_help_says_which_commands_compute_in_bfloat16():
    for name in ("direction", "run", "tune", "realign", "eval", "chat"):
        assert "bfloat16 where it has native bf16" in _flag(name, "--dtype DTYPE"), name
    for name in ("info", "edit", "audit"):
        assert "float32 on a CPU" in _flag(name, "--dtype DTYPE") and "bf16" not in _flag(name, "--dtype DTYPE"), name
