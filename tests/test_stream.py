"""Edits applied to a checkpoint on disk, tensor by tensor: the same weights as the edit in memory,
in the checkpoint's own precision, whatever precision the run computed in."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as T

import planted
from conftest import save_tiny, tiny_model
from rosi import Direction, EditRecord, apply_edit, load, revert_edit
from rosi.export.checkpoint import checkpoint_weights, save_checkpoint
from rosi.export.stream import stream_edit, streamable
from rosi.model.loading import LoadedModel, ModelSource, checkpoint_dtype
from rosi.prompts import PromptSet, PromptSets
from rosi.workflows.options import ExtractOptions, MeasureOptions, RunOptions
from rosi.workflows.run import run


def _direction(seed=3):
    return Direction(torch.randn(32, generator=torch.Generator().manual_seed(seed)), layer=1, position=-1)


@pytest.mark.parametrize("method,strength", [("rosi", 20.0), ("scale", 1.5), ("ablate", 1.0)])
@pytest.mark.parametrize("stored", [torch.float32, torch.bfloat16])
def test_stream_equals_the_edit_in_memory(tmp_path, method, strength, stored):
    save_tiny("llama", tmp_path / "m", dtype=stored)
    expected = T.AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=stored)
    record = apply_edit(expected, _direction(), method, strength)
    # the record handed to the stream was made on a bfloat16 copy: its factors are recomputed from the stored weights
    lowered = T.AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.bfloat16)
    low_record = apply_edit(lowered, _direction(), method, strength)
    assert streamable(tmp_path / "m", low_record)
    (tmp_path / "out").mkdir()
    applied = stream_edit(tmp_path / "m", tmp_path / "out", low_record)
    (tmp_path / "out" / "config.json").write_text((tmp_path / "m" / "config.json").read_text())
    got = T.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=stored)
    for name, p in expected.state_dict().items():
        assert got.state_dict()[name].dtype == stored
        assert torch.equal(got.state_dict()[name], p), name
    for a, b in zip(applied.matrices, record.matrices, strict=True):
        torch.testing.assert_close(a.right, b.right, rtol=1e-6, atol=1e-6)
    # the returned record reverts the streamed weights, within one rounding step
    edited = {name: p.float().clone() for name, p in got.state_dict().items()}
    revert_edit(got, applied)
    original = T.AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=stored)
    eps = torch.finfo(stored).eps
    for name, p in original.state_dict().items():
        bound = eps * torch.maximum(edited[name].abs(), p.float().abs()) + 1e-7
        assert ((got.state_dict()[name].float() - p.float()).abs() <= bound).all(), name


def test_streamed_checkpoint_keeps_the_shards_and_every_untouched_byte(tmp_path):
    model = tiny_model("qwen2")
    model.save_pretrained(tmp_path / "m", max_shard_size="20KB")
    assert (tmp_path / "m" / "model.safetensors.index.json").is_file()
    loaded = load(tmp_path / "m", device="cpu", dtype="bfloat16")
    record = apply_edit(loaded.model, _direction(), "scale", 1.0, targets=("attention",))
    save_checkpoint(loaded, tmp_path / "out", record=record, weights_from=tmp_path / "m")
    shards = sorted(p.name for p in (tmp_path / "m").glob("*.safetensors"))
    assert sorted(p.name for p in (tmp_path / "out").glob("model*.safetensors")) == shards
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert index == json.loads((tmp_path / "m" / "model.safetensors.index.json").read_text())
    reloaded = T.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    edited = {m.name for m in record.matrices}
    for name, p in model.state_dict().items():
        assert reloaded.state_dict()[name].dtype == torch.float32
        assert torch.equal(reloaded.state_dict()[name], p) == (name not in edited), name
    assert checkpoint_dtype(tmp_path / "out") == torch.float32
    saved = EditRecord.load(tmp_path / "out" / "rosi_edit.safetensors")
    assert [m.name for m in saved.matrices] == [m.name for m in record.matrices]


def test_an_edit_too_strong_for_the_stored_dtype_is_refused(tmp_path):
    save_tiny("llama", tmp_path / "m")
    loaded = load(tmp_path / "m", device="cpu", dtype="bfloat16")
    record = apply_edit(loaded.model, _direction(), "rosi", 1.0)
    huge = EditRecord(**{**record.__dict__, "strength": 1e300, "originals": None})
    (tmp_path / "out").mkdir()
    with pytest.raises(Exception, match="NaN or infinite"):
        stream_edit(tmp_path / "m", tmp_path / "out", huge)


def test_run_in_bfloat16_saves_the_checkpoint_in_its_own_precision(tmp_path):
    """`rosi run` searched in bfloat16 on a float32 checkpoint: the saved weights are the float32
    checkpoint with the chosen edit, exactly as an edit of the float32 model gives them."""
    u = planted.unit_vector(0)
    model = planted.model(u)
    model.generation_config = T.GenerationConfig(eos_token_id=2, pad_token_id=0)
    model.save_pretrained(tmp_path / "m")
    planted.tokenizer().save_pretrained(tmp_path / "m")
    loaded = load(tmp_path / "m", device="cpu", dtype="bfloat16")
    h, b = PromptSet(tuple(planted.HARMFUL), name="h"), PromptSet(tuple(planted.HARMLESS), name="b")
    report = run(
        loaded, tmp_path / "out", PromptSets(h, b, h, b), RunOptions(ExtractOptions(progress=False), measure=MeasureOptions(new_tokens=4))
    )
    assert [p.name for p in report.phases] == ["extract_and_select", "base_model", "strength_search", "evaluation", "save"]
    assert "peak memory" in report.phase_table()
    record = EditRecord.load(tmp_path / "out" / "rosi_edit.safetensors")
    expected = T.AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    apply_edit(expected, record.direction, record.method, record.strength, writers=[m.name for m in record.matrices])
    got = T.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    for name, p in expected.state_dict().items():
        assert got.state_dict()[name].dtype == torch.float32 and torch.equal(got.state_dict()[name], p), name


def test_weights_come_from_memory_when_the_precisions_agree(tmp_path):
    save_tiny("llama", tmp_path / "m")
    same = load(tmp_path / "m", device="cpu")
    record = apply_edit(same.model, _direction(), "rosi", 1.0)
    assert checkpoint_weights(same, record) is None
    lower = load(tmp_path / "m", device="cpu", dtype="bfloat16")
    assert checkpoint_weights(lower, apply_edit(lower.model, _direction(), "rosi", 1.0)) == tmp_path / "m"
    in_memory = LoadedModel(tiny_model("llama"), None, ModelSource("x", "memory", "", "0" * 64))
    assert checkpoint_weights(in_memory, record) is None


def test_a_shard_index_naming_files_outside_the_folder_is_refused(tmp_path):
    import json

    from rosi.errors import RosiError
    from rosi.export.stream import INDEX, weight_files

    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "secret.safetensors").write_bytes(b"x")
    (folder / INDEX).write_text(json.dumps({"weight_map": {"w": "../secret.safetensors"}}))
    with pytest.raises(RosiError, match="not a file of the folder"):
        weight_files(folder)
