"""The speed figures' library: random-weight models from real configs (rosi.model.synthetic) and
the cost measurements (rosi.workflows.speed). The figures themselves are measured in benchmarks/
(gpu_pipeline.py, deploy.py), never asserted; these check the pieces run and mean what they say."""

from __future__ import annotations

import shutil
import sys

import pytest
import torch

from rosi.model.synthetic import LLAMA_3_2_3B, SHAPES, random_checkpoint, random_model, random_prompts, word_tokenizer
from rosi.workflows.speed import command_cost, copy_bandwidth, timed


def test_random_prompts_are_words_the_tokenizer_knows_and_repeat_by_seed():
    prompts = random_prompts(5, seed=1)
    assert prompts == random_prompts(5, seed=1) != random_prompts(5, seed=2)
    assert all(8 <= len(p.split()) <= 24 for p in prompts)
    tok = word_tokenizer()
    assert tok.unk_token_id not in tok(prompts[0])["input_ids"]
    assert "assistant" in tok.apply_chat_template([{"role": "user", "content": prompts[0]}], tokenize=False, add_generation_prompt=True)


def test_random_model_has_the_shape_it_names():
    loaded = random_model("tiny", torch.device("cpu"), torch.float32)
    info = loaded.info()
    assert (info["layers"], info["hidden_size"]) == (SHAPES["tiny"]["num_hidden_layers"], SHAPES["tiny"]["hidden_size"])
    assert info["source"] == "memory" and info["chat_template"]
    again = random_model("tiny", torch.device("cpu"), torch.float32)
    assert all(torch.equal(a, b) for a, b in zip(loaded.model.parameters(), again.model.parameters(), strict=True))


def test_random_checkpoint_is_sharded_in_bfloat16(tmp_path):
    small = {**LLAMA_3_2_3B, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
    folder = random_checkpoint(tmp_path / "ck", {**small, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 1000}, "100KB")
    assert (folder / "model.safetensors.index.json").is_file() and len(list(folder.glob("model-*.safetensors"))) > 1
    assert torch.get_default_dtype() == torch.float32  # put back


def test_timed_and_copy_bandwidth():
    out, seconds = timed(torch.device("cpu"), sum, [1, 2])
    assert out == 3 and seconds >= 0
    assert copy_bandwidth(torch.device("cpu")) > 0


@pytest.mark.skipif(shutil.which("/usr/bin/time") is None, reason="needs /usr/bin/time")
def test_command_cost_reads_the_peak_of_a_known_allocation():
    cost = command_cost([sys.executable, "-c", "x = bytearray(300_000_000); x[::4096] = b'1' * len(x[::4096])"])
    assert cost["peak_rss_mb"] >= 286 and cost["seconds"] > 0  # 300 MB touched: at least that much resident
    with pytest.raises(RuntimeError, match="failed"):
        command_cost([sys.executable, "-c", "raise SystemExit(3)"])
