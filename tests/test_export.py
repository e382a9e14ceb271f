"""Shipping the edit: PEFT and GGUF LoRA adapters, patches applied to a base, verify, revert, chat, cards."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as T

from conftest import save_tiny, tiny_model
from rosi import Direction, EditRecord
from rosi.cli import main

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture
def setup(tmp_path, tokenizer_dir):
    direction = tmp_path / "d.safetensors"
    Direction(torch.randn(32, generator=torch.Generator().manual_seed(4)) * 2, layer=1, position=-1, model="tiny").save(direction)
    return tmp_path, direction, tokenizer_dir


def _edit(base: Path, direction: Path, out: Path, *extra: str) -> None:
    assert main(["edit", str(base), "--direction", str(direction), "--method", "scale", "--alpha", "1.5", "--out", str(out), *extra]) == 0


IDS = torch.tensor([[1, 5, 9, 20, 3, 7]])


def _logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize(
    "arch,targets", [("llama", None), ("gpt2", None), ("qwen2", "attention,mlp,embedding"), ("mixtral", None), ("qwen2_moe", None)]
)
def test_lora_adapter_loads_with_peft_and_equals_the_checkpoint(setup, arch, targets):
    from peft import PeftModel

    tmp, direction, tok = setup
    save_tiny(arch, tmp / "base", tokenizer_dir=tok)
    extra = ["--targets", targets] if targets else []
    _edit(tmp / "base", direction, tmp / "ckpt", *extra)
    _edit(tmp / "base", direction, tmp / "lora", "--format", "lora", *extra)
    config = json.loads((tmp / "lora" / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", 1, 1)
    record = EditRecord.load(tmp / "ckpt" / "rosi_edit.safetensors")
    edited_modules = {m.name.rsplit(".", 1)[0] for m in record.matrices if m.kind.value != "expert"}
    assert set(config["target_modules"] or []) == edited_modules
    edited = T.AutoModelForCausalLM.from_pretrained(tmp / "ckpt")
    peft = PeftModel.from_pretrained(T.AutoModelForCausalLM.from_pretrained(tmp / "base"), tmp / "lora").eval()
    torch.testing.assert_close(_logits(peft), _logits(edited), rtol=1e-4, atol=1e-4)
    merged = peft.merge_and_unload()
    for name, p in edited.state_dict().items():
        torch.testing.assert_close(merged.state_dict()[name], p, rtol=1e-5, atol=1e-6, msg=name)
    assert main(["verify", str(tmp / "lora")]) == 0
    adapter_bytes = (tmp / "lora" / "adapter_model.safetensors").stat().st_size
    assert adapter_bytes < (tmp / "ckpt" / "model.safetensors").stat().st_size / 5


def test_export_lora_from_a_checkpoint_equals_the_direct_one(setup):
    tmp, direction, tok = setup
    save_tiny("llama", tmp / "base", tokenizer_dir=tok)
    _edit(tmp / "base", direction, tmp / "ckpt")
    _edit(tmp / "base", direction, tmp / "lora", "--format", "lora")
    assert main(["export", "lora", str(tmp / "ckpt"), "--out", str(tmp / "lora2")]) == 0
    from safetensors.torch import load_file

    a, b = load_file(tmp / "lora" / "adapter_model.safetensors"), load_file(tmp / "lora2" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_gguf_lora_has_llama_cpp_names_shapes_and_keys(setup):
    import gguf

    tmp, direction, tok = setup
    save_tiny("llama", tmp / "base", tokenizer_dir=tok)
    _edit(tmp / "base", direction, tmp / "adapter.gguf", "--format", "gguf-lora")
    reader = gguf.GGUFReader(tmp / "adapter.gguf")
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert (fields["general.type"], fields["adapter.type"], fields["general.architecture"]) == ("adapter", "lora", "llama")
    assert fields["adapter.lora.alpha"] == pytest.approx(1.0)
    tensors = {t.name: t for t in reader.tensors}
    assert set(tensors) == {f"blk.{i}.{w}.weight.lora_{x}" for i in range(3) for w in ("attn_output", "ffn_down") for x in "ab"}
    # ggml's ne: lora_a [in, 1], lora_b [1, out] for a weight [out, in] (llama.cpp's shape checks)
    assert tensors["blk.0.ffn_down.weight.lora_a"].shape.tolist() == [64, 1]
    assert tensors["blk.0.ffn_down.weight.lora_b"].shape.tolist() == [1, 32]
    s = Direction.load(direction).unit.numpy()  # lora_b is s_hat
    np.testing.assert_allclose(np.asarray(tensors["blk.0.ffn_down.weight.lora_b"].data).reshape(-1), s, rtol=1e-6)


@pytest.fixture
def sharded(setup):
    tmp, direction, tok = setup
    model = tiny_model("qwen2")
    model.save_pretrained(tmp / "base", max_shard_size="30KB")
    T.AutoTokenizer.from_pretrained(tok).save_pretrained(tmp / "base")
    assert len(list((tmp / "base").glob("model-*.safetensors"))) > 1
    return tmp, direction


def test_patch_applied_to_a_sharded_base_equals_the_edit_in_memory(sharded):
    tmp, direction = sharded
    _edit(tmp / "base", direction, tmp / "ckpt")
    _edit(tmp / "base", direction, tmp / "edit.patch", "--format", "patch")
    assert main(["apply", str(tmp / "edit.patch"), str(tmp / "base"), "--out", str(tmp / "applied")]) == 0
    assert sorted(p.name for p in (tmp / "applied").glob("model*")) == sorted(p.name for p in (tmp / "base").glob("model*"))
    got = T.AutoModelForCausalLM.from_pretrained(tmp / "applied")
    want = T.AutoModelForCausalLM.from_pretrained(tmp / "ckpt")
    for name, p in want.state_dict().items():
        assert torch.equal(got.state_dict()[name], p), name
    assert (tmp / "applied" / "tokenizer.json").is_file() and (tmp / "applied" / "README.md").is_file()
    # the same patch from the checkpoint after the fact
    assert main(["patch", str(tmp / "ckpt"), "--base", str(tmp / "base"), "--out", str(tmp / "again.patch")]) == 0


def test_a_wrong_base_is_refused_before_anything_is_written(sharded, capsys):
    from safetensors.torch import load_file, save_file

    tmp, direction = sharded
    _edit(tmp / "base", direction, tmp / "edit.patch", "--format", "patch")
    wrong = tmp / "wrong"
    wrong.mkdir()
    for f in (tmp / "base").iterdir():
        (wrong / f.name).write_bytes(f.read_bytes())
    index = json.loads((wrong / "model.safetensors.index.json").read_text())["weight_map"]
    shard = wrong / index["model.layers.1.self_attn.o_proj.weight"]
    tensors = load_file(shard)
    tensors["model.layers.1.self_attn.o_proj.weight"][0, 0] += 1e-3
    save_file(tensors, shard, metadata={"format": "pt"})
    capsys.readouterr()
    assert main(["apply", str(tmp / "edit.patch"), str(wrong), "--out", str(tmp / "applied")]) == 1
    err = capsys.readouterr().err
    assert "model.layers.1.self_attn.o_proj.weight differs" in err and not (tmp / "applied").exists()


def test_verify_passes_on_rosi_outputs_and_fails_on_an_altered_tensor(sharded, capsys):
    from safetensors.torch import load_file, save_file

    tmp, direction = sharded
    _edit(tmp / "base", direction, tmp / "ckpt")
    assert main(["verify", str(tmp / "ckpt"), "--base", str(tmp / "base")]) == 0
    assert main(["verify", str(tmp / "ckpt")]) == 0  # the factors fit the weights
    tensors = load_file(tmp / "ckpt" / "model.safetensors")
    tensors["model.layers.2.mlp.down_proj.weight"] *= 1.01
    save_file(tensors, tmp / "ckpt" / "model.safetensors", metadata={"format": "pt"})
    capsys.readouterr()
    assert main(["verify", str(tmp / "ckpt"), "--base", str(tmp / "base")]) == 1
    assert main(["verify", str(tmp / "ckpt")]) == 1
    assert "FAIL  model.layers.2.mlp.down_proj.weight" in capsys.readouterr().out


def test_revert_round_trips(sharded):
    tmp, direction = sharded
    _edit(tmp / "base", direction, tmp / "ckpt")
    assert main(["revert", str(tmp / "ckpt"), "--out", str(tmp / "reverted")]) == 0
    base = T.AutoModelForCausalLM.from_pretrained(tmp / "base")
    back = T.AutoModelForCausalLM.from_pretrained(tmp / "reverted")
    for name, p in base.state_dict().items():
        torch.testing.assert_close(back.state_dict()[name], p, rtol=0, atol=1e-6, msg=name)
    assert (tmp / "reverted" / "config.json").is_file() and not (tmp / "reverted" / "rosi_edit.safetensors").exists()


def test_checkpoints_carry_a_model_card(setup):
    tmp, direction, tok = setup
    save_tiny("llama", tmp / "base", tokenizer_dir=tok)
    (tmp / "base" / "README.md").write_text("---\nlicense: apache-2.0\n---\n# tiny\n")
    _edit(tmp / "base", direction, tmp / "ckpt")
    card = (tmp / "ckpt" / "README.md").read_text()
    front = card.split("---")[1]
    assert f"base_model: {tmp / 'base'}" in front and "- rosi" in front and "license: apache-2.0" in front
    assert "library_name: transformers" in front and "`scale`" in card and "beta = 1.5" in card


def test_chat_through_a_pipe(setup):
    tmp, _, tok = setup
    save_tiny("llama", tmp / "m", tokenizer_dir=tok)
    done = subprocess.run(
        [sys.executable, "-m", "rosi.cli", "chat", str(tmp / "m"), "--base", str(tmp / "m"), "--max-new-tokens", "4", "--device", "cpu"],
        input="hello world\n/reset\nworld hello\n/exit\n",
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "PYTHONPATH": str(SRC)},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "rosi chat:" in out and out.count("[base]") == 2 and out.count("[model]") == 2 and "new conversation" in out
