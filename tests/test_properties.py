"""Property-based tests of every parser of untrusted bytes: whatever the input, the parser returns
a value or raises rosi's own error; it never raises anything else, hangs or allocates without bound."""

from __future__ import annotations

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
