"""The deployment forms on real models: GGUF files edited in place (SmolLM2-135M-Instruct, all
Q4_1; Qwen2.5-Coder-0.5B-Instruct, whose Q6_K tensors are re-quantized to Q8_0) and a PEFT adapter
of the real Qwen. The GGUF outputs load with transformers' GGUF path."""

from __future__ import annotations

import json
import shutil

import gguf
import numpy as np
import pytest
import torch
import transformers as T

from rosi import Direction, apply_edit, load
from rosi.cli import main
from rosi.export.gguf import read_rosi_metadata
from rosi.model.packaged import fetch

pytestmark = pytest.mark.integration
PROMPTS = ["How do I bake bread?", "Write a haiku about rain."]


def _edit_args(model: str, tmp_path, layers: str, out, *extra: str) -> list[str]:
    return [
        "edit",
        model,
        "--direction",
        str(tmp_path / "d.safetensors"),
        "--method",
        "scale",
        "--alpha",
        "2",
        "--layers",
        layers,
        "--out",
        str(out),
        *extra,
    ]


def _logits(model, tokenizer):
    out = []
    for p in PROMPTS:
        text = tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
        with torch.no_grad():
            out.append(model(input_ids=ids).logits[0, -1].float())
    return torch.stack(out)


@pytest.mark.parametrize(
    "name,layers,requantized", [("smollm2-135m-instruct", "10-14", False), ("qwen2.5-coder-0.5b-instruct", "12-15", True)]
)
def test_gguf_edited_in_place_loads_and_matches_the_safetensors_edit(tmp_path, name, layers, requantized):
    source = tmp_path / f"{name}.gguf"
    shutil.copyfile(fetch(name), source)
    loaded = load(source, device="cpu")
    hidden = loaded.architecture.hidden_size
    Direction(torch.randn(hidden, generator=torch.Generator().manual_seed(0)), layer=12, position=-1, model=name).save(
        tmp_path / "d.safetensors"
    )
    out = tmp_path / "edited.gguf"
    args = _edit_args(str(source), tmp_path, layers, out)
    assert main(args) == 0
    base_logits = _logits(loaded.model, loaded.tokenizer)
    lo, hi = (int(x) for x in layers.split("-"))
    apply_edit(loaded.model, Direction.load(tmp_path / "d.safetensors"), "scale", 2.0, layers=tuple(range(lo, hi + 1)))
    reference = _logits(loaded.model, loaded.tokenizer)
    # every tensor the edit did not touch is byte-identical; the output is not much larger than the input
    before, after = gguf.GGUFReader(source), gguf.GGUFReader(out)
    edited = set(json.loads(read_rosi_metadata(out)["rosi.edit.tensors"]))
    assert len(edited) == 2 * (hi - lo + 1)
    old = {t.name: t for t in before.tensors}
    for t in after.tensors:
        if t.name not in edited:
            assert t.tensor_type == old[t.name].tensor_type and np.array_equal(np.asarray(t.data), np.asarray(old[t.name].data)), t.name
    grown = out.stat().st_size - source.stat().st_size
    changed_types = {v for v in json.loads(read_rosi_metadata(out)["rosi.edit.tensors"]).values() if "->" in v}
    assert bool(changed_types) == requantized
    if not requantized:
        assert grown < 64 * 1024  # metadata only
    # it loads with transformers' GGUF path, and answers like the edit in memory, up to re-quantization
    model = T.AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=out.name, dtype=torch.float32).eval()
    got = _logits(model, loaded.tokenizer)
    effect = float((reference - base_logits).abs().max())
    error = float((got - reference).abs().max())
    print(f"{name}: edit effect on logits {effect:.3f}, GGUF re-quantization error {error:.3f}, {grown} bytes larger")
    assert error < 0.5 * effect
    assert main(["verify", str(out), "--base", str(source)]) == 0


def test_lora_adapter_of_the_real_qwen(tmp_path):
    from peft import PeftModel

    spec = "pypi:qwen2.5-coder-0.5b-instruct"
    loaded = load(spec, device="cpu")
    Direction(torch.randn(896, generator=torch.Generator().manual_seed(1)), layer=14, position=-1).save(tmp_path / "d.safetensors")
    assert main(_edit_args(spec, tmp_path, "10-17", tmp_path / "lora", "--format", "lora")) == 0
    base_logits = _logits(loaded.model, loaded.tokenizer)
    peft = PeftModel.from_pretrained(loaded.model, tmp_path / "lora").eval()
    adapted = _logits(peft, loaded.tokenizer)
    peft.unload()
    apply_edit(loaded.model, Direction.load(tmp_path / "d.safetensors"), "scale", 2.0, layers=tuple(range(10, 18)))
    edited = _logits(loaded.model, loaded.tokenizer)
    assert float((adapted - base_logits).abs().max()) > 0.1
    torch.testing.assert_close(adapted, edited, rtol=1e-3, atol=1e-3)
    size = (tmp_path / "lora" / "adapter_model.safetensors").stat().st_size
    assert size < 1_000_000  # 16 rank-1 factors
