"""Property-based tests of every parser of untrusted bytes: whatever the input, the parser returns
a value or raises rosi's own error; it never raises anything else, hangs or allocates without bound."""

from __future__ import annotations

import functools
import json
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from rosi.direction.vector import Direction
from rosi.errors import RosiError
from rosi.eval.results import load_results
from rosi.model.gguf import check_gguf
from rosi.model.loading import check_safetensors
from rosi.prompts import load_prompts

SETTINGS = settings(max_examples=60, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=25,
)


def _write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def _safetensors_bytes(header: object, body: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + body


def _headers() -> st.SearchStrategy[object]:
    entry = st.fixed_dictionaries(
        {
            "dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "BOOL", "F64", "??"]),
            "shape": st.lists(st.integers(-2, 1 << 40), max_size=3),
            "data_offsets": st.lists(st.integers(-5, 1 << 40), min_size=0, max_size=3),
        }
    )
    return st.dictionaries(st.sampled_from(["direction", "x", "__metadata__"]), entry | JSON, max_size=3) | JSON


@SETTINGS
@given(data=st.binary(max_size=300) | st.builds(_safetensors_bytes, _headers(), st.binary(max_size=64)))
def test_direction_files(tmp_path, data):
    path = _write(tmp_path, "d.safetensors", data)
    try:
        Direction.load(path)
    except RosiError:
        pass


@SETTINGS
@given(data=st.binary(max_size=300) | st.builds(_safetensors_bytes, _headers(), st.binary(max_size=64)))
def test_safetensors_header_check(tmp_path, data):
    path = _write(tmp_path, "model.safetensors", data)
    try:
        check_safetensors(path)
    except RosiError:
        pass


def _gguf_bytes(version: int, n_tensors: int, n_kv: int, tail: bytes) -> bytes:
    return struct.pack("<4sIQQ", b"GGUF", version, n_tensors, n_kv) + tail


@SETTINGS
@given(
    data=st.binary(max_size=64).map(lambda b: b"GGUF" + b)
    | st.builds(_gguf_bytes, st.integers(0, 5), st.integers(0, (1 << 64) - 1), st.integers(0, (1 << 64) - 1), st.binary(max_size=200))
)
def test_gguf_headers(tmp_path, data):
    path = _write(tmp_path, "m.gguf", data)
    try:
        check_gguf(path)
    except RosiError:
        return
    # a header the check lets through lists no more entries than the file can hold
    _, _, n_tensors, n_kv = struct.unpack("<4sIQQ", data[:24])
    assert n_tensors + n_kv <= len(data)


@SETTINGS
@given(suffix=st.sampled_from([".txt", ".jsonl", ".json", ".csv"]), data=st.binary(max_size=400) | st.text(max_size=400).map(str.encode))
def test_prompt_files(tmp_path, suffix, data):
    path = _write(tmp_path, f"p{suffix}", data)
    try:
        prompts = load_prompts(str(path))
    except RosiError:
        return
    assert len(prompts) > 0 and all(isinstance(p, str) and p for p in prompts.instructions)


@SETTINGS
@given(rows=st.lists(JSON, max_size=6), suffix=st.sampled_from([".jsonl", ".json"]))
def test_prompt_files_of_any_json(tmp_path, rows, suffix):
    text = "\n".join(json.dumps(r) for r in rows) if suffix == ".jsonl" else json.dumps(rows)
    path = _write(tmp_path, f"p{suffix}", text.encode())
    try:
        load_prompts(str(path))
    except RosiError:
        pass


@SETTINGS
@given(data=JSON)
def test_result_files(tmp_path, data):
    path = _write(tmp_path, "results.json", json.dumps(data).encode())
    try:
        load_results(path)
    except RosiError:
        pass


@SETTINGS
@given(
    metrics=st.dictionaries(st.sampled_from(["model", "base"]), st.dictionaries(st.sampled_from(["harm_refusal", "utility", "x"]), JSON))
)
def test_result_files_with_metrics(tmp_path, metrics):
    data = {"metrics": metrics, "rosi_version": "0", "suite": "quick", "judge": "markers", "models": {}, "max_new_tokens": 1, "sets": {}}
    path = _write(tmp_path, "results.json", json.dumps(data).encode())
    try:
        load_results(path)
    except RosiError:
        pass


def test_a_real_direction_file_round_trips(tmp_path):
    """The parsers accept what rosi writes (the properties above are not vacuous)."""
    path = tmp_path / "d.safetensors"
    save_file({"direction": torch.ones(8)}, str(path), metadata={"layer": "1", "position": "-1"})
    assert Direction.load(path).position == -1
    with pytest.raises(RosiError):
        Direction.load(_write(tmp_path, "e.safetensors", b"\x08" + b"\x00" * 7 + b"{}garbage"))


# --- patches, edit records and tune journals ------------------------------------------------------


@functools.cache
def _valid_files() -> dict[str, bytes]:
    """A small valid edit record, patch and tune journal, as bytes (built once)."""
    import hashlib
    import tempfile

    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from rosi.edit.record import EditRecord, MatrixEdit
    from rosi.export.patch import PATCH_FORMAT
    from rosi.model.writers import Layout, WriterKind
    from rosi.workflows.tune.pick import DIRECTIONS

    folder = Path(tempfile.mkdtemp())
    matrices = tuple(
        MatrixEdit(f"model.layers.{i}.mlp.down_proj.weight", WriterKind.MLP, Layout.OUT_IN, i, torch.linspace(-1, 1, 6)) for i in range(2)
    )
    record = EditRecord("rosi", 2.0, Direction(torch.ones(4), layer=1, position=-1), ("mlp",), None, matrices)
    record.save(folder / "record.safetensors")
    digest = hashlib.sha256(b"base").hexdigest()
    identity = {m.name: {"sha256": digest, "dtype": "F32", "shape": [4, 6]} for m in matrices}
    patch = {"format": PATCH_FORMAT, "base": {"model_type": "llama", "tensors": identity}}
    record.save(folder / "patch.safetensors", extra={"rosi_patch": json.dumps(patch)})
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(folder / "tune.journal")))
    study = optuna.create_study(study_name="rosi-tune", storage=storage, directions=list(DIRECTIONS))
    study.set_user_attr("settings", {"seed": 0})

    def objective(trial):
        trial.suggest_float("gate.strength", 0.1, 2.0)
        trial.set_user_attr("params", {"form": "gate"})
        trial.set_user_attr("cheap", {"harmful": 1.0, "harmless": 0.0, "lookalike": 0.0, "kl": 0.1})
        return 1.0, 0.0, 0.0, 0.1

    study.optimize(objective, n_trials=2)
    return {name: (folder / name).read_bytes() for name in ("record.safetensors", "patch.safetensors", "tune.journal")}


def _mutated(name: str) -> st.SearchStrategy[bytes]:
    """A valid file of rosi's, cut anywhere, with bytes overwritten, or with its header's fields
    replaced by arbitrary JSON values."""

    def cut(n: int) -> bytes:
        data = _valid_files()[name]
        return data[: n % (len(data) + 1)]

    def flipped(changes: list[tuple[int, int]]) -> bytes:
        data = bytearray(_valid_files()[name])
        for at, value in changes:
            data[at % len(data)] = value
        return bytes(data)

    return (
        st.integers(0, 1 << 20).map(cut)
        | st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=8).map(flipped)
        | st.binary(max_size=400)
    )


def _record_with_fields(key: str) -> st.SearchStrategy[bytes]:
    """The valid record or patch with one field of its JSON metadata ``key`` replaced by any JSON value."""

    def build(field: str, value: object, whole: bool) -> bytes:
        import tempfile

        from safetensors import safe_open
        from safetensors.torch import load_file
        from safetensors.torch import save as save_bytes

        name = "patch.safetensors" if key == "rosi_patch" else "record.safetensors"
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_bytes(_valid_files()[name])
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
            tensors = load_file(str(path))
        header = json.loads(meta[key])
        if whole:
            header = value
        else:
            header[field] = value
        return save_bytes(tensors, metadata={**meta, key: json.dumps(header)})

    fields = ["format", "method", "strength", "targets", "layers", "untied_embeddings", "selected", "direction", "matrices", "base"]
    return st.builds(build, st.sampled_from(fields), JSON, st.booleans())


@SETTINGS
@given(data=_mutated("record.safetensors") | _record_with_fields("rosi_edit"))
def test_edit_record_files(tmp_path, data):
    from rosi.edit.record import EditRecord

    path = _write(tmp_path, "rosi_edit.safetensors", data)
    try:
        record = EditRecord.load(path)
    except RosiError:
        return
    assert record.matrices is not None and torch.isfinite(record.direction.vector).all()


@SETTINGS
@given(data=_mutated("patch.safetensors") | _record_with_fields("rosi_patch") | _record_with_fields("rosi_edit"))
def test_patch_files(tmp_path, data):
    from rosi.export.patch import read_patch

    path = _write(tmp_path, "p.safetensors", data)
    try:
        record, identity = read_patch(path)
    except RosiError:
        return
    assert {m.name for m in record.matrices} == set(identity.tensors)


def _journal_lines(lines: list[object]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def _journal_with_field(index: int, field: str, value: object) -> bytes:
    lines = [json.loads(line) for line in _valid_files()["tune.journal"].decode().splitlines()]
    lines[index % len(lines)][field] = value
    return _journal_lines(lines)


@SETTINGS
@given(
    data=_mutated("tune.journal")
    | st.lists(JSON, max_size=5).map(_journal_lines)
    | st.builds(
        _journal_with_field,
        st.integers(0, 100),
        st.sampled_from(["op_code", "worker_id", "study_id", "study_name", "directions", "user_attr", "state", "values", "trial_id"]),
        JSON,
    )
)
def test_tune_journals(tmp_path, data):
    """Whatever the journal holds, the check raises rosi's error or passes; and a journal it
    passes, the tune opens (or refuses with rosi's error)."""
    from rosi.workflows.tune.study import check_journal, open_study

    path = _write(tmp_path, "tune.journal", data)
    try:
        check_journal(path, {"seed": 0})
    except RosiError:
        return
    try:
        open_study(path, {"seed": 0}, 0, {})
    except RosiError:
        pass


def test_the_valid_files_pass():
    """The properties above start from files the readers accept (they are not vacuous)."""
    import tempfile

    from rosi.edit.record import EditRecord
    from rosi.export.patch import read_patch
    from rosi.workflows.tune.study import check_journal

    folder = Path(tempfile.mkdtemp())
    files = {name: _write(folder, name, data) for name, data in _valid_files().items()}
    assert len(EditRecord.load(files["record.safetensors"]).matrices) == 2
    assert len(read_patch(files["patch.safetensors"])[1].tensors) == 2
    assert check_journal(files["tune.journal"], {"seed": 0}) == {"seed": 0}
