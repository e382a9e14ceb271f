"""Hostile files, every reader: patches, edit records, ``rosi.json``, direction files, prompt files
and tune journals, broken or of the wrong kind, or made for a model of another shape.

Each CLI case copies a small world (a tiny llama with a tokenizer, a wider llama, a mistral of the
same shapes, a direction, a checkpoint rosi wrote, its edit record and patch) into its own
folder, breaks one file, runs one command in-process, and checks that
- the exit status is non-zero and stderr has exactly one ``rosi: error:`` line and no traceback;
- the error line says what the case is about (a regular expression);
- nothing in the folder changed: no output, no stray files, every input byte-identical.
The journal cases check :func:`rosi.workflows.tune.study.check_journal` (and ``open_study``) the
same way, without a model.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import transformers as T
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import save_tiny, save_tokenizer, snapshot
from rosi import Direction
from rosi.cli import main
from rosi.edit.record import EditRecord
from rosi.errors import RosiError

World = dict[str, Path]
WIDE = "wide"  # a llama of hidden size 64 (the world's model: 32)


def _tokenizer(folder: Path) -> Path:
    """The small word-level tokenizer with a chat template of conftest's ``tokenizer_dir``."""
    return save_tokenizer(folder)


def _wide_llama(folder: Path, tokenizer: Path) -> None:
    torch.manual_seed(1)
    config = T.LlamaConfig(
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
        head_dim=16,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    T.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    T.AutoTokenizer.from_pretrained(tokenizer).save_pretrained(folder)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The world every case copies, built once. Paths in it are relative (the cases run in it), so
    the copies' ``rosi.json`` files name the copies' own base."""
    import os

    root = tmp_path_factory.mktemp("template")
    tokenizer = _tokenizer(tmp_path_factory.mktemp("tok"))
    here = Path.cwd()
    os.chdir(root)
    try:
        save_tiny("llama", root / "m", tokenizer_dir=tokenizer)
        save_tiny("mistral", root / "mistral", tokenizer_dir=tokenizer)
        _wide_llama(root / WIDE, tokenizer)
        Direction(torch.randn(32, generator=torch.Generator().manual_seed(0)), layer=1, position=-1).save(root / "d.safetensors")
        Direction(torch.randn(64, generator=torch.Generator().manual_seed(0)), layer=1, position=-1).save(root / "d64.safetensors")
        assert main(["edit", "m", "--direction", "d.safetensors", "--alpha", "1", "--out", "ckpt"]) == 0
        assert main(["edit", WIDE, "--direction", "d64.safetensors", "--alpha", "1", "--out", "wide_ckpt"]) == 0
        assert main(["patch", "ckpt", "--out", "p.safetensors"]) == 0
        assert main(["patch", "wide_ckpt", "--out", "wide_p.safetensors"]) == 0
        shutil.copyfile(root / "ckpt" / "rosi_edit.safetensors", root / "rec.safetensors")
    finally:
        os.chdir(here)
    _journal(root)  # tune.journal: a rosi tune's
    (root / "other").mkdir()
    (root / "other" / "notes.txt").write_text("my files")
    for role, words in (("harmful", "hello world"), ("harmless", "world hello")):
        (root / f"{role}.jsonl").write_text("".join(json.dumps({"instruction": f"{words} {i}"}) + "\n" for i in range(4)))
    return root


# --- how a case breaks a file ------------------------------------------------------------------


def write(w: World, name: str, data: bytes | str) -> str:
    path = w["root"] / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return name


def truncated(w: World, name: str, keep: float = 0.5) -> str:
    path = w["root"] / name
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return name


def _read_record_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
    return load_file(str(path)), meta


def rewrite(
    w: World,
    name: str,
    header: Callable[[dict], None] | None = None,
    tensors: Callable[[dict[str, torch.Tensor]], None] | None = None,
    key: str = "rosi_edit",
) -> str:
    """Rewrite the record or patch ``name`` with its header (metadata ``key``, as JSON) or tensors changed."""
    path = w["root"] / name
    data, meta = _read_record_file(path)
    if header is not None:
        value = json.loads(meta[key])
        header(value)
        meta[key] = json.dumps(value)
    if tensors is not None:
        tensors(data)
    save_file(data, str(path), metadata=meta)
    return name


def in_ckpt(broken: str) -> str:
    """The checkpoint folder, once a file inside it (``broken``) was broken."""
    return broken.split("/", 1)[0]


def manifest(w: World, value: object, folder: str = "ckpt") -> str:
    (w["root"] / folder / "rosi.json").write_text(value if isinstance(value, str) else json.dumps(value))
    return folder


def _patch_of_narrow_edit_for_wide_base(w: World) -> str:
    """A patch whose base identity is the wide model's and whose edit is the narrow one's (what
    `rosi export patch` wrote before it checked the base's shape)."""
    _, wide_meta = _read_record_file(w["root"] / "wide_p.safetensors")
    narrow, narrow_meta = _read_record_file(w["root"] / "p.safetensors")
    save_file(narrow, str(w["root"] / "mixed.safetensors"), metadata={**narrow_meta, "rosi_patch": wide_meta["rosi_patch"]})
    return "mixed.safetensors"


def _swap_record(w: World) -> str:
    """The narrow checkpoint holding the wide checkpoint's edit record."""
    shutil.copyfile(w["root"] / "wide_ckpt" / "rosi_edit.safetensors", w["root"] / "ckpt" / "rosi_edit.safetensors")
    return "ckpt"


def _index_outside(w: World) -> str:
    """The checkpoint, with a shard index that names a file outside it (the base's weights)."""
    with safe_open(str(w["root"] / "ckpt" / "model.safetensors"), framework="pt") as f:
        names = list(f.keys())
    index = {"weight_map": dict.fromkeys(names, "../m/model.safetensors")}
    (w["root"] / "ckpt" / "model.safetensors.index.json").write_text(json.dumps(index))
    return "ckpt"


def _drop_factor(tensors: dict[str, torch.Tensor]) -> None:
    del tensors[next(k for k in tensors if k.startswith("right/"))]


def _nan_factor(tensors: dict[str, torch.Tensor]) -> None:
    name = next(k for k in tensors if k.startswith("right/"))
    tensors[name] = torch.full_like(tensors[name], float("nan"))


def _first_matrix(change: Callable[[dict], None]) -> Callable[[dict], None]:
    return lambda h: change(h["matrices"][0])


def _identity_sha(patch: dict) -> None:
    first = next(iter(patch["base"]["tensors"].values()))
    first["sha256"] = "not a digest"


def _direction_with_format(w: World) -> str:
    save_file({"direction": torch.ones(32)}, str(w["root"] / "dfmt.safetensors"), metadata={"format": "rosi-direction/9"})
    return "dfmt.safetensors"


def apply(w: World, patch: str, base: str = "m") -> list[str]:
    return ["apply", patch, base, "--out", "applied"]


def edit(w: World, direction: str) -> list[str]:
    return ["edit", "m", "--direction", direction, "--alpha", "1", "--out", "edited"]


def run(w: World, harmful: str) -> list[str]:
    return ["run", "m", "--out", "out", "--harmful", harmful, "--harmless", "harmless.jsonl"]


def tune(journal: str) -> list[str]:
    return ["tune", "m", "--out", "tuned", "--journal", journal]


def export(kind: str, source: str, *base: str) -> list[str]:
    return [
        "export",
        kind,
        source,
        *(["--base", base[0]] if base else []),
        "--out",
        "exported" + ("" if kind == "lora" else ".safetensors"),
    ]


Case = tuple[str, Callable[[World], list[str]], str]

CASES: list[Case] = [
    # --- patches (rosi apply) ------------------------------------------------------------------
    ("patch truncated", lambda w: apply(w, truncated(w, "p.safetensors")), "not a readable patch"),
    ("patch cut to its header", lambda w: apply(w, truncated(w, "p.safetensors", 0.05)), "not a readable patch"),
    ("patch of garbage bytes", lambda w: apply(w, write(w, "g.safetensors", b"\x00garbage" * 50)), "not a readable patch"),
    (
        "patch with a huge header length",
        lambda w: apply(w, write(w, "h.safetensors", struct.pack("<Q", 1 << 62) + b"{}")),
        "not a readable patch",
    ),
    ("patch is a direction file", lambda w: apply(w, "d.safetensors"), "d.safetensors is a direction file, not a patch"),
    ("patch is an edit record", lambda w: apply(w, "rec.safetensors"), "is an edit record, not a patch; make a patch of it"),
    ("patch is a model's weights", lambda w: apply(w, "m/model.safetensors"), "without rosi's metadata.*not a patch"),
    ("patch is a checkpoint folder", lambda w: apply(w, "ckpt"), "ckpt.*folder"),
    ("patch for a model of another width", lambda w: apply(w, _patch_of_narrow_edit_for_wide_base(w), WIDE), "another width"),
    ("patch applied to a base of another width", lambda w: apply(w, "p.safetensors", WIDE), "another shape"),
    (
        "patch applied to another architecture",
        lambda w: apply(w, "p.safetensors", "mistral"),
        "'mistral' model; the patch is for a 'llama'",
    ),
    (
        "patch strength not a number",
        lambda w: apply(w, rewrite(w, "p.safetensors", lambda h: h.update(strength="strong"))),
        "patch's strength 'strong' is not a finite number",
    ),
    (
        "patch strength infinite",
        lambda w: apply(w, rewrite(w, "p.safetensors", lambda h: h.update(strength=float("inf")))),
        "not a finite number",
    ),
    (
        "patch of another format version",
        lambda w: apply(w, rewrite(w, "p.safetensors", lambda h: h.update(format="rosi-patch/9"), key="rosi_patch")),
        "patch format 'rosi-patch/9'",
    ),
    (
        "patch identity with a bad digest",
        lambda w: apply(w, rewrite(w, "p.safetensors", _identity_sha, key="rosi_patch")),
        "sha256 'not a digest' is not a sha256 digest",
    ),
    (
        "patch identity without a format",
        lambda w: apply(w, rewrite(w, "p.safetensors", lambda h: h.clear(), key="rosi_patch")),
        "patch format None",
    ),
    ("patch missing a factor", lambda w: apply(w, rewrite(w, "p.safetensors", tensors=_drop_factor)), "tensor 'right/.*' is missing"),
    ("patch with a NaN factor", lambda w: apply(w, rewrite(w, "p.safetensors", tensors=_nan_factor)), "NaN or infinite"),
    # --- edit records (export, revert, verify) -------------------------------------------------------
    ("record truncated", lambda w: export("patch", truncated(w, "rec.safetensors"), "m"), "not a readable edit record"),
    ("record of garbage bytes", lambda w: export("lora", write(w, "g.safetensors", b"\xff" * 300), "m"), "not a readable edit record"),
    ("record is a direction file", lambda w: export("lora", "d.safetensors", "m"), "is a direction file, not an edit record"),
    ("record is a model's weights", lambda w: export("patch", "m/model.safetensors", "m"), "model's weights.*not an edit record"),
    (
        "record matrices not a list",
        lambda w: export("patch", rewrite(w, "rec.safetensors", lambda h: h.update(matrices="all")), "m"),
        "edit record's matrices 'all' are not a list",
    ),
    (
        "record matrix of an unknown kind",
        lambda w: export("patch", rewrite(w, "rec.safetensors", _first_matrix(lambda m: m.update(kind="brain"))), "m"),
        "kind 'brain' is not one of",
    ),
    (
        "record layer not a number",
        lambda w: export("patch", rewrite(w, "rec.safetensors", _first_matrix(lambda m: m.update(layer="one"))), "m"),
        "layer 'one' is not a layer number",
    ),
    (
        "record method unknown",
        lambda w: export("patch", rewrite(w, "rec.safetensors", lambda h: h.update(method="magic")), "m"),
        "method 'magic' is not one of",
    ),
    (
        "record with an integer factor",
        lambda w: export("patch", rewrite(w, "rec.safetensors", tensors=lambda t: t.update({k: v.long() for k, v in t.items()})), "m"),
        "not floating-point",
    ),
    ("export patch for a base of another width", lambda w: export("patch", "ckpt", WIDE), "another (width|shape)"),
    (
        "export patch for another architecture",
        lambda w: export("patch", "ckpt", "mistral"),
        "'mistral' model.*'llama'",
    ),
    (
        "revert a checkpoint with a truncated record",
        lambda w: ["revert", in_ckpt(truncated(w, "ckpt/rosi_edit.safetensors")), "--out", "r"],
        "rosi_edit.safetensors is not a readable edit record",
    ),
    ("revert a direction file", lambda w: ["revert", "d.safetensors", "--out", "r"], "is a direction file, not a checkpoint folder"),
    (
        "revert a checkpoint whose record is another model's",
        lambda w: ["revert", _swap_record(w), "--out", "r"],
        "another width",
    ),
    (
        "verify a checkpoint with a garbage record",
        lambda w: ["verify", in_ckpt(write(w, "ckpt/rosi_edit.safetensors", b"{}" * 9))],
        "rosi_edit.safetensors is not a readable edit record",
    ),
    ("verify against a base of another width", lambda w: ["verify", "ckpt", "--base", WIDE], "not the base of ckpt.*another size"),
    ("verify against another architecture", lambda w: ["verify", "ckpt", "--base", "mistral"], "'mistral' model"),
    ("verify a record that does not fit the model", lambda w: ["verify", _swap_record(w)], "its own edit record.*another width"),
    ("verify a checkpoint whose shard index leaves it", lambda w: ["verify", _index_outside(w)], "not a file of the folder"),
    ("verify a checkpoint with truncated weights", lambda w: ["verify", in_ckpt(truncated(w, "ckpt/model.safetensors"))], "truncated"),
    # --- rosi.json ------------------------------------------------------------------------------------
    (
        "manifest base_model is text",
        lambda w: export("patch", manifest(w, {"tool": "rosi", "base_model": "m"})),
        "base_model is text, not an object",
    ),
    (
        "manifest base spec is a number",
        lambda w: export("lora", manifest(w, {"tool": "rosi", "base_model": {"spec": 5}})),
        "base_model.spec is a number, not text",
    ),
    ("manifest not JSON", lambda w: export("patch", manifest(w, "{oops")), "rosi.json is not valid JSON"),
    ("manifest a list", lambda w: ["verify", manifest(w, [1, 2])], "a JSON list, not an object"),
    ("manifest of another tool", lambda w: ["revert", manifest(w, {"tool": "other"}), "--out", "r"], "tool is 'other', not 'rosi'"),
    ("manifest edit is a list", lambda w: ["verify", manifest(w, {"tool": "rosi", "edit": []})], "edit is a list, not an object"),
    # --- direction files -------------------------------------------------------------------------------
    ("direction is an edit record", lambda w: edit(w, "rec.safetensors"), "is an edit record, not a direction file"),
    ("direction is a patch", lambda w: edit(w, "p.safetensors"), "is a patch, not a direction file"),
    ("direction is a checkpoint folder", lambda w: edit(w, "ckpt"), "checkpoint folder rosi wrote, not a direction file"),
    ("direction is a model's weights", lambda w: edit(w, "m/model.safetensors"), "a model's weights"),
    ("direction of another format version", lambda w: edit(w, _direction_with_format(w)), "format 'rosi-direction/9'"),
    ("audit direction is an edit record", lambda w: ["audit", "m", "--direction", "rec.safetensors"], "is an edit record, not a direction"),
    # --- tune journals (the CLI checks --journal before the model loads) ----------------------------------
    ("tune journal of garbage", lambda w: tune(write(w, "j.journal", "garbage\n")), "j.journal is not an Optuna journal"),
    ("tune journal is a direction file", lambda w: tune("d.safetensors"), "d.safetensors is not (UTF-8|an Optuna journal)"),
    ("tune journal cut inside a line", lambda w: tune(truncated(w, "tune.journal", 0.7)), "tune.journal ends in an incomplete line"),
    ("tune journal of another study", lambda w: tune(str(_other_study(w["root"] / "other").relative_to(w["root"]))), "not a rosi tune's"),
    # --- prompt files --------------------------------------------------------------------------------------
    ("prompt json of blank strings", lambda w: run(w, write(w, "p.json", '["", "  ", "\\n"]')), "p.json: prompt 1 is blank"),
    ("prompt json with one blank string", lambda w: run(w, write(w, "p.json", '["hello", " "]')), "prompt 2 is blank"),
    ("prompt json empty list", lambda w: run(w, write(w, "p.json", "[]")), "empty"),
    ("prompt json of numbers", lambda w: run(w, write(w, "p.json", "[1, 2]")), "row 1 is int"),
    ("prompt json object of two lists", lambda w: run(w, write(w, "p.json", '{"a": ["x"], "b": ["y"]}')), "expected a JSON list"),
    (
        "prompt jsonl row without the column",
        lambda w: run(w, write(w, "p.jsonl", '{"instruction": "hello"}\n{"other": "world"}\n')),
        "row 2 has no 'instruction' \\(its fields: \\['other'\\]\\)",
    ),
    (
        "prompt jsonl row with a blank prompt",
        lambda w: run(w, write(w, "p.jsonl", '{"instruction": "hello"}\n{"instruction": "   "}\n')),
        "row 2 has a blank 'instruction'",
    ),
    (
        "prompt jsonl prompt that is a list",
        lambda w: run(w, write(w, "p.jsonl", '{"prompt": ["a"]}\n')),
        "row 1's 'prompt' is a list, not text",
    ),
    ("prompt csv with a blank cell", lambda w: run(w, write(w, "p.csv", "prompt,x\nhello,1\n,2\n")), "row 2 has a blank 'prompt'"),
    ("prompt csv header only", lambda w: run(w, write(w, "p.csv", "prompt,category\n")), "empty.*header line and no rows"),
    ("prompt csv latin-1", lambda w: run(w, write(w, "p.csv", "prompt\ncaf\xe9\n".encode("latin-1"))), "p.csv.*not UTF-8"),
    ("prompt json not UTF-8", lambda w: run(w, write(w, "p.json", b'["\xff\xfe"]')), "p.json.*not UTF-8"),
    ("prompt FILE:COLUMN missing", lambda w: run(w, "harmful.jsonl:nope"), "no column 'nope'"),
    ("prompt txt with a column", lambda w: run(w, write(w, "p.txt", "hello\n") + ":prompt"), "no columns"),
    ("prompt txt of blank lines", lambda w: run(w, write(w, "p.txt", "\n  \n\t\n")), "empty"),
]


def test_there_are_enough_cases():
    assert len(CASES) >= 30 and len({name for name, _, _ in CASES}) == len(CASES)


@pytest.mark.parametrize("name,argv,match", CASES, ids=[c[0] for c in CASES])
def test_hostile_file(name, argv, match, template, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ROSI_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ROSI_DATA", raising=False)
    root = tmp_path / "w"
    shutil.copytree(template, root)
    monkeypatch.chdir(root)
    world = {"root": root}
    args = argv(world)
    before = snapshot(root)
    capsys.readouterr()
    code = main(args)
    err = capsys.readouterr().err
    assert code in (1, 2), f"{name}: exit status {code}; stderr {err[-2000:]!r}"
    errors = [line for line in err.splitlines() if "rosi: error:" in line]
    assert len(errors) == 1 and errors[0].startswith("rosi: error:"), f"{name}: stderr was {err[-2000:]!r}"
    assert "Traceback" not in err
    assert re.search(match, errors[0]), f"{name}: {errors[0]!r} does not say {match!r}"
    assert snapshot(root) == before, f"{name}: files changed"


# --- the readers accept what rosi writes --------------------------------------------------------------


def test_the_world_is_sound(template, tmp_path, capsys, monkeypatch):
    """Every file the cases break is read without complaint when whole (the cases test the breakage)."""
    from rosi.export.checkpoint import read_manifest
    from rosi.export.patch import read_patch, verify

    monkeypatch.setenv("ROSI_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "w"
    shutil.copytree(template, root)
    monkeypatch.chdir(root)
    record = EditRecord.load(root / "rec.safetensors")
    assert record.matrices and record.direction.size == 32
    patched, identity = read_patch(root / "p.safetensors")
    assert {m.name for m in patched.matrices} == set(identity.tensors) and identity.model_type == "llama"
    assert read_manifest(root / "ckpt")["base_model"]["spec"] == "m"
    assert verify(root / "ckpt", root / "m").ok
    assert main(["apply", "p.safetensors", "m", "--out", "applied"]) == 0
    assert main(["verify", "applied", "--base", "m"]) == 0
    assert main(["revert", "ckpt", "--out", "r"]) == 0
    assert main(["export", "patch", "rec.safetensors", "--base", "m", "--out", "again.safetensors"]) == 0


def test_a_patch_for_another_base_is_refused_when_written(template, tmp_path):
    """`rosi export patch --base B` of another width once wrote a patch that crashed `rosi apply`;
    the library refuses it too, and a base of another architecture (the record of a checkpoint
    knows its own)."""
    from rosi.export.patch import PatchError, load_record, write_patch

    root = tmp_path / "w"
    shutil.copytree(template, root)
    before = snapshot(root)
    record = EditRecord.load(root / "rec.safetensors")
    with pytest.raises(PatchError, match="another width"):
        write_patch(record, root / WIDE, root / "x.safetensors")
    record = load_record(root / "ckpt")
    assert record.model_type == "llama"
    with pytest.raises(PatchError, match="'mistral' model; the edit was made on a 'llama' model"):
        write_patch(record, root / "mistral", root / "x.safetensors")
    assert snapshot(root) == before


# --- tune journals ---------------------------------------------------------------------------------


def _journal(folder: Path, trials: int = 2, cheap: object = None) -> Path:
    """A small journal of a rosi tune (what `rosi tune --journal` writes)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from rosi.workflows.tune.pick import DIRECTIONS

    path = folder / "tune.journal"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="rosi-tune", storage=JournalStorage(JournalFileBackend(str(path))), directions=list(DIRECTIONS))
    study.set_user_attr("settings", SETTINGS)

    def objective(trial):
        trial.suggest_categorical("form", ["gate"])
        trial.set_user_attr("params", {"form": "gate"})
        trial.set_user_attr("cheap", cheap if cheap is not None else {"harmful": 1.0, "harmless": 0.0, "lookalike": 0.1, "kl": 0.01})
        return 1.0, 0.0, 0.1, 0.01

    study.optimize(objective, n_trials=trials)
    return path


SETTINGS = {"model": "m", "seed": 0, "forms": ["gate"]}


def _other_study(folder: Path) -> Path:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path = folder / "tune.journal"
    optuna.create_study(study_name="someone-else", storage=JournalStorage(JournalFileBackend(str(path))))
    return path


def _journal_bytes(data: bytes) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = folder / "tune.journal"
        path.write_bytes(data)
        return path

    return make


def _journal_lines(change: Callable[[list[str]], list[str]]) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = _journal(folder)
        path.write_text("\n".join(change(path.read_text().splitlines())) + "\n")
        return path

    return make


def _journal_folder(folder: Path) -> Path:
    (folder / "tune.journal").mkdir()
    return folder / "tune.journal"


JOURNAL_CASES: list[tuple[str, Callable[[Path], Path], dict | None, str]] = [
    ("journal of garbage bytes", _journal_bytes(b"\x00\xffgarbage" * 20), None, "not an Optuna journal"),
    (
        "journal not UTF-8",
        _journal_bytes(b'{"op_code": 0, "worker_id": "w", "study_name": "rosi-tune", "directions": [2, 1, 1, 1]}\n\xff\xfe\n'),
        None,
        "not UTF-8",
    ),
    ("journal of foreign JSON lines", _journal_bytes(b'{"a": 1}\n{"b": 2}\n'), None, "line 1 is not a journal operation"),
    ("journal that is a JSON document", _journal_bytes(json.dumps({"trials": []}, indent=2).encode() + b"\n"), None, "line 1 is not JSON"),
    ("journal cut inside a line", lambda f: _journal_bytes(_journal(f).read_bytes()[:-7])(f), None, "ends in an incomplete line"),
    ("journal with a blank line", _journal_lines(lambda lines: [lines[0], "", *lines[1:]]), None, "line 2 is not JSON"),
    (
        "journal whose operations do not replay",
        _journal_lines(lambda lines: [lines[0], json.dumps({"op_code": 4, "worker_id": "w", "study_id": 0})]),
        None,
        "does not replay",
    ),
    ("journal of another study", _other_study, None, "studies \\['someone-else'\\], not a rosi tune's"),
    ("journal made with other settings", _journal, {"seed": 1}, "was made with other settings \\(seed\\)"),
    ("journal trial without scores", lambda f: _journal(f, cheap={"harmful": "all"}), None, "trial 0 has no scores"),
    ("journal is a folder", _journal_folder, None, "is a folder"),
]


def test_there_are_enough_journal_cases():
    assert len(JOURNAL_CASES) >= 10


@pytest.mark.parametrize("name,make,settings,match", JOURNAL_CASES, ids=[c[0] for c in JOURNAL_CASES])
def test_hostile_journal(name, make, settings, match, tmp_path):
    from rosi.errors import JournalError
    from rosi.workflows.tune.study import check_journal, open_study

    path = make(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(JournalError, match=match) as caught:
        check_journal(path, settings)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)
    full = {**SETTINGS, **(settings or {})}
    with pytest.raises(JournalError, match=match):  # the tune opens it only after the same check
        open_study(path, full, 0, {})
    assert snapshot(tmp_path) == before, f"{name}: files changed"


def test_a_sound_journal_passes_its_check(tmp_path):
    from rosi.workflows.tune.study import check_journal

    assert check_journal(tmp_path / "none.journal") is None and not (tmp_path / "none.journal").exists()
    path = _journal(tmp_path)
    assert check_journal(path) == SETTINGS
    assert check_journal(path, {"seed": 0}) == SETTINGS
    (tmp_path / "empty.journal").write_bytes(b"")
    assert check_journal(tmp_path / "empty.journal") is None


def test_errors_are_rosi_errors():
    """Every reader's error class is one the CLI prints as one line."""
    from rosi.errors import JournalError, ManifestError, RecordError
    from rosi.export.patch import PatchError

    assert all(issubclass(e, RosiError) for e in (JournalError, ManifestError, RecordError, PatchError))
