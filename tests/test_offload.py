"""Models larger than memory: accelerate spreads them over devices and disk (here: a tiny model
forced onto disk). Extraction sees the same activations, edits act through hooks on the writers
whose weights are offloaded, and the checkpoint is written from the files on disk."""

from __future__ import annotations

import pytest
import torch
import transformers as T

import planted
from rosi import Direction, EditRecord, apply_edit, load, revert_edit
from rosi.errors import RosiError
from rosi.model.hooks import device_of, offloaded
from rosi.model.loading import parse_max_memory
from rosi.prompts import PromptSet, PromptSets
from rosi.workflows.extract import extract
from rosi.workflows.options import ExtractOptions, MeasureOptions, RunOptions
from rosi.workflows.run import run


@pytest.fixture
def planted_folder(tmp_path):
    u = planted.unit_vector(0)
    model = planted.model(u)
    model.generation_config = T.GenerationConfig(eos_token_id=2, pad_token_id=0)
    model.save_pretrained(tmp_path / "m")
    planted.tokenizer().save_pretrained(tmp_path / "m")
    size = sum(p.numel() * 4 for p in model.parameters())
    return tmp_path / "m", u, f"cpu={size // 4}B"


def _offloaded(folder, max_memory, tmp_path):
    loaded = load(folder, device="cpu", device_map="auto", max_memory=max_memory, offload_folder=str(tmp_path / "offload"))
    assert any(offloaded(p) for p in loaded.model.parameters()), "the test needs weights on disk"
    return loaded


def _sets():
    h, b = PromptSet(tuple(planted.HARMFUL), name="h"), PromptSet(tuple(planted.HARMLESS), name="b")
    return PromptSets(h, b, h, b)


def test_extraction_sees_the_same_activations(planted_folder, tmp_path):
    folder, u, max_memory = planted_folder
    plain = load(folder, device="cpu")
    spread = _offloaded(folder, max_memory, tmp_path)
    assert device_of(spread.model).type == "cpu"
    options = ExtractOptions(layer=1, position=-1, progress=False)
    a, b = extract(plain, _sets(), options), extract(spread, _sets(), options)
    torch.testing.assert_close(b.direction.vector, a.direction.vector, rtol=1e-5, atol=1e-5)
    for name, value in a.activations.harmful.writer_outputs.items():
        torch.testing.assert_close(b.activations.harmful.writer_outputs[name], value, rtol=1e-5, atol=1e-5)


def test_an_edit_of_offloaded_writers_acts_like_the_weight_edit_and_reverts(planted_folder, tmp_path):
    folder, u, max_memory = planted_folder
    plain = load(folder, device="cpu")
    spread = _offloaded(folder, max_memory, tmp_path)
    direction = Direction(torch.randn(32, generator=torch.Generator().manual_seed(2)), layer=1, position=-1)
    ids = torch.tensor([[1, 8, 9, 13, 2]])
    before = spread.model(input_ids=ids).logits
    for method, strength in (("scale", 1.5), ("rosi", 30.0)):
        record_plain = apply_edit(plain.model, direction, method, strength, keep_originals=True)
        record = apply_edit(spread.model, direction, method, strength)
        assert set(record.hooks) == {m.name for m in record.matrices}
        for a, b in zip(record.matrices, record_plain.matrices, strict=True):
            torch.testing.assert_close(a.right, b.right)
        torch.testing.assert_close(spread.model(input_ids=ids).logits, plain.model(input_ids=ids).logits, rtol=1e-4, atol=1e-4)
        revert_edit(spread.model, record)
        revert_edit(plain.model, record_plain)
        assert not record.hooks
        torch.testing.assert_close(spread.model(input_ids=ids).logits, before)


def test_run_on_an_offloaded_model_completes_and_saves_from_disk(planted_folder, tmp_path):
    folder, u, max_memory = planted_folder
    spread = _offloaded(folder, max_memory, tmp_path)
    report = run(spread, tmp_path / "out", _sets(), RunOptions(ExtractOptions(progress=False), measure=MeasureOptions(new_tokens=4)))
    record = EditRecord.load(tmp_path / "out" / "rosi_edit.safetensors")
    assert (record.method, record.strength) == ("scale", report.strength)
    expected = T.AutoModelForCausalLM.from_pretrained(folder)
    apply_edit(expected, record.direction, record.method, record.strength, writers=[m.name for m in record.matrices])
    got = T.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    for name, p in expected.state_dict().items():
        assert torch.equal(got.state_dict()[name], p), name


def test_placement_options_are_checked():
    assert parse_max_memory("0=70GiB, 1=70GiB,cpu=200GiB") == {0: "70GiB", 1: "70GiB", "cpu": "200GiB"}
    for bad in ("0:70GiB", "gpu=1GiB", "cpu=lots"):
        with pytest.raises(RosiError, match="--max-memory"):
            parse_max_memory(bad)
    with pytest.raises(RosiError, match="--device-map"):
        load("/nonexistent", max_memory="cpu=1GiB")
    with pytest.raises(RosiError, match="unknown device map"):
        load("/nonexistent", device_map="everywhere")
