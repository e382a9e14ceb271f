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


def test_a_phase_is_measured_against_its_passes_and_tokens_at_its_reply_length():
    from rosi.model.costs import Phase
    from rosi.workflows.speed import phase_limits

    costs = {"forward_batch_s": 2.0, "tokens_per_s_at_8": 50.0, "tokens_per_s_at_64": 100.0}
    phases = [Phase("extract", 30.0, 5, 0), Phase("search", 20.0, 0, 500), Phase("evaluate", 10.0, 1, 1000), Phase("save", 3.0, 0, 0)]
    rows = phase_limits(phases, costs, {"search": 8}, 64)
    assert [r["limit_s"] for r in rows] == [10.0, 10.0, 12.0, 0.0]
    assert [r["times_the_limit"] for r in rows] == [3.0, 2.0, 0.83, None]
    assert [r["target_met"] for r in rows] == [True, True, True, None]


def test_pass_costs_and_weights_of_a_random_model():
    from rosi.workflows.speed import pass_costs, weights_bytes

    loaded = random_model("tiny", torch.device("cpu"), torch.float32)
    costs = pass_costs(loaded, random_prompts(6, seed=0), batch_size=3, generation_batch=4, lengths=(2, 3))
    assert costs["batch_size"] == 3 and costs["generation_batch"] == 4 and costs["forward_batch_s"] > 0
    assert costs["tokens_per_s_at_2"] > 0 and costs["tokens_per_s_at_3"] > 0
    params = {id(p): p for p in loaded.model.parameters()}  # tied weights once
    assert weights_bytes(loaded.model) >= sum(p.numel() * p.element_size() for p in params.values())
